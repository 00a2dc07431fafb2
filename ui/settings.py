"""The application's settings: a small JSON file in ``app.paths.config_dir()`` (recent files, tools, window).

Plain data (no Qt): the main window reads it at start and writes it on close. A damaged or missing file gives
the defaults; every write is atomic.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from sd_fsmis.core.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
MAX_RECENT = 10


#: pairs the fine-tune wizard's data list remembers at most
MAX_PAIRS = 1000


def settings_path() -> Path:
    from sd_fsmis.paths import config_dir

    return config_dir() / SETTINGS_FILE


@dataclass
class AppSettings:
    """What the application remembers between runs."""

    recent_files: list[str] = field(default_factory=list)
    last_folder: str = ""
    #: where exports (DICOM-SEG) go: chosen once by the person, never a study's DICOM folder by default
    export_folder: str = ""
    brush_radius: float = 5.0
    #: the paint tool in use ("navigate", "brush", "eraser", "fill")
    tool: str = "brush"
    overwrite_labels: bool = True
    window_geometry: str = ""  # QMainWindow.saveGeometry(), base64
    window_state: str = ""  # QMainWindow.saveState() (docks), base64
    layout: str = "main"
    crosshair: bool = True
    #: the fine-tune wizard's data list: ``{"image", "label", "series_uid", "name", "origin", "validation"}``
    fine_tune_pairs: list[dict] = field(default_factory=list)
    #: the fine-tune wizard's “My volumes have no labels (self-supervised)”
    fine_tune_self_supervised: bool = False

    def add_recent(self, path: str | os.PathLike[str]) -> None:
        """Put ``path`` first in the recent list (no duplicates, at most :data:`MAX_RECENT`)."""
        text = str(Path(path))
        self.recent_files = [text, *(p for p in self.recent_files if p != text)][:MAX_RECENT]

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> AppSettings:
        """The saved settings, or the defaults when the file is missing or damaged."""
        file = Path(path) if path is not None else settings_path()
        try:
            doc = json.loads(file.read_text("utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("settings %s not readable (%s): using the defaults", file, exc)
            return cls()
        if not isinstance(doc, dict):
            return cls()
        settings = cls()
        for f in fields(cls):
            if f.name in doc:
                value = doc[f.name]
                default = getattr(settings, f.name)
                if f.name == "fine_tune_pairs" and isinstance(value, list):
                    keys = ("image", "label", "series_uid", "name", "origin", "validation")
                    settings.fine_tune_pairs = [
                        {k: v[k] for k in keys if k in v and isinstance(v[k], str | bool | None)}
                        for v in value[:MAX_PAIRS]
                        if isinstance(v, dict)
                        and isinstance(v.get("image"), str)
                        and isinstance(v.get("label", ""), str)
                    ]
                elif isinstance(default, list) and isinstance(value, list):
                    setattr(settings, f.name, [str(v) for v in value][:MAX_RECENT])
                elif isinstance(default, bool) and isinstance(value, bool):
                    setattr(settings, f.name, value)
                elif isinstance(default, float) and isinstance(value, int | float):
                    setattr(settings, f.name, float(value))
                elif isinstance(default, str) and isinstance(value, str):
                    setattr(settings, f.name, value)
        return settings

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the settings (atomically); a failure is logged, never raised (settings are not precious)."""
        file = Path(path) if path is not None else settings_path()
        try:
            atomic_write_text(file, json.dumps(asdict(self), indent=1) + "\n")
        except OSError as exc:
            log.warning("could not save the settings to %s: %s", file, exc)
