"""The Segment panel: choose the engine, device and slices, press Segment, watch the progress, Cancel.

The segmentation is the core job :func:`~sd_fsmis.core.engines.segmentation.segment_volume` in a
:class:`~sd_fsmis.ui.workers.job_worker.JobWorker`: the inputs (support masks copied) are taken on the GUI
thread, the engine is loaded in the worker (an SD-FSMIS model imports torch inside core), and the result
becomes a prediction layer of the query study on the GUI thread (:meth:`Session.add_result`). The window
stays usable meanwhile; Cancel stops the job at its next slice or batch and leaves the study as it was.

Over 500 lines: one panel (engine, device, slices, run, progress, Cancel) whose parts share the job's state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.engines.registry import (
    BUILTIN_ENGINES,
    EngineChoice,
    available_engines,
    default_engine_name,
    is_builtin,
    load_engine,
)
from sd_fsmis.core.engines.segmentation import SegmentationOutcome, segment_volume
from sd_fsmis.core.errors import UserError
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.core.session.runs import Run
from sd_fsmis.core.session.state import SegmentationInputs, Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.session.support_choice import (
    SupportChoice,
    choose_supports,
    preferred_structure,
    structures,
)
from sd_fsmis.core.slice_numbering import SliceNumbering
from sd_fsmis.ui.workers.job_worker import JobWorker, error_box, format_seconds, qt_alive

log = logging.getLogger(__name__)

CLASSICAL = "classical"
#: the engine chosen before the model store was read (the built-in default)
BUILTIN_DEFAULT = BUILTIN_ENGINES[0]
DEVICES = (
    ("auto", "Automatic (GPU if present)"),
    ("cuda", "CUDA GPU"),
    ("mps", "Apple GPU (MPS)"),
    ("cpu", "CPU"),
)


@dataclass
class SegmentationJobResult:
    """What the worker hands back to the GUI thread."""

    outcome: SegmentationOutcome
    model: str
    device: str
    #: what the engine actually used (e.g. ``{"batch_size": 4, "dtype": "bfloat16"}``), for the run record
    used: dict


def run_segmentation(
    inputs: SegmentationInputs,
    engine_name: str,
    *,
    device: str = "auto",
    query_slices: list[int] | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> SegmentationJobResult:
    """The Segment button's job (runs in the worker thread): load the engine, segment the query."""
    classical = is_builtin(engine_name)
    progress(Progress(0, 0, "preparing" if classical else "loading the model"))
    engine = load_engine(engine_name, device=device, batch_size=batch_size or None)
    cancel.raise_if_cancelled()
    outcome = segment_volume(
        inputs.query,
        inputs.sources,
        engine,
        **inputs.job_options(),
        query_slices=query_slices,
        progress=progress,
        cancel=cancel,
    )
    info = outcome.result.info or {}
    device_text = str(info.get("device") or ("CPU" if classical else device))
    model = "" if classical else str(info.get("model") or engine.name)
    used = {key: info[key] for key in ("batch_size", "dtype") if key in info}
    return SegmentationJobResult(outcome=outcome, model=model, device=device_text, used=used)


def list_engines(*, progress: ProgressCallback, cancel: CancelToken) -> tuple[list[EngineChoice], str]:
    """The engines to offer and the default one (reads the model store: imports the model package)."""
    return available_engines(), default_engine_name()


def predicted_range_text(mask, numbering: SliceNumbering | None = None) -> str:
    """Where the structure was predicted, numbered like the viewer (``numbering``; None: index + 1):
    ``"Found on slices 8–19 (12 slices)."``."""
    found = [int(z) for z in mask.reshape(mask.shape[0], -1).any(axis=1).nonzero()[0]]
    if not found:
        return "Nothing was found."
    numbers = sorted(numbering.number(z) if numbering is not None else z + 1 for z in found)
    first, last = numbers[0], numbers[-1]
    where = f"slice {first}" if first == last else f"slices {first}–{last}"
    gaps = (last - first + 1) - len(found)
    extra = f", {gaps} without it" if gaps else ""
    return f"Found on {where} ({len(found)} slice{'s' if len(found) != 1 else ''}{extra})."


