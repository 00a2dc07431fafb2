"""Session autosave and crash recovery: a crash or kill never loses more than a few seconds of painting.

The session is kept in a folder (``app.paths.data_dir()/session`` by default)::

    session/
      manifest.json          what to restore: studies (path + series uid, never their pixels), layers,
                             support set, runs; written LAST, atomically
      masks/<layer>-<token>.nii.gz (+ .labels.json)   one file per label layer, new name at every change
      running.json           present while an application using the folder runs (absent: clean exit)

Why this is crash-safe: a mask is written under a *new* name (atomic temporary file + rename), then the
manifest that points at it replaces the old manifest atomically, and only then are the files no manifest
refers to any more deleted. At every instant the manifest on disk refers to complete files. Only layers
whose voxels changed since the last save are written again.

:class:`AutosaveScheduler` debounces: the first change arms it, and it is :meth:`~AutosaveScheduler.due`
``interval_s`` seconds later (continuous painting still saves every few seconds). The GUI polls
:meth:`~AutosaveScheduler.maybe_save` from a Qt timer; :meth:`~AutosaveScheduler.snapshot` (fast, on the GUI
thread) and :meth:`~AutosaveScheduler.write` (the slow part) can also be split across a worker thread.
:func:`restore` rebuilds a :class:`~sd_fsmis.core.session.state.Session` from the folder; a damaged folder
raises
:class:`SessionRestoreError` (a :class:`~sd_fsmis.core.errors.UserError`), never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.io.atomic import atomic_write_text
from sd_fsmis.core.io.labelmap import LabelMap, labels_sidecar_path
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.runs import Run, now_iso
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.session.support_set import SupportEntry

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUNNING_MARKER = "running.json"
MASKS = "masks"
FORMAT = "sd-fsmis session"
VERSION = 1


class SessionRestoreError(UserError):
    """A session folder that cannot be restored (missing, partial, damaged, from a newer version)."""


def session_dir() -> Path:
    """The default autosave folder: ``<data dir>/session``."""
    from sd_fsmis.paths import data_dir

    return data_dir() / "session"


# ------------------------------------------------------------------------------------------ exit marker
@dataclass(frozen=True)
class FolderState:
    """What a session folder holds, read at start-up to decide whether to offer a restore."""

    folder: Path
    has_session: bool
    clean_exit: bool
    #: process id of an application still running on the folder (another instance), else None
    running_pid: int | None = None
    saved_at: str = ""
    studies: int = 0

    @property
    def offer_restore(self) -> bool:
        """True after a crash: a saved session exists, the last exit was not clean, no one else runs on it."""
        return self.has_session and not self.clean_exit and self.running_pid is None


def folder_state(folder: str | os.PathLike[str] | None = None) -> FolderState:
    """Read the folder's manifest summary and exit marker (never raises for a damaged folder)."""
    root = Path(folder) if folder is not None else session_dir()
    manifest = root / MANIFEST
    saved_at, studies, has_session = "", 0, False
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text("utf-8"))
            has_session = isinstance(doc, dict) and doc.get("format") == FORMAT
            saved_at = str(doc.get("saved_at", "")) if has_session else ""
            studies = len(doc.get("studies", [])) if has_session else 0
        except (OSError, ValueError, TypeError, AttributeError):
            has_session = True  # something is there; restore() will explain what is wrong
    marker = root / RUNNING_MARKER
    clean = not marker.exists()
    pid = None
    if not clean:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            other = int(json.loads(marker.read_text("utf-8")).get("pid"))
            if other != os.getpid() and _pid_alive(other):
                pid = other
    return FolderState(root, has_session, clean, pid, saved_at, studies)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        try:
            import ctypes

            handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # type: ignore[attr-defined]
            if handle:
                ctypes.windll.kernel32.CloseHandle(handle)  # type: ignore[attr-defined]
                return True
            return False
        except Exception:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


