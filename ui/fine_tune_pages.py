"""The pages of the fine-tune wizard (:mod:`sd_fsmis.ui.fine_tune_wizard`) and the jobs they run.

1. :class:`BaseModelPage`: an existing model of the store, or a new base model; the offer to resume an
   interrupted run.
2. :class:`DataPage`: volumes with their label maps (files, folders, manifests, the studies of the session),
   each checked in a worker (geometry, label values); the classes to train on, the held-out volumes.
3. :class:`SettingsPage`: steps, learning rates, accumulation, LoRA, precision, device, the run folder, and
   an estimate of memory and time for them on this machine (recomputed in a worker after a short pause).
4. :class:`TrainingPage`: the training job with a live loss curve, Pause/Resume, Stop (at a step boundary,
   with a checkpoint) and Resume.
5. :class:`ResultPage`: Dice per class before and after on the held-out volumes; register the model.

Every function marked "job" runs in a :class:`~sd_fsmis.ui.workers.JobWorker`: it imports the core parts
that load torch there, never in the GUI thread.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.ui.loss_plot import LossPlot
from sd_fsmis.ui.workers import JobWorker, format_seconds, qt_alive

if TYPE_CHECKING:
    from sd_fsmis.core.fine_tune import FineTunePlan, InterruptedRun, PairCheck, TrainingPair
    from sd_fsmis.ui.fine_tune_wizard import FineTuneWizard

log = logging.getLogger(__name__)

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
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

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
    from sd_fsmis.core.fine_tune import find_interrupted_runs

    return find_interrupted_runs()


def sidecar_names(label: str | Path) -> dict[int, str]:
    """Label names from a label map's ``.labels.json`` sidecar ({} when missing or unreadable)."""
    from sd_fsmis.core.labelmap import labels_sidecar_path

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
    from sd_fsmis.core.fine_tune import check_pair

    return check_pair(pair, shots=shots, cancel=cancel), sidecar_names(pair.label)


def save_study_pairs(
    items: list[tuple[Any, Any, str]], folder: Path, *, progress: ProgressCallback, cancel: CancelToken
) -> list[TrainingPair]:
    """Job: write each (volume, label map, name) of the session as image + label files in ``folder``."""
    from sd_fsmis.core.fine_tune import save_study_pair

    pairs = []
    for i, (volume, label_map, name) in enumerate(items):
        cancel.raise_if_cancelled()
        progress(Progress(i, len(items), f"saving {name}"))
        pairs.append(save_study_pair(volume, label_map, folder, name))
    return pairs


