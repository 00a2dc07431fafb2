"""What the fine-tune wizard's pages share: the jobs they run in workers, formatting helpers, the page base.

The wizard (:mod:`sd_fsmis.ui.fine_tune.wizard`) has five pages, one module each:
``fine_tune_model_page`` (base model, resume offer), ``fine_tune_data_page`` (volumes and label maps, checked
in a worker; classes; held-out volumes), ``fine_tune_settings_page`` (settings and the memory/time estimate),
``fine_tune_training_page`` (live loss curve, Pause/Resume, Stop with a checkpoint, Resume) and
``fine_tune_result_page`` (Dice before/after, registering the model).

Every function marked "job" runs in a :class:`~sd_fsmis.ui.workers.job_worker.JobWorker`: it imports the core
parts that load torch there, never in the GUI thread.
"""

from __future__ import annotations

import html
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.ui.workers.job_worker import JobWorker

if TYPE_CHECKING:
    from sd_fsmis.core.training.fine_tune import FineTunePlan, InterruptedRun
    from sd_fsmis.core.training.pairs import PairCheck, TrainingPair
    from sd_fsmis.ui.fine_tune.wizard import FineTuneWizard

PAGE_MODEL, PAGE_DATA, PAGE_SETTINGS, PAGE_TRAINING, PAGE_RESULT = range(5)
DEVICES = (
    ("auto", "Automatic (GPU if present)"),
    ("cuda", "CUDA GPU"),
    ("mps", "Apple GPU (MPS)"),
    ("cpu", "CPU"),
)
PRECISIONS = (
    ("auto", "Automatic (bf16 or fp16 on a GPU, fp32 on the CPU)"),
    ("fp32", "fp32 (full precision)"),
    ("bf16", "bf16 mixed precision"),
    ("fp16", "fp16 mixed precision (CUDA)"),
)
#: Milliseconds without a settings change before the estimate is recomputed.
ESTIMATE_DEBOUNCE_MS = 500
GIB = 1024**3
NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

OK_COLOUR = QtGui.QColor(0, 130, 60)
WARN_COLOUR = QtGui.QColor(180, 110, 0)
BAD_COLOUR = QtGui.QColor(200, 30, 30)


# ================================================================================================ jobs
def list_base_models(*, progress: ProgressCallback, cancel: CancelToken) -> list[Any]:
    """Job: the models of the store (ModelInfo), valid ones first."""
    from sd_fsmis.core.model.store import list_models

    return sorted(list_models(), key=lambda m: (not m.valid, m.name.lower()))


def find_interrupted(*, progress: ProgressCallback, cancel: CancelToken) -> list[InterruptedRun]:
    """Job: fine-tuning runs that stopped before their last step (newest first)."""
    from sd_fsmis.core.training.fine_tune import find_interrupted_runs

    return find_interrupted_runs()