# -------------------------------------------------------------------------------------------- saving
@dataclass
class SessionSnapshot:
    """A consistent copy of what to save, taken on the thread that owns the session (fast)."""

    sequence: int
    manifest: dict
    #: file name (relative to the folder) -> label map copy, for the layers that changed
    masks: dict[str, LabelMap] = field(default_factory=dict)
    #: layer id -> (data version, file name) after this snapshot is written
    versions: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class SaveReport:
    """What one save wrote."""

    folder: Path
    seconds: float
    masks_written: int
    bytes_written: int
    skipped: bool = False


class AutosaveScheduler:
    """Debounced autosave of ``session`` into ``folder`` (default :func:`session_dir`).

    Connects to ``session.events.modified`` itself. Use from a Qt timer: every second or so call
    :meth:`maybe_save` (or start a single-shot timer of :meth:`seconds_until_due`).
    """

    def __init__(
        self,
        session: Session,
        folder: str | os.PathLike[str] | None = None,
        interval_s: float = 3.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.folder = Path(folder) if folder is not None else session_dir()
        self.interval_s = float(interval_s)
        self._clock = clock
        self._dirty_since: float | None = None
        self._written: dict[str, tuple[int, str]] = {}
        self._sequence = 0
        self._last_written_sequence = 0
        self._lock = threading.Lock()
        self.last_report: SaveReport | None = None
        session.events.modified.connect(self.notify_change)

    def close(self) -> None:
        """Stop observing the session."""
        self.session.events.modified.disconnect(self.notify_change)

    # ------------------------------------------------------------------------------------ debouncing
    def notify_change(self, *_: object) -> None:
        """Something changed: arm the timer (the first change since the last save starts the countdown)."""
        if self._dirty_since is None:
            self._dirty_since = self._clock()

    @property
    def pending(self) -> bool:
        """True when there are changes not yet saved."""
        return self._dirty_since is not None

    def seconds_until_due(self) -> float | None:
        """Seconds until :meth:`due` (0 when due now); None when nothing is pending."""
        if self._dirty_since is None:
            return None
        return max(0.0, self.interval_s - (self._clock() - self._dirty_since))

    def due(self) -> bool:
        """True when changes have waited ``interval_s`` seconds."""
        wait = self.seconds_until_due()
        return wait is not None and wait <= 0.0

    def maybe_save(self) -> SaveReport | None:
        """Save when :meth:`due`; returns the report, or None when it was not due."""
        return self.save_now() if self.due() else None

    def save_now(self) -> SaveReport:
        """Save at once (snapshot + write on this thread)."""
        return self.write(self.snapshot())

    # --------------------------------------------------------------------------- snapshot, then write
    def snapshot(self) -> SessionSnapshot:
        """Copy what must be saved (the changed layers' arrays, the manifest); clears :attr:`pending`."""
        self._dirty_since = None
        self._sequence += 1
        snap = SessionSnapshot(self._sequence, {})
        studies = []
        for study in self.session.studies:
            layers = []
            for layer in study.layers:
                written = self._written.get(layer.id)
                if written is not None and written[0] == layer.data_version:
                    file_name = written[1]
                else:
                    file_name = f"{MASKS}/{layer.id}-{uuid.uuid4().hex[:8]}.nii.gz"
                    snap.masks[file_name] = layer.copy_label_map()
                snap.versions[layer.id] = (layer.data_version, file_name)
                layers.append(_layer_entry(layer, file_name))
            studies.append(
                {
                    "id": study.id,
                    "path": study.path,
                    "series_uid": study.series_uid,
                    "name": study.name,
                    "demo": _is_demo_path(study.path),
                    "active_layer": study.active_layer.id if study.active_layer else None,
                    "layers": layers,
                }
            )
        reference = self.session.reference
        ref_study = self.session.reference_study
        snap.manifest = {
            "format": FORMAT,
            "version": VERSION,
            "saved_at": now_iso(),
            "active_study": self.session.active_study.id if self.session.active_study else None,
            "reference": (
                {"study_id": ref_study.id, "layer_id": reference.id}
                if reference is not None and ref_study is not None
                else None
            ),
            "studies": studies,
            "support_set": self.session.support_set.to_list(),
            "runs": self.session.runs.to_list(),
        }
        return snap

    def write(self, snap: SessionSnapshot) -> SaveReport:
        """Write a snapshot: new mask files, then the manifest (atomically), then delete unused files.

        Safe to call from a worker thread; a snapshot older than one already written is skipped.
        """
        start = time.perf_counter()
        with self._lock:
            if snap.sequence <= self._last_written_sequence:
                return SaveReport(self.folder, 0.0, 0, 0, skipped=True)
            (self.folder / MASKS).mkdir(parents=True, exist_ok=True)
            written_bytes = 0
            for name, label_map in snap.masks.items():
                path = self.folder / name
                label_map.save(path)
                written_bytes += path.stat().st_size + labels_sidecar_path(path).stat().st_size
            text = json.dumps(snap.manifest, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
            atomic_write_text(self.folder / MANIFEST, text)
            written_bytes += len(text.encode("utf-8"))
            self._written = dict(snap.versions)
            self._last_written_sequence = snap.sequence
            _delete_unreferenced(self.folder, {name for _, name in snap.versions.values()})
        report = SaveReport(self.folder, time.perf_counter() - start, len(snap.masks), written_bytes)
        self.last_report = report
        log.debug("autosaved the session to %s: %s", self.folder, report)
        return report

    # ------------------------------------------------------------------------------------ exit marker
    def mark_running(self) -> None:
        """Call at start-up (after a restore was offered): the next start sees a crash unless cleared."""
        marker = {"pid": os.getpid(), "started_at": now_iso()}
        atomic_write_text(self.folder / RUNNING_MARKER, json.dumps(marker) + "\n")

    def mark_clean_exit(self, save: bool = True) -> None:
        """Call on a normal quit: save what is pending, then remove the running marker."""
        if save and self.pending:
            self.save_now()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / RUNNING_MARKER).unlink()


def _layer_entry(layer: LabelLayer, file_name: str) -> dict:
    return {
        "id": layer.id,
        "name": layer.name,
        "kind": layer.kind,
        "opacity": layer.opacity,
        "visible": layer.visible,
        "selected_label": layer.selected_label,
        "source_path": layer.source_path,
        "modified": layer.modified,
        "file": file_name,
    }


def _delete_unreferenced(folder: Path, referenced: set[str]) -> None:
    """Remove mask files (and their sidecars) that the manifest no longer refers to."""
    keep = set()
    for name in referenced:
        keep.add((folder / name).name)
        keep.add(labels_sidecar_path(folder / name).name)
    for path in (folder / MASKS).iterdir():
        if path.name not in keep and not path.name.startswith("."):
            with contextlib.suppress(OSError):
                path.unlink()


def _is_demo_path(path: str) -> bool:
    from sd_fsmis.core.io.demo import demo_image_path

    try:
        return bool(path) and Path(path).resolve() == demo_image_path().resolve()
    except OSError:
        return False


# ------------------------------------------------------------------------------------------- restore
def restore(
    folder: str | os.PathLike[str] | None = None,
    *,
    open_study: Callable[[str, str | None], Study] | None = None,
) -> Session:
    """Rebuild the saved session: re-open its studies (through ``study_io``), load its masks, supports, runs.

    A study whose files are gone, or a mask file that is damaged, is skipped with a note in
    ``session.warnings``. Raises :class:`SessionRestoreError` when there is no session, the manifest is
    damaged or from a newer version, or nothing at all could be restored.
    """
    root = Path(folder) if folder is not None else session_dir()
    doc = _read_manifest(root)
    opener = open_study or (lambda path, uid: Study.open(path, series_uid=uid))
    session = Session()
    warnings: list[str] = []
    try:
        study_docs = list(doc["studies"])
        for sd in study_docs:
            study = _restore_study(root, sd, opener, warnings)
            if study is not None:
                session.add_study(study, activate=False)
        if study_docs and not session.studies:
            raise SessionRestoreError(
                "the saved session could not be restored: " + "; ".join(warnings or ["no study"])
            )
        studies = session.studies_by_id()
        for ed in doc.get("support_set") or []:
            entry = SupportEntry.from_dict(ed)
            study = studies.get(entry.study_id)
            if study is None:
                continue  # its study was reported above
            try:
                layer = study.layer(entry.layer_id)
            except KeyError:
                number = study.volume.slice_numbering().number(entry.slice_index)
                warnings.append(f"support slice {number} of {study.name}: its mask is gone")
                continue
            session.support_set.insert_entry(entry)
            session.support_set.refresh(entry, study, layer)
        # the reference before the runs: their saved Dice values are kept as they were
        ref = doc.get("reference")
        if isinstance(ref, dict) and ref.get("layer_id"):
            try:
                session.set_reference(session.find_layer(str(ref["layer_id"]))[1])
            except KeyError:
                warnings.append("the reference mask could not be restored")
        for rd in doc.get("runs") or []:
            run = Run.from_dict(rd)
            if run.status == "running":
                run = Run.from_dict(
                    {**rd, "status": "failed", "message": "interrupted (the application quit)"}
                )
            session.runs.add(run)
        active = doc.get("active_study")
        if active in studies:
            session.set_active_study(studies[active])
        elif session.studies:
            session.set_active_study(session.studies[0])
    except SessionRestoreError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SessionRestoreError(f"{root / MANIFEST}: the saved session is damaged ({exc!r})") from exc
    session.warnings = warnings
    for w in warnings:
        log.warning("restore: %s", w)
    return session


def _read_manifest(root: Path) -> dict:
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise SessionRestoreError(f"no saved session in {root}")
    try:
        doc = json.loads(manifest.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SessionRestoreError(f"{manifest}: the saved session is damaged ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SessionRestoreError(f"{manifest}: not an sd-fsmis session file")
    try:
        version = int(doc.get("version", 0))
    except (TypeError, ValueError):
        version = -1
    if version > VERSION:
        raise SessionRestoreError(
            f"{manifest}: saved by a newer version of the application (format {version})"
        )
    if version < 1 or not isinstance(doc.get("studies"), list):
        raise SessionRestoreError(f"{manifest}: the saved session is damaged (no study list)")
    return doc


def _restore_study(
    root: Path, sd: dict, opener: Callable[[str, str | None], Study], warnings: list[str]
) -> Study | None:
    study_id = str(sd["id"])
    path = str(sd["path"])
    uid = sd.get("series_uid") or None
    name = str(sd.get("name") or Path(path).name)
    if sd.get("demo") and not Path(path).exists():
        from sd_fsmis.core.io.demo import demo_study_paths

        path = str(demo_study_paths()[0])
    try:
        opened = opener(path, uid)
    except UserError as exc:
        warnings.append(f"study {name} could not be re-opened: {exc}")
        return None
    study = Study(opened.volume, path=path, series_uid=uid, study_id=study_id, name=name)
    for ld in sd.get("layers") or []:
        file_path = root / str(ld["file"])
        layer_name = str(ld.get("name") or "mask")
        if not file_path.resolve().is_relative_to(root.resolve()):
            warnings.append(f"mask {layer_name} of {name}: refers outside the session folder; skipped")
            continue
        try:
            label_map = LabelMap.load(file_path, like=study.geometry, like_name="study")
        except UserError as exc:
            warnings.append(f"mask {layer_name} of {name} could not be restored: {exc}")
            continue
        layer = LabelLayer(
            label_map,
            layer_name,
            kind=str(ld.get("kind") or "manual"),
            opacity=float(ld.get("opacity", 0.5)),
            visible=bool(ld.get("visible", True)),
            layer_id=str(ld["id"]),
            source_path=ld.get("source_path") or None,
        )
        with contextlib.suppress(Exception):
            layer.selected_label = int(ld.get("selected_label") or layer.selected_label)
        if ld.get("modified"):
            layer.data_version = 1  # still unsaved to the user's own file
        study.add_layer(layer=layer, activate=False)
    active = sd.get("active_layer")
    if active:
        with contextlib.suppress(KeyError):
            study.set_active_layer(study.layer(str(active)))
    return study
