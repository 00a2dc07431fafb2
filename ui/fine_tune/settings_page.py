"""The fine-tune wizard's settings page: steps, learning rates, accumulation, LoRA, precision, device, the
run folder, and the memory/time estimate on this machine (recomputed in a worker after a short pause).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.ui.fine_tune.common import (
    BAD_COLOUR,
    DEVICES,
    ESTIMATE_DEBOUNCE_MS,
    PRECISIONS,
    WizardPage,
    calibrate_job,
    error_label,
    estimate_job,
    format_gib,
    partial_job,
    plural,
)
from sd_fsmis.ui.workers.job_worker import JobWorker, qt_alive


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


class SettingsPage(WizardPage):
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
        #: the estimate as shown: calibrated with the last measurement when there is one
        self.shown_estimate: Any = None
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
        self.estimate_time.setWordWrap(True)
        self.measure_button = QtWidgets.QPushButton("Measure a few steps")
        self.measure_button.setToolTip(
            "Run 4 real training steps on the chosen device (1 warm-up, 3 timed) with these data and "
            "settings, to measure the time per step (and the memory, on a GPU); nothing is saved"
        )
        self.measure_button.clicked.connect(self.measure)
        self.measure_status = QtWidgets.QLabel("")
        measure_row = QtWidgets.QHBoxLayout()
        measure_row.addWidget(self.measure_button)
        measure_row.addWidget(self.measure_status, 1)
        #: the last measurement of real steps for the current settings (None: not measured, or stale)
        self.calibration: Any = None
        self._measure_worker: JobWorker | None = None
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
        box.addRow(measure_row)
        box.addRow(self.estimate_warning)
        box.addRow(suggestion_row)

        self.error = error_label()
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
        """Any setting changed: recompute the estimate after a short pause (a measurement is stale)."""
        self.error.setText("")
        if self.calibration is not None:
            self.calibration = None
            self.measure_status.setText("settings changed: measure again")
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

    # -- measuring real steps
    def measuring(self) -> bool:
        return self._measure_worker is not None and self._measure_worker.is_running()

    def measure(self) -> bool:
        """Time a few real training steps of the current plan on its device, in a worker."""
        from sd_fsmis.core.errors import UserError

        if self.measuring():
            return False
        try:
            plan = self.fw().build_plan()
        except UserError as exc:
            self.measure_status.setText(f"cannot measure: {exc}")
            return False
        self.measure_status.setText("loading the model and timing 4 steps…")
        self.measure_button.setEnabled(False)
        worker = JobWorker(partial_job(calibrate_job, plan), name="measure training steps")
        worker.progress.connect(lambda p: self.measure_status.setText(p.message))
        worker.finished.connect(self._measured)
        worker.failed.connect(self._measure_failed)
        worker.done.connect(lambda: self.measure_button.setEnabled(True) if qt_alive(self) else None)
        self._measure_worker = self._start(worker)
        return True

    def _measured(self, calibration: Any) -> None:
        if not qt_alive(self):
            return
        self.calibration = calibration
        self.measure_status.setText(
            f"{calibration.seconds_per_step:.2f} s per step over {calibration.timed_steps} timed steps "
            f"({calibration.fastest_s:.2f} to {calibration.slowest_s:.2f} s)"
        )
        if self.estimate is not None:
            self._estimated(self.estimate)

    def _measure_failed(self, message: str, _is_user_error: bool) -> None:
        if qt_alive(self):
            self.calibration = None
            self.measure_status.setText(f"could not measure: {message}")

    def _estimated(self, estimate: Any) -> None:
        if not qt_alive(self):
            return
        self.estimate, self.estimate_error = estimate, ""
        if self.calibration is not None and not getattr(estimate, "calibrated", False):
            estimate = self.calibration.apply(estimate)
        self.shown_estimate = estimate
        self.estimate_device.setText(str(estimate.device))
        peak, available = estimate.peak_memory_bytes, estimate.available_memory_bytes
        if available:
            fraction = min(1.0, peak / available) if peak else 0.0
            self.memory_bar.setValue(round(1000 * fraction))
            self.memory_bar.setFormat(f"{format_gib(peak)} of {format_gib(available)}")
        else:
            self.memory_bar.setValue(0)
            self.memory_bar.setFormat(f"{format_gib(peak)} (memory of this device unknown)")
        colour = "rgb(0, 150, 70)" if estimate.fits else "rgb(200, 30, 30)"
        self.memory_bar.setStyleSheet(f"QProgressBar::chunk {{ background-color: {colour}; }}")
        self.estimate_time.setText(estimate.time_text())
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
        if self.measuring():
            self._measure_worker.shutdown()

    # -- QWizardPage
    def initializePage(self) -> None:
        if not self._out_edited:
            self.out_edit.setText(str(self.fw().default_out()))
        self.error.setText("")
        data = self.fw().data_page
        train, held = len(data.training_entries()), len(data.validation_entries())
        names = ", ".join(data.class_name(v) for v in data.chosen_classes())
        note = f"Training on {names} in {plural(train, 'volume')}; {held} held out for validation."
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
        from sd_fsmis.core.training.fine_tune import PLAN_FILE

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