def sidecar_names(label: str | Path) -> dict[int, str]:
    """Label names from a label map's ``.labels.json`` sidecar ({} when missing or unreadable)."""
    from sd_fsmis.core.io.labelmap import labels_sidecar_path

    path = Path(label)
    if path.is_dir():
        return {}
    try:
        doc = json.loads(labels_sidecar_path(path).read_text("utf-8"))
        return {int(d["value"]): str(d["name"]) for d in doc.get("labels", []) if d.get("name")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def check_training_pair(
    pair: TrainingPair, shots: int, *, progress: ProgressCallback, cancel: CancelToken
) -> tuple[PairCheck, dict[int, str]]:
    """Job: check one image + label map pair (never raises for bad input) and read its label names."""
    from sd_fsmis.core.training.pairs import check_pair

    return check_pair(pair, shots=shots, cancel=cancel), sidecar_names(pair.label)


def supervoxel_preview(
    image: str, series_uid: str | None, *, progress: ProgressCallback, cancel: CancelToken
) -> tuple[Any, str]:
    """Job: the supervoxels of a volume (computed, or from the application's cache) drawn on its middle
    body slice: an RGB array ``[H, W, 3]`` uint8 and a caption."""
    import time

    import numpy as np
    from skimage.segmentation import find_boundaries

    from sd_fsmis.core.io.loader import load_volume
    from sd_fsmis.core.training.fine_tune import supervoxel_cache_dir
    from sd_fsmis.core.training.supervoxels import cached_supervoxels

    volume = load_volume(image, series_uid, cancel=cancel)
    start = time.perf_counter()
    result = cached_supervoxels(volume, supervoxel_cache_dir(), progress=progress, cancel=cancel)
    seconds = time.perf_counter() - start
    body = np.flatnonzero(result.foreground.any(axis=(1, 2)))
    z = int(body[len(body) // 2]) if len(body) else volume.shape[0] // 2
    plane = np.asarray(volume.array[z], dtype=np.float32)
    lo, hi = np.percentile(plane, [1, 99]) if plane.size else (0.0, 1.0)
    grey = np.clip((plane - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    labels = result.labels[z]
    colours = np.random.default_rng(0).integers(40, 256, size=(int(labels.max()) + 1, 3)) / 255.0
    inside = labels > 0
    rgb[inside] = 0.6 * rgb[inside] + 0.4 * colours[labels[inside]]
    rgb[find_boundaries(labels, mode="inner") & inside] = (1.0, 0.85, 0.1)
    how = "from the cache" if result.from_cache else f"computed in {seconds:.1f} s"
    caption = (
        f"Slice {z + 1} of {volume.shape[0]}: {len(np.unique(labels[inside]))} supervoxels here, "
        f"{result.count} in the volume ({how}); outside the body: none"
    )
    return (rgb * 255).astype(np.uint8), caption


def save_study_pairs(
    items: list[tuple[Any, Any, str]], folder: Path, *, progress: ProgressCallback, cancel: CancelToken
) -> list[TrainingPair]:
    """Job: write each (volume, label map, name) of the session as image + label files in ``folder``."""
    from sd_fsmis.core.training.pairs import save_study_pair

    pairs = []
    for i, (volume, label_map, name) in enumerate(items):
        cancel.raise_if_cancelled()
        progress(Progress(i, len(items), f"saving {name}"))
        pairs.append(save_study_pair(volume, label_map, folder, name))
    return pairs


def estimate_job(model: str, options: dict, *, progress: ProgressCallback, cancel: CancelToken) -> Any:
    """Job: memory and time of a training with ``options`` on this machine (ResourceEstimate)."""
    from sd_fsmis.core.training.estimate import estimate_training

    return estimate_training(model, **options)


def calibrate_job(plan: Any, *, progress: ProgressCallback, cancel: CancelToken) -> Any:
    """Job: a few real, timed training steps of ``plan`` on its device (a Calibration)."""
    from sd_fsmis.core.training.fine_tune import calibrate_plan

    return calibrate_plan(plan, progress=progress, cancel=cancel)


class TrainingFeed:
    """Every step's loss and validation, collected in the worker thread.

    The worker's progress signal is throttled (a fast run skips reports); the curve must not. The job
    records each report here, and the GUI drains the list whenever a progress signal arrives.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict] = []

    def record(self, progress: Progress) -> None:
        extra = progress.extra
        if "loss" in extra or extra.get("validation") or "checkpoint" in extra:
            item = {key: extra[key] for key in ("step", "loss", "validation", "checkpoint") if key in extra}
            item.setdefault("step", progress.done)
            with self._lock:
                self._items.append(item)

    def drain(self) -> list[dict]:
        with self._lock:
            items, self._items = self._items, []
        return items


def run_fine_tune(
    plan: FineTunePlan,
    resume: bool,
    feed: TrainingFeed,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> Any:
    """Job: the fine-tuning run (TrainingResult), every report also recorded in ``feed``."""
    from sd_fsmis.core.training.fine_tune import fine_tune

    def report(p: Progress) -> None:
        feed.record(p)
        progress(p)

    return fine_tune(plan, resume=resume, progress=report, cancel=cancel)


def register_job(
    folder: str, name: str, make_default: bool, *, progress: ProgressCallback, cancel: CancelToken
) -> Any:
    """Job: copy a trained model folder into the store as ``name`` (ModelInfo)."""
    from sd_fsmis.core.model.store import register_trained_model

    return register_trained_model(folder, name, make_default=make_default)


# ============================================================================================== helpers
def note_label(text: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setOpenExternalLinks(False)
    return label


def error_label() -> QtWidgets.QLabel:
    label = QtWidgets.QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {BAD_COLOUR.name()};")
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def standard_icon(name: str) -> QtGui.QIcon:
    pixmap = getattr(QtWidgets.QStyle.StandardPixmap, name)
    return QtWidgets.QApplication.style().standardIcon(pixmap)


def model_name_from(text: str) -> str:
    """A store name made of ``text``: other characters become ``-`` (e.g. a run folder's name)."""
    name = NAME_CHARS.sub("-", text).strip("-.")[:100]
    return name or "fine-tuned"


def format_dice(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


def format_gib(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.1f} GiB" if n >= GIB / 2 else f"{n / 1024**2:.0f} MiB"


def html_text(text: str) -> str:
    """``text`` shown as itself in a rich-text label (``<``, ``>``, ``&`` escaped)."""
    return html.escape(text, quote=False)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(eq=False)
class PairEntry:
    """One row of the data page: a pair, its check (None while checking), and whether it is held out."""

    pair: TrainingPair
    check: PairCheck | None = None
    names: dict[int, str] = field(default_factory=dict)
    validation: bool = False
    #: the check job itself failed (unexpected error)
    error: str = ""
    #: where the pair came from ("files", "dataset", "study")
    origin: str = "files"
    #: a label map is required (the data page is not in self-supervised mode)
    needs_label: bool = True

    @property
    def checking(self) -> bool:
        return self.check is None and not self.error

    @property
    def missing_label(self) -> bool:
        return self.needs_label and not self.pair.label

    @property
    def usable(self) -> bool:
        return self.check is not None and bool(self.check.ok) and not self.missing_label

    @property
    def problems(self) -> list[str]:
        if self.error:
            return [self.error]
        problems = list(self.check.problems) if self.check is not None else []
        if self.missing_label:
            problems.append("no label map: tick “My volumes have no labels” to train on it self-supervised")
        return problems

    @property
    def warnings(self) -> list[str]:
        return list(self.check.warnings) if self.check is not None else []


class WizardPage(QtWidgets.QWizardPage):
    """A page that knows its wizard's type (for the type checker) and keeps its workers alive."""

    def fw(self) -> FineTuneWizard:
        return self.wizard()  # type: ignore[return-value]

    def _start(self, worker: JobWorker) -> JobWorker:
        worker.setParent(self)
        worker.start()
        return worker


def pair_name(image: Path) -> str:
    name = image.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def partial_job(job: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """``job`` with its leading arguments bound (the worker adds ``progress`` and ``cancel``)."""

    def bound(*, progress: ProgressCallback, cancel: CancelToken) -> Any:
        return job(*args, progress=progress, cancel=cancel)

    return bound