def progress_text(progress: Progress, unit: str = "slices") -> str:
    """``"12/40 slices, 3 s left"`` (``"12/40 slices"`` before an estimate exists)."""
    if progress.total <= 0:
        return (progress.message or "working").capitalize() + "…"
    text = f"{progress.done}/{progress.total} {unit}"
    eta = progress.eta_s
    if eta is not None and progress.done < progress.total:
        text += f", {format_seconds(eta)} left"
    return text


class SegmentPanel(QtWidgets.QWidget):
    """Engine, device, slices, label and K; Segment / Cancel; progress with time left.

    Signals: ``runStarted()``, ``runFinished(Run)`` (done, cancelled or failed), ``modelsListed()`` when
    the model chooser was filled from the model store.
    """

    runStarted = Signal()
    runFinished = Signal(object)
    modelsListed = Signal()

    def __init__(self, session: Session, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.worker: JobWorker | None = None
        self._list_worker: JobWorker | None = None
        self._list_again = False
        self._select_after_listing = ""
        self._inputs: SegmentationInputs | None = None
        self._run: Run | None = None
        self._model_dialog = None
        #: the last message shown in an error box (for the status line and tests)
        self.last_error: str = ""
        #: what the status line says when nothing runs (the last run's outcome)
        self._idle_status = ""
        #: the study the last run's message and "Done" bar are about (they are cleared for another study)
        self._status_study_id: str | None = None
        #: the structure to show next: the one just added as a support, or preferred for the study shown
        self._follow: str | None = None
        self._build()
        self._connect_session()
        builtin = [c for c in available_engines() if c.kind == "classical"]
        self._fill_engines(builtin, BUILTIN_DEFAULT)
        self._update_state()
        self.refresh_models()

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.study_label = QtWidgets.QLabel()
        self.study_label.setWordWrap(True)

        self.engine_combo = QtWidgets.QComboBox()
        self.engine_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.engine_combo.setMinimumContentsLength(22)
        self.engine_combo.setToolTip(
            "The segmentation engine: a stored SD-FSMIS model, or a built-in one that needs no model"
        )
        self.engine_combo.currentIndexChanged.connect(self._engine_changed)
        self.model_help = QtWidgets.QLabel('<a href="#models">Manage models… (how do I get one?)</a>')
        self.model_help.setTextFormat(Qt.TextFormat.RichText)
        self.model_help.setToolTip("Create, import, rename or delete models, and choose the default one")
        self.model_help.linkActivated.connect(lambda _link: self.open_model_dialog())

        self.device_combo = QtWidgets.QComboBox()
        for name, text in DEVICES:
            self.device_combo.addItem(text, name)
        self.device_combo.setToolTip("Where the model runs (the built-in engines always use the CPU)")

        self.batch_spin = QtWidgets.QSpinBox()
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText("automatic")
        self.batch_spin.setSuffix(" slices")
        self.batch_spin.setToolTip(
            "Query slices processed together on the GPU. Automatic fits the free memory; choose fewer if the "
            "GPU runs out of memory."
        )

        self.label_combo = QtWidgets.QComboBox()
        self.label_combo.setToolTip("The structure to segment (the label of the support examples)")
        self.label_combo.setPlaceholderText("from the support examples")
        self.label_combo.currentIndexChanged.connect(lambda _i: self._update_state())
        self.k_label = QtWidgets.QLabel()
        self.other_check = QtWidgets.QCheckBox()
        self.other_check.setToolTip(
            "Also use the supports of this structure painted on other studies (other patients' anatomy)"
        )
        self.other_check.setVisible(False)
        self.other_check.toggled.connect(lambda _on: self._update_state())

        self.whole_check = QtWidgets.QCheckBox("Whole volume")
        self.whole_check.setChecked(True)
        self.whole_check.toggled.connect(self._range_toggled)
        self.from_spin = QtWidgets.QSpinBox()
        self.to_spin = QtWidgets.QSpinBox()
        for spin, tip in (
            (self.from_spin, "First slice to segment"),
            (self.to_spin, "Last slice to segment"),
        ):
            spin.setRange(1, 1)
            spin.setToolTip(tip)
            spin.setEnabled(False)
        self.from_spin.valueChanged.connect(lambda v: self.to_spin.setValue(max(v, self.to_spin.value())))
        self.to_spin.valueChanged.connect(lambda v: self.from_spin.setValue(min(v, self.from_spin.value())))
        range_row = QtWidgets.QHBoxLayout()
        range_row.setContentsMargins(0, 0, 0, 0)
        range_row.addWidget(self.whole_check)
        range_row.addStretch(1)
        range_row.addWidget(QtWidgets.QLabel("from"))
        range_row.addWidget(self.from_spin)
        range_row.addWidget(QtWidgets.QLabel("to"))
        range_row.addWidget(self.to_spin)

        form = QtWidgets.QFormLayout()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Study:", self.study_label)
        form.addRow("Model:", self.engine_combo)
        form.addRow("", self.model_help)
        form.addRow("Device:", self.device_combo)
        form.addRow("Batch:", self.batch_spin)
        form.addRow("Structure:", self.label_combo)
        form.addRow("Supports:", self.k_label)
        form.addRow("", self.other_check)
        form.addRow("Slices:", range_row)

        #: what Segment will do, said before it runs ("right kidney, 1 support from this study, propagation")
        self.plan_label = QtWidgets.QLabel()
        self.plan_label.setWordWrap(True)
        self.plan_label.setTextFormat(Qt.TextFormat.PlainText)
        self.segment_button = QtWidgets.QPushButton("Segment")
        self.segment_button.setDefault(True)
        self.segment_button.clicked.connect(self.segment)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the segmentation at the next slice; the study stays as it was")
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.segment_button, 2)
        buttons.addWidget(self.cancel_button, 1)

        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("")
        self.progress_bar.setVisible(False)  # shown from the first run on
        self.status_label = QtWidgets.QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.plan_label)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    # -------------------------------------------------------------------------------- session events
    def _connect_session(self) -> None:
        events = self.session.events
        events.active_study.connect(self._on_active_study)
        events.study_added.connect(self._on_session_event)
        events.study_removed.connect(self._on_session_event)
        self.session.support_set.events.added.connect(self._on_support_added)
        self.session.support_set.events.any.connect(self._on_session_event)

    def _disconnect_session(self) -> None:
        events = self.session.events
        events.active_study.disconnect(self._on_active_study)
        for signal in (events.study_added, events.study_removed):
            signal.disconnect(self._on_session_event)
        self.session.support_set.events.added.disconnect(self._on_support_added)
        self.session.support_set.events.any.disconnect(self._on_session_event)

    def _on_session_event(self, *_args: object) -> None:
        if qt_alive(self):
            self._update_state()

    def _on_support_added(self, entry: object) -> None:
        """The structure follows what was just added as a support (the support set's ``any`` updates)."""
        self._follow = getattr(entry, "label_name", None)

    def _on_active_study(self, study: Study | None) -> None:
        """Another study is shown: offer a structure painted on it, if the current one is not."""
        if not qt_alive(self):
            return
        self.other_check.setChecked(False)
        current = self.label_name
        if study is not None:
            self._follow = preferred_structure(self.session.support_set, study.id, current)
        self._update_state()

    # ------------------------------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        """Re-read the model store in a worker (it imports the model package) and refill the chooser."""
        if self._list_worker is not None and self._list_worker.is_running():
            self._list_again = True
            return
        if self._list_worker is not None:
            self._list_worker.deleteLater()
        worker = JobWorker(list_engines, name="list models", parent=self)
        worker.finished.connect(self._models_listed)
        worker.failed.connect(self._models_list_failed)
        self._list_worker = worker
        worker.start()

    def models_loading(self) -> bool:
        """True while the model store is being read."""
        return self._list_worker is not None and self._list_worker.is_running()

    def _models_listed(self, result: tuple[list[EngineChoice], str]) -> None:
        choices, default = result
        self._fill_engines(choices, default)
        self._list_finished()

    def _models_list_failed(self, message: str, _is_user_error: bool) -> None:
        log.warning("could not list the models: %s", message)
        self._list_finished()

    def _list_finished(self) -> None:
        if self._list_again:
            self._list_again = False
            QtCore.QTimer.singleShot(0, self.refresh_models)
            return
        if self._select_after_listing:
            self.select_engine(self._select_after_listing)
            self._select_after_listing = ""
        self.modelsListed.emit()

    def _fill_engines(self, choices: list[EngineChoice], default: str) -> None:
        current = self.engine_combo.currentData()
        keep = current if current and not is_builtin(current) else None
        self.engine_combo.blockSignals(True)
        self.engine_combo.clear()
        classical = [c for c in choices if c.kind == "classical"]
        for choice in classical + [c for c in choices if c.kind != "classical"]:
            self.engine_combo.addItem(choice.label, choice.name)
            tip = choice.label + (f"\n{choice.path}" if choice.path else "")
            self.engine_combo.setItemData(self.engine_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        index = self.engine_combo.findData(keep) if keep else -1
        if index < 0:  # nothing chosen yet, or the chosen model was deleted: the default
            index = self.engine_combo.findData(default or BUILTIN_DEFAULT)
        self.engine_combo.setCurrentIndex(max(0, index))
        self.engine_combo.blockSignals(False)
        self._engine_changed()

    def select_engine(self, name: str) -> bool:
        """Choose the engine ``name`` (a built-in one or a model's name); False when it is not offered."""
        index = self.engine_combo.findData(name)
        if index < 0:
            return False
        self.engine_combo.setCurrentIndex(index)
        return True

    @property
    def engine_name(self) -> str:
        return str(self.engine_combo.currentData() or BUILTIN_DEFAULT)

    def show_machine_device(self, text: str) -> None:
        """Say in the device chooser what "Automatic" means on this machine (the status bar's probe)."""
        cpu = text in ("CPU only", "CPU")
        index = self.device_combo.findData("auto")
        if index >= 0:
            label = "Automatic (CPU only: no GPU found)" if cpu else f"Automatic ({text})"
            self.device_combo.setItemText(index, label)
        self.device_combo.setToolTip(
            "Where the model runs (the built-in engines always use the CPU). "
            + (
                "No GPU was found: SD-FSMIS models run on the CPU, much more slowly (see the status bar)."
                if cpu
                else f"This machine's GPU: {text}."
            )
        )

    def _engine_changed(self, *_args: object) -> None:
        is_model = not is_builtin(self.engine_name)
        self.device_combo.setEnabled(is_model and not self.is_running())
        self.batch_spin.setEnabled(is_model and not self.is_running())
        self._update_state()

    def open_model_dialog(self) -> QtWidgets.QDialog:
        """Show the model manager (create, import, rename, delete models; choose the default one)."""
        from sd_fsmis.ui.dialogs.model_manager import ModelManagerDialog

        if self._model_dialog is None or not qt_alive(self._model_dialog):
            dialog = ModelManagerDialog(self)
            dialog.modelsChanged.connect(self.refresh_models)
            dialog.modelCreated.connect(self._model_created)
            dialog.defaultChanged.connect(self._model_created)
            dialog.modelRenamed.connect(self._model_renamed)
            self._model_dialog = dialog
        else:
            self._model_dialog.refresh()
        self._model_dialog.show()
        self._model_dialog.raise_()
        self._model_dialog.activateWindow()
        return self._model_dialog

    def _model_created(self, name: str) -> None:
        """Choose the model ``name`` (new, or made the default) once the chooser was refilled."""
        self._select_after_listing = name
        self.refresh_models()

    def _model_renamed(self, old: str, new: str) -> None:
        if self.engine_name == old:
            self._select_after_listing = new
        self.refresh_models()

    # ------------------------------------------------------------------------------------------ state
    @property
    def query_study(self) -> Study | None:
        """The study to segment: the active one."""
        return self.session.active_study

    @property
    def label_name(self) -> str | None:
        text = self.label_combo.currentText()
        return text or None

    @property
    def device(self) -> str:
        return str(self.device_combo.currentData() or "auto")

    def set_device(self, name: str) -> None:
        index = self.device_combo.findData(name)
        if index >= 0:
            self.device_combo.setCurrentIndex(index)

    def _numbering(self) -> SliceNumbering | None:
        study = self.query_study
        return study.volume.slice_numbering() if study is not None else None

    def set_slice_range(self, first: int | None, last: int | None = None) -> None:
        """Segment slices ``first..last`` (array indices, inclusive), or the whole volume when ``first`` is
        None. The spin boxes show them numbered as the viewer does."""
        if first is None:
            self.whole_check.setChecked(True)
            return
        self.whole_check.setChecked(False)
        last = first if last is None else last
        numbering = self._numbering()
        numbers = [numbering.number(z) if numbering is not None else int(z) + 1 for z in (first, last)]
        self.to_spin.setValue(max(numbers))
        self.from_spin.setValue(min(numbers))

    def query_slices(self) -> list[int] | None:
        """The slices to segment (array indices, ascending), None for the whole volume."""
        if self.whole_check.isChecked():
            return None
        numbering = self._numbering()
        if numbering is None:
            return list(range(self.from_spin.value() - 1, self.to_spin.value()))
        return numbering.indices(self.from_spin.value(), self.to_spin.value())

    def _range_toggled(self, whole: bool) -> None:
        running = self.is_running()
        self.from_spin.setEnabled(not whole and not running)
        self.to_spin.setEnabled(not whole and not running)

    def is_running(self) -> bool:
        """True while a segmentation runs (the main window asks before closing)."""
        return self.worker is not None and self.worker.is_running()

    def _update_state(self) -> None:
        study = self.query_study
        self.study_label.setText(study.name if study is not None else "<i>no study open</i>")
        if study is not None:
            z = study.volume.shape[0]
            for spin in (self.from_spin, self.to_spin):
                spin.setMaximum(z)
            if self.whole_check.isChecked():
                self.from_spin.setValue(1)
                self.to_spin.setValue(z)
        # the structures of the support set; the one shown follows what was painted last
        names = structures(self.session.support_set)
        current = self.label_combo.currentText()
        wanted, self._follow = self._follow, None
        if wanted is None and current not in names and study is not None:
            wanted = preferred_structure(self.session.support_set, study.id, None)
        chosen = wanted if wanted in names else (current if current in names else (names[0] if names else ""))
        items = [self.label_combo.itemText(i) for i in range(self.label_combo.count())]
        if items != names or chosen != current:
            self.label_combo.blockSignals(True)
            if items != names:
                self.label_combo.clear()
                self.label_combo.addItems(names)
            if chosen:  # with a placeholder, Qt leaves the index at -1 after addItems
                self.label_combo.setCurrentText(chosen)
            self.label_combo.blockSignals(False)
        self.label_combo.setEnabled(len(names) > 1 and not self.is_running())
        choice = self.support_choice()
        self._show_choice(choice)
        reason = self.segment_disabled_reason()
        self.segment_button.setEnabled(reason == "")
        self.segment_button.setToolTip(reason or "Segment the structure on the whole study in the background")
        self.plan_label.setVisible(choice is not None and not reason)
        if not self.is_running():
            study = self.session.active_study
            if self._status_study_id is not None and (study is None or study.id != self._status_study_id):
                self._idle_status, self._status_study_id = "", None  # about another study: stale here
                self.progress_bar.setRange(0, 1)
                self.progress_bar.setValue(0)
                self.progress_bar.setFormat("")
            self.status_label.setText(reason if reason else self._idle_status)

    def support_choice(self) -> SupportChoice | None:
        """The supports Segment would use on the active study (this study's first); None without any."""
        study, name = self.query_study, self.label_name
        if study is None or not name or len(self.session.support_set) == 0:
            return None
        return choose_supports(
            self.session.support_set,
            study.id,
            name,
            self.session.studies_by_id(),
            other_studies=self.other_check.isChecked(),
        )

    def plan_text(self) -> str:
        """What Segment will do: ``"right kidney, 1 support from this study, propagation"`` ("" when it
        cannot run)."""
        choice = self.support_choice()
        return choice.statement(self.engine_name) if choice is not None and choice.entries else ""

    def _show_choice(self, choice: SupportChoice | None) -> None:
        if choice is None:
            self.k_label.setText("none yet")
            self.other_check.setVisible(False)
            self.plan_label.setText("")
            return
        k = choice.k
        self.k_label.setText(f"K = {k} ({k}-shot) {choice.origin()}" if k else "K = 0")
        if choice.here and (choice.left_out or self.other_check.isChecked()):
            n = choice.left_out or choice.elsewhere
            self.other_check.setText(f"Also use the {n} from other studies")
            self.other_check.setVisible(True)
        else:
            self.other_check.setVisible(False)
        self.plan_label.setText(f"Will segment: {choice.statement(self.engine_name)}")

    def segment_disabled_reason(self) -> str:
        """Why Segment cannot be pressed now ("" when it can)."""
        if self.is_running():
            return "A segmentation is running: wait for it or cancel it"
        if self.query_study is None:
            return "Open a study first"
        if len(self.session.support_set) == 0:
            return "Paint the structure on a slice, then add that slice as a support example"
        return ""

    # ------------------------------------------------------------------------------------------- run
    def segment(self) -> bool:
        """Start segmenting the active study from the support set; False when it could not start."""
        if self.is_running():
            return False
        study = self.query_study
        reason = self.segment_disabled_reason()
        if reason or study is None:
            self._show_error("Cannot segment", reason or "Open a study first")
            return False
        choice = self.support_choice()
        if choice is None or not choice.entries:
            self._show_error("Cannot segment", f"No support example shows {self.label_name or 'a structure'}")
            return False
        if choice.from_other_studies and not self._confirm_other_studies(choice):
            return False
        try:
            inputs = self.session.segmentation_inputs(study, choice.label_name, entries=choice.entries)
        except UserError as exc:
            self._show_error("Cannot segment", str(exc))
            return False
        engine = self.engine_name
        is_model = not is_builtin(engine)
        device = self.device if is_model else "cpu"
        batch = self.batch_spin.value() or None
        slices = self.query_slices()
        settings = {
            "device": device,
            "slices": "all" if slices is None else f"{self.from_spin.value()}-{self.to_spin.value()}",
        }
        if is_model:
            settings["batch_size"] = batch or "auto"
        run = self.session.begin_run(
            inputs,
            engine="sd-fsmis" if is_model else engine,
            model=engine if is_model else "",
            device=device,
            settings=settings,
        )
        self._inputs, self._run = inputs, run
        job = partial(run_segmentation, inputs, engine, device=device, query_slices=slices)
        if not is_model:
            job = partial(job, batch_size=None)
        worker = JobWorker(
            job,
            name=f"segmentation ({engine})",
            retry_on_oom=is_model,
            batch_size=batch,
            parent=self,
        )
        worker.progress.connect(self._on_progress)
        worker.retrying.connect(self._on_retrying)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        if self.worker is not None and not self.worker.is_running():
            self.worker.deleteLater()
        self.worker = worker
        worker.start()
        self._set_running(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat("Starting…")
        self.progress_bar.setVisible(True)
        self.status_label.setText(f"Segmenting {inputs.label_name} on {study.name} ({inputs.k}-shot)…")
        self.runStarted.emit()
        return True

    def _confirm_other_studies(self, choice: SupportChoice) -> bool:
        """Ask before segmenting from supports painted on another study (possibly another patient)."""
        study = self.query_study
        kind = "patients" if choice.other_patient else "studies"
        text = (
            f"Segment {choice.label_name} on {study.name if study is not None else 'this study'} "
            f"from {choice.where()}?\n\nThe engine will look for the structure as it was painted on other "
            f"{kind}. To use this study's own anatomy, paint {choice.label_name} on a slice here and press S."
        )
        answer = QtWidgets.QMessageBox.question(
            self, "Supports from another study", text, defaultButton=QtWidgets.QMessageBox.StandardButton.No
        )
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def cancel(self) -> None:
        """Stop the running segmentation at its next slice or batch (nothing is added to the study)."""
        if self.worker is not None and self.worker.is_running():
            self.worker.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_bar.setFormat("Cancelling…")
            self.status_label.setText("Cancelling…")

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel and join the background jobs (the main window's close); True when all have stopped."""
        ok = True
        for worker in (self.worker, self._list_worker):
            if worker is not None:
                ok = worker.shutdown(timeout_ms) and ok
        if self._model_dialog is not None and qt_alive(self._model_dialog):
            ok = self._model_dialog.shutdown(timeout_ms) and ok
        return ok

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def _set_running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)
        for widget in (self.engine_combo, self.model_help):
            widget.setEnabled(not running)
        self._engine_changed()
        self._range_toggled(self.whole_check.isChecked())
        self._update_state()

    def _on_progress(self, progress: Progress) -> None:
        if self.worker is None or self.worker.cancel_requested:
            return
        if progress.total <= 0:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, progress.total)
            self.progress_bar.setValue(progress.done)
        self.progress_bar.setFormat(progress_text(progress))

    def _on_retrying(self, message: str) -> None:
        self.status_label.setText(message + "…")

    def _on_finished(self, result: SegmentationJobResult) -> None:
        inputs, run = self._inputs, self._run
        self._inputs = self._run = None
        if inputs is None or run is None:
            return
        if self.worker is not None and self.worker.cancel_requested:
            # Cancel was pressed after the last check of the job: the user asked for nothing to change.
            self._end_cancelled(run)
            return
        outcome = result.outcome
        try:
            used = {f"{key}_used": value for key, value in result.used.items()}
            layer, run = self.session.add_result(
                inputs, outcome, run=run, model=result.model, device=result.device, settings=used
            )
        except (KeyError, ValueError) as exc:  # the study was closed during the run
            log.warning("segmentation result not added: %s", exc)
            run = self.session.fail_run(run, message="the study was closed before the segmentation finished")
            self._finish_ui("The study was closed before the segmentation finished.", 0)
            self.runFinished.emit(run)
            return
        slices = len(outcome.query_slices)
        text = (
            f"{inputs.label_name}: {slices} slice{'s' if slices != 1 else ''} in "
            f"{format_seconds(outcome.seconds)} ({outcome.engine}, {outcome.shots}-shot). "
            f"{predicted_range_text(outcome.mask, inputs.query.slice_numbering())} "
            f"Added the layer “{layer.name}”."
        )
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self._finish_ui(text, None, bar_text=f"Done in {format_seconds(outcome.seconds)}")
        self.runFinished.emit(run)

    def _on_failed(self, message: str, is_user_error: bool) -> None:
        run = self._run
        self._inputs = self._run = None
        if run is not None:
            run = self.session.fail_run(run, message=message)
        self._finish_ui(f"Failed: {message}", 0, bar_text="Failed")
        self._show_error("Segmentation failed", message)
        if run is not None:
            self.runFinished.emit(run)

    def _on_cancelled(self) -> None:
        run = self._run
        self._inputs = self._run = None
        if run is not None:
            self._end_cancelled(run)

    def _end_cancelled(self, run: Run) -> None:
        run = self.session.fail_run(run, cancelled=True, message="cancelled by the user")
        self._finish_ui("Cancelled: the study is unchanged.", 0, bar_text="Cancelled")
        self.runFinished.emit(run)

    def _finish_ui(self, status: str, bar_value: int | None, bar_text: str = "") -> None:
        if bar_value is not None:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(bar_value)
        self.progress_bar.setFormat(bar_text)
        self._idle_status = status
        study = self.session.active_study
        self._status_study_id = study.id if study is not None else None
        self._set_running(False)
        self.status_label.setText(status)

    def _show_error(self, title: str, message: str) -> None:
        self.last_error = message
        error_box(self, title, message)
