"""The model store: one model folder per name in the app's models folder (``models_dir()``).

The folders' format is :mod:`sd_fsmis.core.model.folder`. The store holds one folder per model name, plus
``.default.json`` naming the model the user chose as the default (:func:`set_default_model`). Only that
explicit choice makes a model the default: without one, the application and ``sd-fsmis segment`` use the
built-in engine (a model imported or trained is never taken because it is the newest). Models come in by
:func:`import_model_folder` / :func:`register_trained_model` (copied through a temporary ``.importing-*``
folder renamed into place), change name by :func:`rename_model` and leave by :func:`remove_model`; folders
whose names start with ``.`` are never listed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.io.atomic import atomic_write_text
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter, human_bytes
from sd_fsmis.core.model.config import (
    CONFIG_NAME,
    ModelConfig,
)
from sd_fsmis.core.model.folder import validate_model_folder
from sd_fsmis.paths import models_dir

if TYPE_CHECKING:  # torch is imported by the functions that load or save weights: listing stays fast
    pass

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# -- the store ----------------------------------------------------------------------------------------------
#: a trained model whose validation Dice is below this is marked "poorly validated" where it is offered
POOR_VALIDATION_DICE = 0.5


@dataclass
class ModelInfo:
    """One model as ``sd-fsmis models list/info`` shows it."""

    name: str
    path: str
    base: str = ""
    kind: str = ""
    classes: list[str] = dataclasses.field(default_factory=list)
    created: str = ""
    description: str = ""
    #: bytes of the folder itself (referenced components not counted)
    size_bytes: int = 0
    #: component -> absolute folder, for components that live outside the model folder
    references: dict[str, str] = dataclasses.field(default_factory=dict)
    format_version: int | None = None
    valid: bool = True
    problem: str = ""
    #: the best validation Dice of a trained model (else the last validation's), None when never validated
    validation_dice: float | None = None
    #: what it was built from: {"stable_diffusion": ..., "dinov2": ..., "parent": ..., "preset": ...}
    base_models: dict[str, str] = dataclasses.field(default_factory=dict)
    #: True for the store model the user chose as the default
    is_default: bool = False
    #: ISO 8601 UTC time of the last change of its config.json (for sorting by date)
    modified: str = ""
    config: dict[str, Any] | None = None

    @property
    def trained_classes(self) -> list[str]:
        """The classes the model was trained on (its config's ``classes``)."""
        return self.classes

    @property
    def quality_note(self) -> str:
        """What a person should know before choosing it: "untrained (random weights)", "untrained (not
        fine-tuned for segmentation)", "poorly validated (Dice 0.05)", or "" for a validated model."""
        if not self.classes:
            if "preset" in self.base_models or self.base.startswith("preset"):
                return "untrained (random weights)"
            return "untrained (not fine-tuned for segmentation)"
        if self.validation_dice is not None and self.validation_dice < POOR_VALIDATION_DICE:
            return f"poorly validated (Dice {self.validation_dice:.2f})"
        return ""

    def to_dict(self, with_config: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not with_config:
            data.pop("config")
        return data


def check_model_name(name: str) -> str:
    """A store name: letters, digits, ``.``, ``_``, ``-`` (no path separators); ModelError otherwise."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise ModelError(
            f"invalid model name '{name}': use letters, digits, '.', '_' and '-' (up to 100 characters)"
        )
    return name


def model_path(name: str) -> Path:
    """Where the store keeps the model called ``name``."""
    return models_dir() / check_model_name(name)


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / f).stat().st_size
    return total


def model_info(name_or_dir: str | os.PathLike[str], *, with_config: bool = False) -> ModelInfo:
    """What a model folder (or store name) holds; an unusable folder is described with ``valid=False``.

    Reads config.json files only (never the weights): fast enough to list the store when a dialog opens.
    """
    path = resolve_model(name_or_dir, must_be_valid=False)
    return _model_info(path, with_config=with_config, default=_default_pointer())


def _model_info(path: Path, *, with_config: bool = False, default: str | None = None) -> ModelInfo:
    info = ModelInfo(name=path.name, path=str(path), size_bytes=folder_size(path))
    in_store = path.parent == models_dir().resolve()
    info.modified = _mtime_iso(path / CONFIG_NAME)
    try:
        config = ModelConfig.load(path)
        info.format_version = config.format_version
        info.name = path.name if in_store else (config.name or path.name)
        info.base, info.kind = config.base, config.training.kind
        info.classes, info.created, info.description = (
            list(config.classes),
            config.created,
            config.description,
        )
        info.validation_dice = _validation_dice(config)
        info.base_models = _base_models(config)
        info.references = {
            k: str(Path(v).expanduser())
            for k, v in dataclasses.asdict(config.components).items()
            if Path(v).expanduser().is_absolute()
        }
        if with_config:
            info.config = config.to_dict()
        validate_model_folder(path)
    except ModelError as exc:
        info.valid, info.problem = False, str(exc)
    info.is_default = in_store and info.valid and default is not None and path.name == default
    return info


def _mtime_iso(path: Path) -> str:
    import datetime as dt

    try:
        stamp = path.stat().st_mtime
    except OSError:
        return ""
    when = dt.datetime.fromtimestamp(stamp, dt.timezone.utc).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


def _validation_dice(config: ModelConfig) -> float | None:
    """``best_dice`` of a trained model, else its last validation's Dice, else None."""
    extra = config.training.extra or {}
    best = extra.get("best_dice")
    if isinstance(best, (int, float)) and not isinstance(best, bool):
        return float(best)
    history = extra.get("validation_dice")
    if isinstance(history, dict):
        steps = []
        for step, dice in history.items():
            with contextlib.suppress(TypeError, ValueError):
                steps.append((int(step), float(dice)))
        if steps:
            return max(steps)[1]
    return None


def _base_models(config: ModelConfig, depth: int = 0) -> dict[str, str]:
    """The models ``config``'s model was built from; a fine-tuned model adds what its parent was built
    from (when the parent's folder is still there)."""
    sources = {k: str(v) for k, v in (config.training.sources or {}).items() if k != "data"}
    parent = sources.get("parent")
    if parent and depth < 8:
        with contextlib.suppress(ModelError, OSError):
            for key, value in _base_models(ModelConfig.load(Path(parent)), depth + 1).items():
                if key != "parent":
                    sources.setdefault(key, value)
    return sources


def list_models() -> list[ModelInfo]:
    """Every model folder in the store, sorted by name (broken ones too, with ``valid=False``)."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    default = _default_pointer()
    for child in sorted(root.iterdir(), key=lambda p: p.name.lower()):
        if child.is_dir() and not child.name.startswith(".") and (child / CONFIG_NAME).is_file():
            out.append(_model_info(child.resolve(), default=default))
    return out


def _looks_like_path(text: str) -> bool:
    return (
        any(sep in text for sep in ("/", "\\"))
        or text.startswith(("~", "."))
        or bool(re.match(r"^[A-Za-z]:", text))
    )


def resolve_model(name_or_dir: str | os.PathLike[str] | None, *, must_be_valid: bool = True) -> Path:
    """The folder of a model given by folder path or store name; None picks the store's default.

    The default is the model chosen with :func:`set_default_model` while it is there and valid; there is no
    other (ModelError: no model installed, or none chosen). A name that is neither an existing folder nor in
    the store raises a ModelError saying so.
    """
    if name_or_dir is None or str(name_or_dir) == "":
        chosen = default_model_name()
        if chosen is not None:
            return (models_dir() / chosen).resolve()
        if not any(m.valid for m in list_models()):
            raise ModelError(
                "no model installed: create one with 'sd-fsmis models create' (or pass --model DIR)"
            )
        raise ModelError(
            "no default model chosen: pass --model NAME, or choose one with 'sd-fsmis models default NAME'"
        )
    text = str(name_or_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path.resolve()
    elif _looks_like_path(text) or isinstance(name_or_dir, os.PathLike):
        raise ModelError(f"model folder not found: {text}")
    else:
        stored = models_dir() / text
        if not (_NAME_RE.match(text) and stored.is_dir()):
            raise ModelError(
                f"no model named '{text}' in the store {models_dir()} (see 'sd-fsmis models list')"
            )
        folder = stored.resolve()
    if must_be_valid:
        validate_model_folder(folder)
    elif not (folder / CONFIG_NAME).is_file():
        raise ModelError(f"not an SD-FSMIS model folder: {CONFIG_NAME} is missing in {folder}")
    return folder


def remove_model(name: str) -> Path:
    """Delete the store's model ``name`` (only store models; a folder path is refused); return its path."""
    if _looks_like_path(str(name)):
        raise ModelError("'models remove' takes a model name from the store, not a folder path")
    path = models_dir() / check_model_name(name)
    if not path.is_dir():
        raise ModelError(f"no model named '{name}' in the store {models_dir()}")
    trash = path.with_name(f".{path.name}.removing-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)  # atomic: the name disappears at once, the bytes follow
    if _default_pointer() == path.name:
        _write_default_pointer(None)
    shutil.rmtree(trash, ignore_errors=True)
    return path


# -- the default model --------------------------------------------------------------------------------------
DEFAULT_FILE = ".default.json"


def _default_pointer() -> str | None:
    """The name stored in the store's ``.default.json`` (not checked), None when unset or unreadable."""
    import json

    path = models_dir() / DEFAULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and _NAME_RE.match(name) else None


def _write_default_pointer(name: str | None) -> None:
    import json

    path = models_dir() / DEFAULT_FILE
    if name is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    atomic_write_text(path, json.dumps({"name": name}) + "\n")


def default_model_name() -> str | None:
    """The model the user chose as the default, None when none was chosen or it is gone or broken."""
    name = _default_pointer()
    if name is None:
        return None
    try:
        validate_model_folder(models_dir() / name)
    except ModelError as exc:
        log.warning("the default model '%s' is not usable (%s); using the built-in engine", name, exc)
        return None
    return name


def set_default_model(name: str | None) -> None:
    """Make the store model ``name`` the default (ModelError unless it is a valid store model).

    ``None`` clears the choice (the built-in engine is then used by default)."""
    if name is None:
        _write_default_pointer(None)
        return
    if _looks_like_path(str(name)):
        raise ModelError("the default model must be a model of the store (a name), not a folder path")
    path = models_dir() / check_model_name(name)
    if not path.is_dir():
        raise ModelError(f"no model named '{name}' in the store {models_dir()}")
    validate_model_folder(path)
    _write_default_pointer(name)


# -- rename, import ---------------------------------------------------------------------------------------
def _set_config_name(folder: Path, name: str) -> None:
    """Set ``name`` in ``folder/config.json`` atomically, keeping every other key as it is."""
    import json

    path = folder / CONFIG_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data["name"] = name
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def rename_model(old: str, new: str) -> Path:
    """Rename the store model ``old`` to ``new`` (an atomic rename); return its new folder.

    config.json's ``name`` and the default pointer follow. An existing ``new`` or an invalid name is refused.
    """
    for name in (old, new):
        if _looks_like_path(str(name)):
            raise ModelError("'models rename' takes model names from the store, not folder paths")
    source = models_dir() / check_model_name(old)
    target = models_dir() / check_model_name(new)
    if not source.is_dir():
        raise ModelError(f"no model named '{old}' in the store {models_dir()}")
    if old == new:
        return source
    if target.exists() and not _same_entry(source, target):
        raise ModelError(f"a model named '{new}' already exists in the store")
    os.replace(source, target)
    try:
        _set_config_name(target, new)
    except (OSError, ValueError) as exc:  # a broken model keeps its folder's new name all the same
        log.warning("renamed %s to %s but could not update its config.json: %s", old, new, exc)
    if _default_pointer() == old:
        _write_default_pointer(new)
    return target


def _same_entry(a: Path, b: Path) -> bool:
    """True on a case-insensitive file system where ``a`` and ``b`` are one folder (a case change)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


COPY_CHUNK = 16 * 1024**2


def import_model_folder(
    folder: str | os.PathLike[str],
    name: str | None = None,
    *,
    link: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Copy the model in ``folder`` into the store under ``name`` (default: the folder's name); return it.

    The folder is validated first and the free disk space checked; the copy goes to a temporary
    ``.importing-*`` folder renamed into place at the end, so a cancel, an error or a full disk leaves
    nothing behind. Components the model references by absolute path stay referenced (a relative
    reference leaving the folder is made absolute). Progress is in bytes; ``cancel`` is checked between
    chunks. ``link`` (symbolic links instead of copies) is not supported.
    """
    if link:
        raise ModelError("importing a model by link is not supported; it is copied into the store")
    source = Path(folder).expanduser()
    config = validate_model_folder(source)
    source = source.resolve()
    name = check_model_name(name if name is not None else source.name)
    root = models_dir()
    target = root / name
    if target.exists():
        raise ModelError(f"a model named '{name}' already exists in the store (choose another name)")
    if source == target.resolve():
        raise ModelError(f"{source} is already in the store")
    total = folder_size(source)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < total + max(64 * 1024**2, total // 20):
        raise ModelError(
            f"importing {source.name} needs {human_bytes(total)}, {human_bytes(free)} free on {root}: "
            "free some space"
        )
    reporter = ProgressReporter(total, progress, cancel)
    reporter.report(f"copying {source.name}")
    tmp = root / f".importing-{name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for directory, _dirs, files in os.walk(source, followlinks=True):
            rel = Path(directory).relative_to(source)
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            for file_name in sorted(files):
                reporter.check()
                _copy_file(Path(directory) / file_name, tmp / rel / file_name, reporter)
        _fix_relative_references(tmp, source, config)
        _set_config_name(tmp, name)
        validate_model_folder(tmp)
        reporter.check()
        if target.exists():
            raise ModelError(f"a model named '{name}' already exists in the store (choose another name)")
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror or str(exc)
        raise ModelError(f"cannot import {source} into the store: {reason}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reporter.report(f"imported {name}")
    return target


def _copy_file(source: Path, target: Path, reporter: ProgressReporter) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        while True:
            chunk = src.read(COPY_CHUNK)
            if not chunk:
                break
            dst.write(chunk)
            reporter.advance(len(chunk), f"copying {source.name}")
    shutil.copystat(source, target, follow_symlinks=True)


def _fix_relative_references(tmp: Path, source: Path, config: ModelConfig) -> None:
    """Make component references that were relative to ``source`` but outside it absolute in ``tmp``."""
    import json

    changed = {}
    for key, value in dataclasses.asdict(config.components).items():
        path = Path(value).expanduser()
        if path.is_absolute():
            continue
        resolved = (source / path).resolve()
        if not resolved.is_relative_to(source):
            changed[key] = str(resolved)
    if changed:
        config_path = tmp / CONFIG_NAME
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data.setdefault("components", {}).update(changed)
        atomic_write_text(config_path, json.dumps(data, indent=2) + "\n")


def register_trained_model(
    folder: str | os.PathLike[str],
    name: str,
    *,
    make_default: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ModelInfo:
    """Add a training run's model folder (``<run>/best`` or ``<run>/model``) to the store as ``name``,
    optionally as the default model; return the stored copy's :class:`ModelInfo`."""
    path = import_model_folder(folder, name, progress=progress, cancel=cancel)
    if make_default:
        set_default_model(name)
    return model_info(path)