def estimate_job(model: str, options: dict, *, progress: ProgressCallback, cancel: CancelToken) -> Any:
    """Job: memory and time of a training with ``options`` on this machine (ResourceEstimate)."""
    from sd_fsmis.core.training_estimate import estimate_training

    return estimate_training(model, **options)


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
    from sd_fsmis.core.fine_tune import fine_tune

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
def _note(text: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setOpenExternalLinks(False)
    return label


def _error_label() -> QtWidgets.QLabel:
    label = QtWidgets.QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {BAD_COLOUR.name()};")
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _icon(name: str) -> QtGui.QIcon:
    pixmap = getattr(QtWidgets.QStyle.StandardPixmap, name)
    return QtWidgets.QApplication.style().standardIcon(pixmap)


def model_name_from(text: str) -> str:
    """A store name made of ``text``: other characters become ``-`` (e.g. a run folder's name)."""
    name = _NAME_CHARS.sub("-", text).strip("-.")[:100]
    return name or "fine-tuned"


def _fmt_dice(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _fmt_gib(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.1f} GiB" if n >= GIB / 2 else f"{n / 1024**2:.0f} MiB"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plural(n: int, word: str) -> str:
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

    @property
    def checking(self) -> bool:
        return self.check is None and not self.error

    @property
    def usable(self) -> bool:
        return self.check is not None and bool(self.check.ok)

    @property
    def problems(self) -> list[str]:
        if self.error:
            return [self.error]
        return list(self.check.problems) if self.check is not None else []

    @property
    def warnings(self) -> list[str]:
        return list(self.check.warnings) if self.check is not None else []


class _WizardPage(QtWidgets.QWizardPage):
    """A page that knows its wizard's type (for the type checker) and keeps its workers alive."""

    def fw(self) -> FineTuneWizard:
        return self.wizard()  # type: ignore[return-value]

    def _start(self, worker: JobWorker) -> JobWorker:
        worker.setParent(self)
        worker.start()
        return worker


# ======================================================================================= 1. base model
class BaseModelPage(_WizardPage):
    """The model to start from: one of the store, or a new base model (the create dialog)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Base model")
        self.setSubTitle(
            "The model to start from. Fine-tuning adapts it to your images and structures; the base model "
            "itself is not changed."
        )
        self._models: list[Any] = []
        self._list_worker: JobWorker | None = None
        self._select_after = ""
        self._interrupted: list[InterruptedRun] = []
        #: set by the wizard to jump straight to the training page (resume of an interrupted run)
        self.jump_to_training = False

        # the resume banner (hidden unless an interrupted run was found)
        self.resume_banner = QtWidgets.QFrame()
        self.resume_banner.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.resume_banner.setStyleSheet(
            "QFrame { background: palette(alternate-base); border: 1px solid rgb(180, 110, 0); }"
            "QLabel { border: none; background: transparent; }"
        )
        self.resume_text = QtWidgets.QLabel()
        self.resume_text.setWordWrap(True)
        self.resume_button = QtWidgets.QPushButton("Resume this run")
        self.resume_button.setToolTip("Continue the interrupted run from its newest checkpoint")
        self.resume_button.clicked.connect(self._resume_clicked)
        self.dismiss_button = QtWidgets.QPushButton("Not now")
        self.dismiss_button.setToolTip("Start a new run; the interrupted one stays on disk")
        self.dismiss_button.clicked.connect(lambda: self.resume_banner.setVisible(False))
        banner = QtWidgets.QHBoxLayout(self.resume_banner)
        icon = QtWidgets.QLabel()
        icon.setPixmap(_icon("SP_MessageBoxInformation").pixmap(24, 24))
        banner.addWidget(icon)
        banner.addWidget(self.resume_text, 1)
        banner.addWidget(self.resume_button)
        banner.addWidget(self.dismiss_button)
        self.resume_banner.setVisible(False)

        self.model_list = QtWidgets.QListWidget()
        self.model_list.setAlternatingRowColors(True)
        self.model_list.currentItemChanged.connect(lambda *_: self._selection_changed())
        self.model_list.itemDoubleClicked.connect(lambda _item: self.fw().next())
        self.details = QtWidgets.QLabel()
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setMinimumHeight(60)
        self.details.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        self.new_button = QtWidgets.QPushButton("New base model…")
        self.new_button.setToolTip(
            "Create a base model from Stable Diffusion 1.5 + DINOv2, import a reference checkpoint, or make "
            "a tiny test model"
        )
        self.new_button.clicked.connect(self.open_create_dialog)
        self.refresh_button = QtWidgets.QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        self.status = QtWidgets.QLabel()
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.refresh_button)
        buttons.addStretch(1)
        buttons.addWidget(self.status)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.resume_banner)
        layout.addWidget(QtWidgets.QLabel("Models in the store:"))
        layout.addWidget(self.model_list, 1)
        layout.addWidget(self.details)
        layout.addLayout(buttons)

    # -- models
    def refresh(self) -> None:
        """Re-read the model store in a worker."""
        if self._list_worker is not None and self._list_worker.is_running():
            return
        self.status.setText("Reading the model store…")
        worker = JobWorker(list_base_models, name="list models")
        worker.finished.connect(self._listed)
        worker.failed.connect(lambda message, _user: self.status.setText(message))
        self._list_worker = self._start(worker)

    def models_loading(self) -> bool:
        return self._list_worker is not None and self._list_worker.is_running()

    def _listed(self, models: list[Any]) -> None:
        if not qt_alive(self):
            return
        current = self._select_after or self.base_model
        self._select_after = ""
        self._models = models
        self.fw().model_names = {m.name for m in models}
        self.model_list.clear()
        for info in models:
            text = info.name
            if getattr(info, "is_default", False):
                text += "  (default)"
            if not info.valid:
                text += "  — unusable"
            item = QtWidgets.QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, info.name)
            item.setToolTip(info.problem if not info.valid else (info.description or info.path))
            if not info.valid:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
            self.model_list.addItem(item)
        valid = [m for m in models if m.valid]
        wanted = current or next((m.name for m in valid if getattr(m, "is_default", False)), "")
        if not self.select_model(wanted) and valid:
            self.select_model(valid[0].name)
        self.status.setText("" if valid else "No usable model yet: create one with “New base model…”.")
        self._selection_changed()

    def select_model(self, name: str) -> bool:
        """Choose the model ``name`` of the list; False when it is not there (or unusable)."""
        for row in range(self.model_list.count()):
            item = self.model_list.item(row)
            if item.data(Qt.ItemDataRole.UserRole) == name and item.flags() & Qt.ItemFlag.ItemIsEnabled:
                self.model_list.setCurrentItem(item)
                return True
        return False

    @property
    def base_model(self) -> str:
        item = self.model_list.currentItem()
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else ""

    def _info(self, name: str) -> Any:
        return next((m for m in self._models if m.name == name), None)

    def _selection_changed(self) -> None:
        info = self._info(self.base_model)
        if info is None:
            self.details.setText("")
        else:
            lines = [f"<b>{info.name}</b>"]
            if info.description:
                lines.append(info.description)
            if info.classes:
                lines.append("Trained on: " + ", ".join(info.classes))
            dice = getattr(info, "validation_dice", None)
            if isinstance(dice, (int, float)) and math.isfinite(dice):
                lines.append(f"Validation Dice: {dice:.3f}")
            self.details.setText("<br>".join(lines))
        self.completeChanged.emit()

    def open_create_dialog(self) -> QtWidgets.QDialog:
        """The model manager's create dialog; the new model is chosen once it exists."""
        from sd_fsmis.ui.create_model_dialog import CreateModelDialog

        # One dialog, kept: closing it while a model is being written lets the job finish, and the
        # page still hears modelCreated.
        dialog = getattr(self, "_create_dialog", None)
        if dialog is None or not qt_alive(dialog):
            dialog = CreateModelDialog(self)
            dialog.modelCreated.connect(self._created)
            self._create_dialog = dialog
        dialog.open()
        return dialog

    def _created(self, name: str) -> None:
        self._select_after = name
        self.fw().models_changed()
        self.refresh()

    # -- interrupted runs
    def set_interrupted(self, runs: list[InterruptedRun]) -> None:
        """Offer to resume the newest interrupted run (banner)."""
        runs = [run for run in runs if run.plan is not None]  # without its plan a run cannot be resumed here
        self._interrupted = runs
        if not runs:
            self.resume_banner.setVisible(False)
            return
        run = runs[0]
        updated = run.updated
        if isinstance(updated, (int, float)):
            updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(updated))
        more = f" ({_plural(len(runs) - 1, 'other interrupted run')} too)" if len(runs) > 1 else ""
        self.resume_text.setText(
            f"<b>A fine-tuning run was interrupted</b> at step {run.step} of {run.total_steps}: "
            f"{Path(run.out).name}{f', last saved {updated}' if updated else ''}{more}. "
            "Resume it from its newest checkpoint?"
        )
        self.resume_text.setToolTip(str(run.out))
        self.resume_banner.setVisible(True)

    @property
    def interrupted(self) -> list[InterruptedRun]:
        return list(self._interrupted)

    def _resume_clicked(self) -> None:
        if self._interrupted:
            self.fw().resume_interrupted(self._interrupted[0])

    # -- QWizardPage
    def initializePage(self) -> None:
        if not self._models:
            self.refresh()

    def isComplete(self) -> bool:
        info = self._info(self.base_model)
        return info is not None and info.valid

    def nextId(self) -> int:
        return PAGE_TRAINING if self.jump_to_training else PAGE_DATA


# ============================================================================================== 2. data
class AddPairDialog(QtWidgets.QDialog):
    """Choose an image (DICOM folder or file, NIfTI) and its label map (NIfTI, DICOM-SEG)."""

    IMAGE_FILTER = "Images (*.nii.gz *.nii *.dcm *.nrrd *.mha *.mhd DICOMDIR);;All files (*)"
    LABEL_FILTER = "Label maps (*.nii.gz *.nii *.dcm *.nrrd *.mha *.mhd);;All files (*)"

    def __init__(self, parent: QtWidgets.QWidget | None = None, folder: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("Add an image and its label map")
        self._folder = folder
        self.image_edit = QtWidgets.QLineEdit()
        self.image_edit.setPlaceholderText("DICOM folder, DICOM file or NIfTI file")
        self.label_edit = QtWidgets.QLineEdit()
        self.label_edit.setPlaceholderText("NIfTI label map (0 background, 1, 2… the structures)")
        self.name_edit = QtWidgets.QLineEdit()
        self.name_edit.setPlaceholderText("from the image's file name")
        form = QtWidgets.QFormLayout()
        form.addRow("Image:", self._row(self.image_edit, True))
        form.addRow("Label map:", self._row(self.label_edit, False))
        form.addRow("Name:", self.name_edit)
        self.buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        for edit in (self.image_edit, self.label_edit):
            edit.textChanged.connect(self._update)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self.resize(620, self.sizeHint().height())
        self._update()

    def _row(self, edit: QtWidgets.QLineEdit, image: bool) -> QtWidgets.QWidget:
        widget = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(widget)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        file_button = QtWidgets.QPushButton("File…")
        file_button.clicked.connect(lambda: self._pick_file(edit, image))
        row.addWidget(file_button)
        if image:
            folder_button = QtWidgets.QPushButton("DICOM folder…")
            folder_button.clicked.connect(lambda: self._pick_folder(edit))
            row.addWidget(folder_button)
        return widget

    def _pick_file(self, edit: QtWidgets.QLineEdit, image: bool) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self,
            "Choose the image" if image else "Choose the label map",
            edit.text() or self._folder,
            self.IMAGE_FILTER if image else self.LABEL_FILTER,
        )
        if path:
            edit.setText(path)
            self._folder = str(Path(path).parent)

    def _pick_folder(self, edit: QtWidgets.QLineEdit) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Choose the DICOM folder", self._folder)
        if path:
            edit.setText(path)
            self._folder = path

    def _update(self) -> None:
        ok = bool(self.image_edit.text().strip() and self.label_edit.text().strip())
        self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setEnabled(ok)


class DataPage(_WizardPage):
    """Volumes with their label maps, checked one by one in a worker; classes; held-out volumes."""

    COLUMNS = ("Validation", "Name", "Image", "Label map", "Size", "Classes (slices)", "Status")
    COL_VALIDATION, COL_NAME, COL_IMAGE, COL_LABEL, COL_SIZE, COL_CLASSES, COL_STATUS = range(7)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Your annotated volumes")
        self.setSubTitle(
            "Add volumes with their label maps (0 = background, 1, 2… = structures). Each pair is checked; "
            "tick “Validation” for the volumes to hold out: they are not trained on and give the Dice "
            "before and after."
        )
        self.entries: list[PairEntry] = []
        self._queue: list[PairEntry] = []
        self._check_worker: JobWorker | None = None
        self._checking: PairEntry | None = None
        self._save_worker: JobWorker | None = None
        self._validation_touched = False
        self._class_boxes: dict[int, QtWidgets.QCheckBox] = {}
        self._unchecked_classes: set[int] = set()
        self._filling = False
        self.last_folder = ""

        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        for col in range(len(self.COLUMNS)):
            header.setSectionResizeMode(col, QtWidgets.QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(self.COL_VALIDATION, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(self.COL_STATUS, QtWidgets.QHeaderView.ResizeMode.Stretch)
        for col, width in (
            (self.COL_NAME, 105),
            (self.COL_IMAGE, 110),
            (self.COL_LABEL, 110),
            (self.COL_SIZE, 175),
            (self.COL_CLASSES, 190),
        ):
            self.table.setColumnWidth(col, width)
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemSelectionChanged.connect(self._show_details)
        self.details = QtWidgets.QLabel()
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.add_pair_button = QtWidgets.QPushButton("Add image + label…")
        self.add_pair_button.setToolTip("An image (DICOM folder or file, NIfTI) and its label map")
        self.add_pair_button.clicked.connect(self.add_pair_dialog)
        self.add_folder_button = QtWidgets.QPushButton("Add folder…")
        self.add_folder_button.setToolTip(
            "A folder laid out like CHAOS (images/image_ID.nii.gz + labels/label_ID.nii.gz), or a manifest "
            "(.json / .csv) listing image and label paths"
        )
        folder_menu = QtWidgets.QMenu(self.add_folder_button)
        folder_menu.addAction("Folder with images/ and labels/…", self.add_folder_dialog)
        folder_menu.addAction("Manifest file (.json, .csv)…", self.add_manifest_dialog)
        self.add_folder_button.setMenu(folder_menu)
        self.add_studies_button = QtWidgets.QPushButton("Add open studies")
        self.add_studies_button.setToolTip(
            "Each open study with a painted mask: the study and its mask are saved into the run folder"
        )
        self.add_studies_button.clicked.connect(self.add_open_studies)
        self.remove_button = QtWidgets.QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        buttons = QtWidgets.QHBoxLayout()
        for button in (self.add_pair_button, self.add_folder_button, self.add_studies_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.remove_button)

        self.classes_box = QtWidgets.QGroupBox("Classes to train on")
        self.classes_layout = QtWidgets.QVBoxLayout(self.classes_box)
        self.no_classes = QtWidgets.QLabel("The label values found in the usable pairs appear here.")
        self.no_classes.setEnabled(False)
        self.classes_layout.addWidget(self.no_classes)
        self.summary = QtWidgets.QLabel()
        self.summary.setWordWrap(True)
        self.error = _error_label()

        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(self.classes_box, 1)
        right = QtWidgets.QVBoxLayout()
        right.addWidget(self.summary)
        right.addWidget(self.error)
        right.addStretch(1)
        bottom.addLayout(right, 1)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.details)
        layout.addLayout(buttons)
        layout.addLayout(bottom)
        self._update_buttons()

    # -- adding
    def add_pair(
        self, image: str | Path, label: str | Path, name: str = "", series_uid: str | None = None
    ) -> PairEntry:
        """Add an image + label map pair and check it in the background."""
        from sd_fsmis.core.fine_tune import TrainingPair

        name = name or _pair_name(Path(image))
        pair = TrainingPair(str(image), str(label), series_uid=series_uid, name=name)
        return self._add(PairEntry(pair))

    def add_dataset(self, path: str | Path) -> list[PairEntry]:
        """Add every case of a CHAOS-like folder or a manifest (.json / .csv)."""
        from sd_fsmis.core.errors import UserError
        from sd_fsmis.core.fine_tune import pairs_from_dataset

        try:
            pairs, names = pairs_from_dataset(path)
        except UserError as exc:
            self.error.setText(str(exc))
            return []
        self.error.setText("")
        for value, name in names.items():
            self.fw().class_names.setdefault(int(value), str(name))
        return [self._add(PairEntry(pair, origin="dataset")) for pair in pairs]

    def add_pair_dialog(self) -> None:
        dialog = AddPairDialog(self, self.last_folder)
        if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return
        image, label = dialog.image_edit.text().strip(), dialog.label_edit.text().strip()
        self.last_folder = str(Path(label).parent)
        self.add_pair(image, label, dialog.name_edit.text().strip())

    def add_folder_dialog(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self, "Folder with images/ and labels/", self.last_folder
        )
        if path:
            self.last_folder = path
            self.add_dataset(path)

    def add_manifest_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Manifest of images and label maps", self.last_folder, "Manifests (*.json *.csv)"
        )
        if path:
            self.last_folder = str(Path(path).parent)
            self.add_dataset(path)

    def studies_with_masks(self) -> list[tuple[Any, Any]]:
        """(study, layer) of each open study with a non-empty painted mask (its active one if painted)."""
        session = self.fw().session
        if session is None:
            return []
        found = []
        for study in session.studies:
            manual = [layer for layer in study.layers if layer.kind == "manual" and layer.array.any()]
            if not manual:
                continue
            active = study.active_layer
            found.append((study, active if active in manual else manual[0]))
        return found

    def add_open_studies(self) -> bool:
        """Save each open study with a painted mask into the run folder (worker), then add and check it."""
        found = self.studies_with_masks()
        if not found:
            self.error.setText("No open study has a painted mask.")
            return False
        if self._save_worker is not None and self._save_worker.is_running():
            return False
        self.error.setText("")
        taken = {entry.pair.name for entry in self.entries}
        items, names = [], {}
        for study, layer in found:
            name = model_name_from(study.name)
            base, n = name, 2
            while name in taken:
                name, n = f"{base}-{n}", n + 1
            taken.add(name)
            label_map = layer.copy_label_map()
            items.append((study.volume, label_map, name))
            for value, label in label_map.labels.items():
                names.setdefault(int(value), label.name)
        folder = self.fw().data_folder()
        worker = JobWorker(partial_job(save_study_pairs, items, folder), name="save studies")
        worker.finished.connect(lambda pairs: self._studies_saved(pairs, names))
        worker.failed.connect(lambda message, _user: self.error.setText(message))
        worker.done.connect(self._update_buttons)
        self._save_worker = self._start(worker)
        self.summary.setText(f"Saving {_plural(len(items), 'study')} into {folder}…")
        self._update_buttons()
        return True

    def _studies_saved(self, pairs: list[TrainingPair], names: dict[int, str]) -> None:
        if not qt_alive(self):
            return
        for value, name in names.items():
            self.fw().class_names.setdefault(value, name)
        for pair in pairs:
            self._add(PairEntry(pair, origin="study"))

    def _add(self, entry: PairEntry) -> PairEntry:
        self.entries.append(entry)
        self._queue.append(entry)
        self._refill()
        self._check_next()
        return entry

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()}, reverse=True)
        for row in rows:
            self.remove_entry(self.entries[row])

    def remove_entry(self, entry: PairEntry) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
        if entry in self._queue:
            self._queue.remove(entry)
        self._refill()

    # -- checking
    def _check_next(self) -> None:
        if self._check_worker is not None and self._check_worker.is_running():
            return
        if not self._queue:
            self._checking = None
            self._refill()
            return
        entry = self._queue.pop(0)
        self._checking = entry
        shots = self.fw().settings_page.shots_spin.value()
        worker = JobWorker(partial_job(check_training_pair, entry.pair, shots), name="check pair")
        worker.finished.connect(lambda result, e=entry: self._checked(e, result))
        worker.failed.connect(lambda message, _user, e=entry: self._check_failed(e, message))
        worker.done.connect(self._check_done)
        self._check_worker = self._start(worker)

    def _checked(self, entry: PairEntry, result: tuple[PairCheck, dict[int, str]]) -> None:
        entry.check, entry.names = result
        for value, name in entry.names.items():
            self.fw().class_names.setdefault(value, name)

    def _check_failed(self, entry: PairEntry, message: str) -> None:
        entry.error = message

    def _check_done(self) -> None:
        if not qt_alive(self):
            return
        self._checking = None
        if not self._validation_touched:
            self._default_validation()
        self._refill()
        QtCore.QTimer.singleShot(0, self._check_next)

    def checks_pending(self) -> bool:
        """True while pairs wait for (or are in) their check, or studies are being saved."""
        saving = self._save_worker is not None and self._save_worker.is_running()
        return bool(self._queue) or self._checking is not None or saving

    def shutdown(self) -> None:
        """Stop the checks (the wizard closes)."""
        self._queue.clear()
        for worker in (self._check_worker, self._save_worker):
            if worker is not None and worker.is_running():
                worker.shutdown()

    def _default_validation(self) -> None:
        """Hold out the last usable pair when there are at least three usable ones, else none."""
        usable = [e for e in self.entries if e.usable]
        for entry in self.entries:
            entry.validation = False
        if len(usable) >= 3:
            usable[-1].validation = True

    # -- the table
    def _refill(self) -> None:
        self._filling = True
        try:
            self.table.setRowCount(len(self.entries))
            for row, entry in enumerate(self.entries):
                self._fill_row(row, entry)
        finally:
            self._filling = False
        self._refill_classes()
        self._update_summary()
        self._update_buttons()
        self._show_details()
        self.completeChanged.emit()

    def details_entry(self) -> PairEntry | None:
        """The pair whose problems and warnings are spelled out under the table: the selected one, else the
        first with problems, else the first with warnings."""
        rows = self.table.selectionModel().selectedRows()
        if rows and 0 <= rows[0].row() < len(self.entries):
            return self.entries[rows[0].row()]
        return next((e for e in self.entries if e.problems), None) or next(
            (e for e in self.entries if e.warnings), None
        )

    def _show_details(self) -> None:
        entry = self.details_entry()
        if entry is None or not (entry.problems or entry.warnings):
            self.details.setText("")
            self.details.setVisible(False)
            return
        lines = [f'<span style="color: {BAD_COLOUR.name()};">✖ {_html(p)}</span>' for p in entry.problems]
        lines += [f'<span style="color: {WARN_COLOUR.name()};">⚠ {_html(w)}</span>' for w in entry.warnings]
        self.details.setText(f"<b>{_html(entry.pair.name)}</b>: " + "<br>".join(lines))
        self.details.setVisible(True)

    def _fill_row(self, row: int, entry: PairEntry) -> None:
        pair, check = entry.pair, entry.check
        hold = QtWidgets.QTableWidgetItem()
        flags = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled
        if entry.usable:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        hold.setFlags(flags)
        hold.setCheckState(Qt.CheckState.Checked if entry.validation else Qt.CheckState.Unchecked)
        hold.setToolTip("Hold this volume out: not trained on, used for the Dice before and after")
        self.table.setItem(row, self.COL_VALIDATION, hold)
        items = {
            self.COL_NAME: (pair.name, f"{pair.image}\n{pair.label}"),
            self.COL_IMAGE: (Path(pair.image).name, str(pair.image)),
            self.COL_LABEL: (Path(pair.label).name, str(pair.label)),
        }
        size = ""
        classes = ""
        if check is not None and check.shape:
            size = "×".join(str(n) for n in reversed(tuple(check.shape)))
            if check.spacing and any(check.spacing):
                size += ", " + "×".join(f"{s:.3g}" for s in reversed(tuple(check.spacing))) + " mm"
            if getattr(check, "modality", ""):
                size = f"{check.modality}  {size}"
        if check is not None and check.classes:
            classes = ", ".join(f"{self.class_name(v)} ({int(n)})" for v, n in sorted(check.classes.items()))
        items[self.COL_SIZE] = (size, size)
        items[self.COL_CLASSES] = (classes, classes)
        if entry.checking:
            status, tip, icon, colour = "checking…", "", "SP_BrowserReload", None
        elif entry.problems:
            status = entry.problems[0] + (
                f" (+{len(entry.problems) - 1} more)" if len(entry.problems) > 1 else ""
            )
            tip = "\n".join(entry.problems + entry.warnings)
            icon, colour = "SP_MessageBoxCritical", BAD_COLOUR
        elif entry.warnings:
            status = "usable — " + entry.warnings[0]
            tip = "\n".join(entry.warnings)
            icon, colour = "SP_MessageBoxWarning", WARN_COLOUR
        else:
            status, tip, icon, colour = "usable", "", "SP_DialogApplyButton", OK_COLOUR
        items[self.COL_STATUS] = (status, tip or status)
        for col, (text, tooltip) in items.items():
            item = QtWidgets.QTableWidgetItem(text)
            item.setToolTip(tooltip)
            item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
            if col == self.COL_STATUS:
                item.setIcon(_icon(icon))
                if colour is not None:
                    item.setForeground(colour)
            elif entry.problems:
                item.setForeground(BAD_COLOUR)
            self.table.setItem(row, col, item)

    def _item_changed(self, item: QtWidgets.QTableWidgetItem) -> None:
        if self._filling or item.column() != self.COL_VALIDATION:
            return
        row = item.row()
        if 0 <= row < len(self.entries):
            self.entries[row].validation = item.checkState() == Qt.CheckState.Checked
            self._validation_touched = True
            self._refill_classes()
            self._update_summary()
            self.completeChanged.emit()

    def set_validation(self, entry: PairEntry, held_out: bool) -> None:
        """Hold ``entry`` out (or not), as a click in its Validation box does."""
        row = self.entries.index(entry)
        self.table.item(row, self.COL_VALIDATION).setCheckState(
            Qt.CheckState.Checked if held_out else Qt.CheckState.Unchecked
        )

    def class_name(self, value: int) -> str:
        return self.fw().class_names.get(int(value), f"Label {int(value)}")

    def found_classes(self) -> dict[int, tuple[int, int]]:
        """label -> (training volumes holding it, validation volumes holding it), over the usable pairs."""
        found: dict[int, list[int]] = {}
        for entry in self.entries:
            if not entry.usable:
                continue
            for value in entry.check.classes:
                counts = found.setdefault(int(value), [0, 0])
                counts[1 if entry.validation else 0] += 1
        return {v: (c[0], c[1]) for v, c in sorted(found.items())}

    def _refill_classes(self) -> None:
        found = self.found_classes()
        for value, box in list(self._class_boxes.items()):
            if value not in found:
                self.classes_layout.removeWidget(box)
                box.deleteLater()
                del self._class_boxes[value]
        for value, (train, held) in found.items():
            box = self._class_boxes.get(value)
            if box is None:
                box = QtWidgets.QCheckBox()
                box.setChecked(value not in self._unchecked_classes)
                box.toggled.connect(lambda on, v=value: self._class_toggled(v, on))
                self._class_boxes[value] = box
                self.classes_layout.addWidget(box)
            text = f"{self.class_name(value)} (value {value}): {_plural(train, 'training volume')}"
            if held:
                text += f", {held} for validation"
            box.setText(text)
            box.setEnabled(train > 0)
            if train == 0:
                box.setToolTip("No training volume holds this class")
        self.no_classes.setVisible(not found)

    def _class_toggled(self, value: int, on: bool) -> None:
        (self._unchecked_classes.discard if on else self._unchecked_classes.add)(value)
        self._update_summary()
        self.completeChanged.emit()

    def set_class_checked(self, value: int, on: bool) -> None:
        """Train on class ``value`` (or not)."""
        (self._unchecked_classes.discard if on else self._unchecked_classes.add)(int(value))
        box = self._class_boxes.get(int(value))
        if box is not None:
            box.setChecked(on)
        self._update_summary()
        self.completeChanged.emit()

    # -- the result of the page
    def chosen_classes(self) -> list[int]:
        """The classes ticked that at least one training volume holds."""
        return [
            v for v, (train, _) in self.found_classes().items() if train and v not in self._unchecked_classes
        ]

    def usable_entries(self) -> list[PairEntry]:
        return [e for e in self.entries if e.usable]

    def training_entries(self) -> list[PairEntry]:
        return [e for e in self.usable_entries() if not e.validation]

    def validation_entries(self) -> list[PairEntry]:
        return [e for e in self.usable_entries() if e.validation]

    def not_ready_reason(self) -> str:
        """Why Next is disabled ("" when it is not)."""
        if self.checks_pending():
            return "Checking the volumes…"
        if not self.usable_entries():
            return "Add at least one volume with its label map."
        if not self.training_entries():
            return "Keep at least one usable volume for training (untick “Validation” on one)."
        if not self.chosen_classes():
            return "Choose at least one class to train on."
        return ""

    def _update_summary(self) -> None:
        usable = self.usable_entries()
        bad = [e for e in self.entries if e.problems]
        parts = [
            f"{_plural(len(self.training_entries()), 'volume')} for training",
            f"{len(self.validation_entries())} held out for validation",
        ]
        if bad:
            parts.append(f"{len(bad)} with problems (not used)")
        text = ", ".join(parts) + "."
        if usable and not self.validation_entries():
            text += " Without a held-out volume there is no Dice before/after to compare."
        reason = self.not_ready_reason()
        self.summary.setText(text if not reason else f"{text}<br><i>{reason}</i>")

    def _update_buttons(self) -> None:
        saving = self._save_worker is not None and self._save_worker.is_running()
        has_studies = bool(self.studies_with_masks()) if self.wizard() is not None else False
        self.add_studies_button.setEnabled(has_studies and not saving)
        self.add_studies_button.setToolTip(
            "Each open study with a painted mask: the study and its mask are saved into the run folder"
            if has_studies
            else "No open study has a painted mask"
        )
        self.remove_button.setEnabled(bool(self.table.selectionModel().selectedRows()))

    # -- QWizardPage
    def initializePage(self) -> None:
        self._update_buttons()
        self._update_summary()

    def isComplete(self) -> bool:
        return not self.not_ready_reason()


