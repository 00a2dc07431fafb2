"""The fine-tune wizard's training page: the job with a live loss curve, Pause/Resume, Stop (at a step
boundary, with a checkpoint) and Resume.
"""

from __future__ import annotations

from typing import Any

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.jobs import Progress
from sd_fsmis.ui.fine_tune.common import (
    BAD_COLOUR,
    OK_COLOUR,
    TrainingFeed,
    WizardPage,
    format_dice,
    partial_job,
    plural,
    run_fine_tune,
)
from sd_fsmis.ui.fine_tune.loss_plot import LossPlot
from sd_fsmis.ui.workers.job_worker import JobWorker, format_seconds, qt_alive


# ========================================================================================== 4. training
class TrainingPage(WizardPage):
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
        self.plot.set_dice_visible(plan.measures_dice)
        if not resume:
            self.plot.clear()
            self.last_step = 0
            self.checkpoint_label.setText("—")
            self.validation_label.setText(
                "—"
                if plan.measures_dice
                else "— (no volume held out)"
                if not plan.validation
                else "no Dice can be measured: no held-out volume has a label map"
            )
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
            if validation.get("heldout_loss") is not None:
                self.plot.add_heldout(step, validation["heldout_loss"])
                if not self.fw().plan.measures_dice:
                    self.validation_label.setText(
                        f"no Dice can be measured (no held-out volume has a label map); held-out episode "
                        f"loss {validation['heldout_loss']:.4f} at step {step}"
                    )
            if validation.get("dice") is not None:
                self.plot.add_validation(step, validation["dice"])
                self._show_validation(step, validation)
            if item.get("checkpoint"):
                self.last_checkpoint = str(item["checkpoint"])
                self.checkpoint_label.setText(f"step {step}: {self.last_checkpoint}")

    def _show_validation(self, step: int, validation: dict) -> None:
        text = f"Dice {format_dice(validation.get('dice'))} at step {step}"
        classes = validation.get("class_dice") or {}
        if classes:
            text += " (" + ", ".join(f"{k} {format_dice(v)}" for k, v in classes.items()) + ")"
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
            f"Finished: {plural(steps, 'step')}"
            + (f" (resumed from step {resumed})" if resumed else "")
            + (
                ". Press Next for the Dice before and after."
                if self.fw().plan is None or self.fw().plan.measures_dice
                else ". Press Next to name and register the model."
            )
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