def _pair_name(image: Path) -> str:
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


# ========================================================================================== 3. settings
class ScientificSpinBox(QtWidgets.QDoubleSpinBox):
    """A learning rate: shown as ``1e-05``, stepped by factors of two."""

    def __init__(self, value: float, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(0.0, 1.0)
        self.setValue(value)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return f"{value:.3g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> object:
        stripped = text.strip()
        if (
            not stripped
            or stripped in ("-", ".", "e", "1e", "1e-")
            or stripped.endswith(("e", "e-", "E", "E-"))
        ):
            return QtGui.QValidator.State.Intermediate, text, pos
        try:
            value = float(stripped)
        except ValueError:
            return QtGui.QValidator.State.Invalid, text, pos
        if 0.0 <= value <= 1.0:
            return QtGui.QValidator.State.Acceptable, text, pos
        return QtGui.QValidator.State.Invalid, text, pos

    def stepBy(self, steps: int) -> None:
        value = self.value() or 1e-6
        self.setValue(min(1.0, value * (2.0**steps)))


class SettingsPage(_WizardPage):
    """Training settings with an estimate of memory and time on this machine."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Training settings")
        self.setSubTitle(
            "The defaults suit a few annotated volumes. The estimate below is measured on this machine."
        )
        self.setCommitPage(True)
        self.setButtonText(QtWidgets.QWizard.WizardButton.CommitButton, "Start training")
        self._estimate_worker: JobWorker | None = None
        self._estimate_again = False
        self._out_edited = False
        #: the last estimate (ResourceEstimate) and the settings it was made for
        self.estimate: Any = None
        self.estimate_error = ""

        def spin(low: int, high: int, value: int, suffix: str = "", tip: str = "") -> QtWidgets.QSpinBox:
            box = QtWidgets.QSpinBox()
            box.setRange(low, high)
            box.setValue(value)
            box.setSuffix(suffix)
            box.setToolTip(tip)
            box.setKeyboardTracking(False)
            box.valueChanged.connect(self.settings_changed)
            return box

        self.steps_spin = spin(1, 1_000_000, 1000, " steps", "Optimiser steps (each averages the episodes)")
        self.steps_spin.setSingleStep(100)
        self.lr_unet_spin = ScientificSpinBox(1e-5)
        self.lr_unet_spin.setToolTip("Learning rate of the U-Net and its reference input convolution")
        self.lr_mapper_spin = ScientificSpinBox(5e-5)
        self.lr_mapper_spin.setToolTip("Learning rate of the VTCT mapper (DINOv2 features to the U-Net)")
        for box in (self.lr_unet_spin, self.lr_mapper_spin):
            box.valueChanged.connect(self.settings_changed)
        self.batch_spin = spin(1, 1, 1, " episode", "Episodes per micro-batch (one; use accumulation)")
        self.accumulation_spin = spin(
            1, 256, 4, "", "Gradient accumulation: episodes averaged into one optimiser step"
        )
        self.shots_spin = spin(1, 10, 1, "", "Support slices per episode (K-shot)")

        self.full_radio = QtWidgets.QRadioButton("Full fine-tuning")
        self.full_radio.setToolTip("Train every weight of the U-Net (best results, most memory)")
        self.lora_radio = QtWidgets.QRadioButton("LoRA")
        self.lora_radio.setToolTip("Low-rank adapters on the attention layers: much less memory")
        self.full_radio.setChecked(True)
        self.lora_radio.toggled.connect(self._lora_toggled)
        self.rank_spin = spin(1, 256, 16, "", "LoRA rank")
        self.rank_spin.setPrefix("rank ")
        self.rank_spin.setEnabled(False)
        method = QtWidgets.QHBoxLayout()
        method.addWidget(self.full_radio)
        method.addWidget(self.lora_radio)
        method.addWidget(self.rank_spin)
        method.addStretch(1)

        self.precision_combo = QtWidgets.QComboBox()
        for name, text in PRECISIONS:
            self.precision_combo.addItem(text, name)
        self.device_combo = QtWidgets.QComboBox()
        for name, text in DEVICES:
            self.device_combo.addItem(text, name)
        for combo in (self.precision_combo, self.device_combo):
            combo.currentIndexChanged.connect(self.settings_changed)
        self.checkpointing_check = QtWidgets.QCheckBox("Gradient checkpointing (less memory, ~30% slower)")
        self.checkpointing_check.toggled.connect(self.settings_changed)

        self.checkpoint_spin = spin(
            1, 1_000_000, 100, " steps", "Save a checkpoint (for resuming) this often"
        )
        self.validate_spin = spin(
            0, 1_000_000, 250, " steps", "Dice on the held-out volumes this often (0: only at the end)"
        )
        self.validate_spin.setSpecialValueText("only at the end")

        self.out_edit = QtWidgets.QLineEdit()
        self.out_edit.setToolTip("The run's folder: checkpoints, the trained model, the settings")
        self.out_edit.textEdited.connect(self._out_changed)
        self.out_edit.textChanged.connect(lambda _t: self.completeChanged.emit())
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self._browse_out)
        out_row = QtWidgets.QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(browse)

        for box in (self.lr_unet_spin, self.lr_mapper_spin):
            box.setMinimumWidth(90)
        form = QtWidgets.QFormLayout()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        form.addRow("Steps:", self.steps_spin)
        lr_row = QtWidgets.QHBoxLayout()
        lr_row.addWidget(QtWidgets.QLabel("U-Net"))
        lr_row.addWidget(self.lr_unet_spin)
        lr_row.addWidget(QtWidgets.QLabel("mapper"))
        lr_row.addWidget(self.lr_mapper_spin)
        lr_row.addStretch(1)
        form.addRow("Learning rates:", lr_row)
        batch_row = QtWidgets.QHBoxLayout()
        batch_row.addWidget(self.batch_spin)
        batch_row.addWidget(QtWidgets.QLabel("×"))
        batch_row.addWidget(self.accumulation_spin)
        batch_row.addWidget(QtWidgets.QLabel("accumulated per step"))
        batch_row.addStretch(1)
        form.addRow("Batch:", batch_row)
        form.addRow("Shots (K):", self.shots_spin)
        form.addRow("Method:", method)
        form.addRow("Precision:", self.precision_combo)
        form.addRow("Device:", self.device_combo)
        form.addRow("Memory:", self.checkpointing_check)
        every_row = QtWidgets.QHBoxLayout()
        every_row.addWidget(QtWidgets.QLabel("checkpoint every"))
        every_row.addWidget(self.checkpoint_spin)
        every_row.addWidget(QtWidgets.QLabel("validate every"))
        every_row.addWidget(self.validate_spin)
        every_row.addStretch(1)
        form.addRow("Saving:", every_row)
        form.addRow("Run folder:", out_row)

        # the estimate
        self.estimate_box = QtWidgets.QGroupBox("Estimate on this machine")
        self.estimate_device = QtWidgets.QLabel("…")
        self.memory_bar = QtWidgets.QProgressBar()
        self.memory_bar.setRange(0, 1000)
        self.memory_bar.setTextVisible(True)
        self.memory_bar.setFormat("")
        self.estimate_time = QtWidgets.QLabel("")
        self.estimate_warning = QtWidgets.QLabel("")
        self.estimate_warning.setWordWrap(True)
        self.estimate_warning.setTextFormat(Qt.TextFormat.RichText)
        self.use_lora_button = QtWidgets.QPushButton("Use LoRA")
        self.use_lora_button.clicked.connect(lambda: self.lora_radio.setChecked(True))
        self.use_checkpointing_button = QtWidgets.QPushButton("Use gradient checkpointing")
        self.use_checkpointing_button.clicked.connect(lambda: self.checkpointing_check.setChecked(True))
        suggestion_row = QtWidgets.QHBoxLayout()
        suggestion_row.addWidget(self.use_lora_button)
        suggestion_row.addWidget(self.use_checkpointing_button)
        suggestion_row.addStretch(1)
        for button in (self.use_lora_button, self.use_checkpointing_button):
            button.setVisible(False)
        box = QtWidgets.QFormLayout(self.estimate_box)
        box.addRow("Device:", self.estimate_device)
        box.addRow("Memory:", self.memory_bar)
        box.addRow("Time:", self.estimate_time)
        box.addRow(self.estimate_warning)
        box.addRow(suggestion_row)

        self.error = _error_label()
        self.data_note = QtWidgets.QLabel()
        self.data_note.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.data_note)
        layout.addWidget(self.estimate_box)
        layout.addWidget(self.error)
        layout.addStretch(1)

        self._debounce = QtCore.QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(ESTIMATE_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.update_estimate)

    # -- values
    def _lora_toggled(self, on: bool) -> None:
        self.rank_spin.setEnabled(on)
        self.settings_changed()

    def _out_changed(self, _text: str) -> None:
        self._out_edited = True

    def _browse_out(self) -> None:
        start = self.out_edit.text() or str(self.fw().default_out().parent)
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Folder for the run", str(Path(start).parent))
        if path:
            self.out_edit.setText(path)
            self._out_edited = True

    def options(self) -> dict[str, Any]:
        """The settings as FineTunePlan keyword arguments."""
        return {
            "steps": self.steps_spin.value(),
            "lr_unet": self.lr_unet_spin.value(),
            "lr_mapper": self.lr_mapper_spin.value(),
            "batch_size": self.batch_spin.value(),
            "accumulation": self.accumulation_spin.value(),
            "lora": self.lora_radio.isChecked(),
            "lora_rank": self.rank_spin.value(),
            "precision": str(self.precision_combo.currentData()),
            "device": str(self.device_combo.currentData()),
            "gradient_checkpointing": self.checkpointing_check.isChecked(),
            "shots": self.shots_spin.value(),
            "checkpoint_every": self.checkpoint_spin.value(),
            "validate_every": self.validate_spin.value(),
        }

    def set_options(self, **values: Any) -> None:
        """Set settings by their FineTunePlan names (tests, a resumed plan)."""
        spins = {
            "steps": self.steps_spin,
            "lr_unet": self.lr_unet_spin,
            "lr_mapper": self.lr_mapper_spin,
            "batch_size": self.batch_spin,
            "accumulation": self.accumulation_spin,
            "lora_rank": self.rank_spin,
            "shots": self.shots_spin,
            "checkpoint_every": self.checkpoint_spin,
            "validate_every": self.validate_spin,
        }
        for key, value in values.items():
            if key in spins:
                spins[key].setValue(value)
            elif key == "lora":
                (self.lora_radio if value else self.full_radio).setChecked(True)
            elif key == "gradient_checkpointing":
                self.checkpointing_check.setChecked(bool(value))
            elif key in ("precision", "device"):
                combo = self.precision_combo if key == "precision" else self.device_combo
                combo.setCurrentIndex(max(0, combo.findData(value)))
            elif key == "out":
                self.out_edit.setText(str(value))
                self._out_edited = True
            else:
                raise KeyError(f"unknown setting {key!r}")

    # -- the estimate
    def settings_changed(self, *_: object) -> None:
        """Any setting changed: recompute the estimate after a short pause."""
        self.error.setText("")
        if self.fw() is not None and self.fw().currentPage() is self:
            self._debounce.start()

    def estimate_running(self) -> bool:
        return self._debounce.isActive() or (
            self._estimate_worker is not None and self._estimate_worker.is_running()
        )

    def update_estimate(self) -> None:
        """Start the estimate in a worker (again once the running one ends)."""
        self._debounce.stop()
        if self._estimate_worker is not None and self._estimate_worker.is_running():
            self._estimate_again = True
            return
        options = self.options()
        estimate_options = {
            key: options[key]
            for key in (
                "steps",
                "batch_size",
                "accumulation",
                "shots",
                "lora",
                "lora_rank",
                "gradient_checkpointing",
                "precision",
                "device",
            )
        }
        self.estimate_device.setText("measuring…")
        worker = JobWorker(
            partial_job(estimate_job, self.fw().base_model, estimate_options), name="training estimate"
        )
        worker.finished.connect(self._estimated)
        worker.failed.connect(self._estimate_failed)
        worker.done.connect(self._estimate_done)
        self._estimate_worker = self._start(worker)

    def _estimated(self, estimate: Any) -> None:
        if not qt_alive(self):
            return
        self.estimate, self.estimate_error = estimate, ""
        self.estimate_device.setText(str(estimate.device))
        peak, available = estimate.peak_memory_bytes, estimate.available_memory_bytes
        if available:
            fraction = min(1.0, peak / available) if peak else 0.0
            self.memory_bar.setValue(round(1000 * fraction))
            self.memory_bar.setFormat(f"{_fmt_gib(peak)} of {_fmt_gib(available)}")
        else:
            self.memory_bar.setValue(0)
            self.memory_bar.setFormat(f"{_fmt_gib(peak)} (memory of this device unknown)")
        colour = "rgb(0, 150, 70)" if estimate.fits else "rgb(200, 30, 30)"
        self.memory_bar.setStyleSheet(f"QProgressBar::chunk {{ background-color: {colour}; }}")
        per_step = f"{estimate.seconds_per_step:.2g} s per step" if estimate.seconds_per_step else ""
        total = format_seconds(estimate.total_seconds) if estimate.total_seconds is not None else "?"
        self.estimate_time.setText(f"about {total}" + (f" ({per_step})" if per_step else ""))
        suggestions = list(estimate.suggestions or [])
        if not estimate.fits:
            text = (
                f'<span style="color: {BAD_COLOUR.name()};"><b>These settings do not fit in the memory of '
                f"{estimate.device}.</b></span>"
            )
            if suggestions:
                text += "<br>" + "<br>".join(f"• {s}" for s in suggestions)
        else:
            text = "<br>".join(f"• {s}" for s in suggestions)
        self.estimate_warning.setText(text)
        self.use_lora_button.setVisible(not estimate.fits and not self.lora_radio.isChecked())
        self.use_checkpointing_button.setVisible(
            not estimate.fits and not self.checkpointing_check.isChecked()
        )
        self.estimate_box.setToolTip(estimate.summary())

    def _estimate_failed(self, message: str, _is_user_error: bool) -> None:
        if not qt_alive(self):
            return
        self.estimate, self.estimate_error = None, message
        self.estimate_device.setText("no estimate")
        self.memory_bar.setValue(0)
        self.memory_bar.setFormat("")
        self.estimate_time.setText("")
        self.estimate_warning.setText(message)
        for button in (self.use_lora_button, self.use_checkpointing_button):
            button.setVisible(False)

    def _estimate_done(self) -> None:
        if self._estimate_again and qt_alive(self):
            self._estimate_again = False
            QtCore.QTimer.singleShot(0, self.update_estimate)

    def shutdown(self) -> None:
        self._debounce.stop()
        self._estimate_again = False
        if self._estimate_worker is not None and self._estimate_worker.is_running():
            self._estimate_worker.shutdown()

    # -- QWizardPage
    def initializePage(self) -> None:
        if not self._out_edited:
            self.out_edit.setText(str(self.fw().default_out()))
        self.error.setText("")
        data = self.fw().data_page
        train, held = len(data.training_entries()), len(data.validation_entries())
        names = ", ".join(data.class_name(v) for v in data.chosen_classes())
        note = f"Training on {names} in {_plural(train, 'volume')}; {held} held out for validation."
        if not held:
            note += (
                " Without a held-out volume nothing is validated: no Dice before and after, and the last "
                "model is the result."
            )
        self.data_note.setText(note)
        self._debounce.start()

    def isComplete(self) -> bool:
        return bool(self.out_edit.text().strip())

    def validatePage(self) -> bool:
        """Build and validate the plan; refuse an existing run folder that is not this wizard's."""
        from sd_fsmis.core.errors import UserError
        from sd_fsmis.core.fine_tune import PLAN_FILE

        out = self.fw().out_folder()
        if (out / "checkpoints").exists() or (out / PLAN_FILE).exists():
            self.error.setText(
                f"{out} already holds a fine-tuning run: choose another folder (an interrupted run is "
                "offered for resuming when the wizard opens)."
            )
            return False
        try:
            self.fw().plan = self.fw().build_plan()
        except UserError as exc:
            self.error.setText(str(exc))
            return False
        self.shutdown()
        return True


# ========================================================================================== 4. training
class TrainingPage(_WizardPage):
    """The run: live loss curve, step, speed, time left, checkpoint, validation; Pause, Stop, Resume."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Training")
        self.setSubTitle(
            "The model trains in the background. Stop saves a checkpoint at the end of the current step; "
            "Resume continues from it, also after the application was closed."
        )
        self.setCommitPage(True)
        self.setButtonText(QtWidgets.QWizard.WizardButton.CommitButton, "Next >")
        self.worker: JobWorker | None = None
        self.feed = TrainingFeed()
        self.result: Any = None
        self.outcome = ""  # "", "running", "finished", "cancelled", "failed"
        self.last_checkpoint = ""
        self.last_step = 0
        self._resume_next = False

        self.plot = LossPlot()
        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.step_label = QtWidgets.QLabel()
        self.speed_label = QtWidgets.QLabel()
        self.eta_label = QtWidgets.QLabel()
        self.checkpoint_label = QtWidgets.QLabel("—")
        self.checkpoint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.validation_label = QtWidgets.QLabel("—")
        self.validation_label.setWordWrap(True)
        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        grid = QtWidgets.QGridLayout()
        grid.addWidget(QtWidgets.QLabel("Step:"), 0, 0)
        grid.addWidget(self.step_label, 0, 1)
        grid.addWidget(QtWidgets.QLabel("Speed:"), 0, 2)
        grid.addWidget(self.speed_label, 0, 3)
        grid.addWidget(QtWidgets.QLabel("Time left:"), 0, 4)
        grid.addWidget(self.eta_label, 0, 5)
        grid.addWidget(QtWidgets.QLabel("Checkpoint:"), 1, 0)
        grid.addWidget(self.checkpoint_label, 1, 1, 1, 5)
        grid.addWidget(QtWidgets.QLabel("Validation:"), 2, 0)
        grid.addWidget(self.validation_label, 2, 1, 1, 5)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        grid.setColumnStretch(5, 1)

        self.pause_button = QtWidgets.QPushButton("Pause")
        self.pause_button.setToolTip("Wait after the current step (the GPU is freed of work, not of memory)")
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button = QtWidgets.QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the end of the current step, with a checkpoint to resume from")
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QtWidgets.QPushButton("Resume training")
        self.resume_button.setToolTip("Continue from the newest checkpoint")
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.progress_bar, 1)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.resume_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.plot, 1)
        layout.addLayout(grid)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        self._set_buttons()

    # -- running
    def is_running(self) -> bool:
        return self.worker is not None and self.worker.is_running()

    def start(self, resume: bool = False) -> bool:
        """Start (or resume) the wizard's plan in a worker; False while one runs or without a plan."""
        plan = self.fw().plan
        if plan is None or self.is_running():
            return False
        if self.worker is not None:
            self.worker.deleteLater()
        self.result = None
        self.outcome = "running"
        self.feed = TrainingFeed()
        self.plot.set_total(plan.steps)
        self.plot.set_dice_visible(bool(plan.validation))
        if not resume:
            self.plot.clear()
            self.last_step = 0
            self.checkpoint_label.setText("—")
            self.validation_label.setText("—" if plan.validation else "— (no volume held out)")
        self.progress_bar.setRange(0, max(1, plan.steps))
        self.progress_bar.setValue(self.last_step)
        self.step_label.setText(f"{self.last_step} / {plan.steps}")
        self.speed_label.setText("")
        self.eta_label.setText("")
        self.status_label.setStyleSheet("")
        self.status_label.setText(
            "Resuming from the newest checkpoint (loading the model)…"
            if resume
            else "Loading the model and data…"
        )
        worker = JobWorker(partial_job(run_fine_tune, plan, resume, self.feed), name="fine-tuning")
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.done.connect(self._on_done)
        self.worker = self._start(worker)
        self.fw().trainingStarted.emit()
        self._set_buttons()
        self.completeChanged.emit()
        return True

    def toggle_pause(self) -> None:
        """Pause after the current step, or continue."""
        if not self.is_running():
            return
        token = self.worker.token
        if token.paused:
            token.resume()
            self.status_label.setText("Training…")
        else:
            token.pause()
            self.status_label.setText("Pausing at the end of this step…")
        self._set_buttons()

    @property
    def paused(self) -> bool:
        return self.is_running() and self.worker.token.paused

    def stop(self) -> None:
        """Stop at the end of the current step; the trainer writes a checkpoint first."""
        if not self.is_running():
            return
        self.worker.cancel()
        self.status_label.setText("Stopping at the end of this step (saving a checkpoint)…")
        self._set_buttons()

    def shutdown(self, timeout_ms: int | None = None) -> bool:
        """Stop at a step boundary and wait for the checkpoint (the wizard or the application closes)."""
        if self.worker is None:
            return True
        self.worker.cancel()
        return self.worker.wait(timeout_ms)

    # -- worker signals
    def _drain(self) -> None:
        for item in self.feed.drain():
            step = int(item.get("step", 0))
            if "loss" in item:
                self.plot.add_loss(step, item["loss"])
            validation = item.get("validation") or {}
            if validation.get("dice") is not None:
                self.plot.add_validation(step, validation["dice"])
                self._show_validation(step, validation)
            if item.get("checkpoint"):
                self.last_checkpoint = str(item["checkpoint"])
                self.checkpoint_label.setText(f"step {step}: {self.last_checkpoint}")

    def _show_validation(self, step: int, validation: dict) -> None:
        text = f"Dice {_fmt_dice(validation.get('dice'))} at step {step}"
        classes = validation.get("class_dice") or {}
        if classes:
            text += " (" + ", ".join(f"{k} {_fmt_dice(v)}" for k, v in classes.items()) + ")"
        self.validation_label.setText(text)

    def _on_progress(self, progress: Progress) -> None:
        if not qt_alive(self):
            return
        self._drain()
        extra = progress.extra
        plan = self.fw().plan
        total = progress.total or (plan.steps if plan is not None else 0)
        step = int(extra.get("step", progress.done))
        if step or "loss" in extra:
            self.last_step = step
            self.progress_bar.setRange(0, max(1, total))
            self.progress_bar.setValue(min(step, total))
            self.step_label.setText(f"{step} / {total}")
        if extra.get("samples_per_s"):
            self.speed_label.setText(f"{extra['samples_per_s']:.2f} episodes/s")
        if "eta_s" in extra:
            self.eta_label.setText(format_seconds(extra["eta_s"]) if extra["eta_s"] is not None else "")
        if self.worker is not None and self.worker.cancel_requested:
            return
        if extra.get("paused"):
            self.status_label.setText(f"Paused after step {step}. Press Resume to continue.")
        elif "loss" in extra:
            self.status_label.setText(f"Training… loss {extra['loss']:.4f}")
        elif progress.message:
            self.status_label.setText(progress.message[:1].upper() + progress.message[1:] + "…")
        self._set_buttons()

    def _on_finished(self, result: Any) -> None:
        self._drain()
        self.result = result
        self.outcome = "finished"
        self.fw().training_result = result
        if getattr(result, "losses", None):
            self.plot.set_losses(list(result.losses))
        if getattr(result, "validation", None):
            self.plot.set_validation(dict(result.validation))
        self.plot.redraw()
        steps = getattr(result, "steps", self.last_step)
        self.last_step = steps
        self.progress_bar.setValue(self.progress_bar.maximum())
        self.step_label.setText(f"{steps} / {self.progress_bar.maximum()}")
        self.eta_label.setText("done")
        resumed = getattr(result, "resumed_from", 0)
        self.status_label.setStyleSheet(f"color: {OK_COLOUR.name()};")
        self.status_label.setText(
            f"Finished: {_plural(steps, 'step')}"
            + (f" (resumed from step {resumed})" if resumed else "")
            + ". Press Next for the Dice before and after."
        )

    def _on_failed(self, message: str, _is_user_error: bool) -> None:
        self._drain()
        self.outcome = "failed"
        self.status_label.setStyleSheet(f"color: {BAD_COLOUR.name()};")
        self.status_label.setText(f"Training failed: {message}")
        self.fw().errors.append(message)

    def _on_cancelled(self) -> None:
        self._drain()
        self.outcome = "cancelled"
        self.plot.redraw()
        self.status_label.setStyleSheet("")
        where = f" at step {self.last_step}" if self.last_step else ""
        self.eta_label.setText("")
        self.status_label.setText(
            f"Stopped{where}; the checkpoint is saved. “Resume training” continues from it (also later: "
            "open this wizard again)."
        )

    def _on_done(self) -> None:
        if not qt_alive(self):
            return
        self._set_buttons()
        self.completeChanged.emit()
        self.fw().trainingEnded.emit(self.outcome)

    def _set_buttons(self) -> None:
        running = self.is_running()
        stopping = running and self.worker.cancel_requested
        self.pause_button.setEnabled(running and not stopping)
        self.pause_button.setText("Resume" if running and self.worker.token.paused else "Pause")
        self.stop_button.setEnabled(running and not stopping)
        self.resume_button.setVisible(not running and self.outcome in ("cancelled", "failed"))

    # -- QWizardPage
    def initializePage(self) -> None:
        wizard = self.fw()
        self.start(resume=wizard.resume)

    def cleanupPage(self) -> None:  # Back is disabled on this page; nothing to undo
        pass

    def isComplete(self) -> bool:
        return self.outcome == "finished" and self.result is not None


# ============================================================================================ 5. result
class ResultPage(_WizardPage):
    """Dice per class before and after on the held-out volumes; the model's name; register."""

    COLUMNS = ("Class", "Dice before", "Dice after", "Change")

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTitle("Result")
        self.setSubTitle(
            "Dice on the held-out volumes before and after fine-tuning. Finish registers the model: the "
            "Segment panel offers it at once."
        )
        self.setFinalPage(True)
        self._register_worker: JobWorker | None = None
        self.registered: Any = None

        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.note = QtWidgets.QLabel()
        self.note.setWordWrap(True)
        self.summary = QtWidgets.QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.name_edit = QtWidgets.QLineEdit()
        self.name_edit.setToolTip("Letters, digits, '.', '_' and '-'")
        self.name_edit.textChanged.connect(self._name_changed)
        self.default_check = QtWidgets.QCheckBox("Make it the default model")
        self.default_check.setToolTip("The model chosen first in the Segment panel and on the command line")
        self.name_problem = _error_label()
        form = QtWidgets.QFormLayout()
        form.addRow("Model name:", self.name_edit)
        form.addRow("", self.default_check)
        form.addRow("", self.name_problem)
        self.status = _error_label()

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note)
        layout.addWidget(self.summary)
        layout.addLayout(form)
        layout.addWidget(self.status)

    def dice_rows(self) -> dict[str, tuple[float | None, float | None]]:
        """class -> (Dice before, Dice after) of the run's held-out volumes."""
        from sd_fsmis.core.fine_tune import dice_before_after

        result = self.fw().training_result
        return dice_before_after(result) if result is not None else {}

    def initializePage(self) -> None:
        wizard = self.fw()
        rows = self.dice_rows()
        self.table.setRowCount(len(rows))
        for row, (name, (before, after)) in enumerate(rows.items()):
            change = ""
            colour = None
            if before is not None and after is not None and math.isfinite(before) and math.isfinite(after):
                delta = after - before
                change = f"{delta:+.3f}" if round(delta, 3) != 0 else "0.000"
                shown = round(delta, 3)
                colour = OK_COLOUR if shown > 0 else BAD_COLOUR if shown < 0 else None
            for col, text in enumerate((name, _fmt_dice(before), _fmt_dice(after), change)):
                item = QtWidgets.QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if col == 3 and colour is not None:
                    item.setForeground(colour)
                self.table.setItem(row, col, item)
        plan, result = wizard.plan, wizard.training_result
        held = len(plan.validation) if plan is not None else 0
        if not rows:
            self.note.setText(
                "No Dice to compare: no volume was held out for validation."
                if not held
                else "No Dice was measured on the held-out volumes."
            )
        else:
            self.note.setText(f"Mean Dice per class on {_plural(held, 'held-out volume')}.")
        if result is not None:
            folder = result.best_dir or result.model_dir
            self.summary.setText(
                f"{_plural(result.steps, 'step')} in {format_seconds(result.seconds) or '0 s'}; "
                f"the model is in {folder}."
            )
        if not self.name_edit.text() and plan is not None:
            self.name_edit.setText(model_name_from(Path(plan.out).name))
        self._name_changed()

    def name_problem_text(self) -> str:
        """Why the name cannot be used ("" when it can)."""
        from sd_fsmis.ui.create_model_dialog import new_model_name_problem

        return new_model_name_problem(self.name_edit.text().strip())

    def _name_changed(self, *_: object) -> None:
        self.name_problem.setText(self.name_problem_text() if self.registered is None else "")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        running = self._register_worker is not None and self._register_worker.is_running()
        return self.registered is not None or (not running and not self.name_problem_text())

    def register(self) -> bool:
        """Register the trained model under the chosen name (worker); the wizard closes when it is done."""
        result = self.fw().training_result
        if result is None or (self._register_worker is not None and self._register_worker.is_running()):
            return False
        folder = result.best_dir or result.model_dir
        name = self.name_edit.text().strip()
        self.status.setStyleSheet("")
        self.status.setText(f"Registering '{name}'…")
        worker = JobWorker(
            partial_job(register_job, str(folder), name, self.default_check.isChecked()),
            name="register model",
        )
        worker.finished.connect(self._registered)
        worker.failed.connect(self._register_failed)
        worker.done.connect(self.completeChanged.emit)
        self._register_worker = self._start(worker)
        self.completeChanged.emit()
        return True

    def _registered(self, info: Any) -> None:
        if not qt_alive(self):
            return
        self.registered = info
        self.status.setStyleSheet(f"color: {OK_COLOUR.name()};")
        self.status.setText(f"Registered '{info.name}'.")
        wizard = self.fw()
        wizard.model_names.add(info.name)
        wizard.registered_model(info.name)
        wizard.accept()

    def _register_failed(self, message: str, _is_user_error: bool) -> None:
        if qt_alive(self):
            self.status.setStyleSheet(f"color: {BAD_COLOUR.name()};")
            self.status.setText(message)
            self.fw().errors.append(message)

    def validatePage(self) -> bool:
        if self.registered is not None:
            return True
        self.register()
        return False
