"""The fine-tune wizard's last page: Dice per class before and after on the held-out volumes; registering
the model in the store.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.ui.fine_tune.common import (
    BAD_COLOUR,
    OK_COLOUR,
    WizardPage,
    error_label,
    format_dice,
    model_name_from,
    partial_job,
    plural,
    register_job,
)
from sd_fsmis.ui.workers.job_worker import JobWorker, format_seconds, qt_alive


# ============================================================================================ 5. result
class ResultPage(WizardPage):
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
        self.name_problem = error_label()
        form = QtWidgets.QFormLayout()
        form.addRow("Model name:", self.name_edit)
        form.addRow("", self.default_check)
        form.addRow("", self.name_problem)
        self.status = error_label()

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note)
        layout.addWidget(self.summary)
        layout.addLayout(form)
        layout.addWidget(self.status)

    def dice_rows(self) -> dict[str, tuple[float | None, float | None]]:
        """class -> (Dice before, Dice after) of the run's held-out volumes."""
        from sd_fsmis.core.training.fine_tune import dice_before_after

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
            for col, text in enumerate((name, format_dice(before), format_dice(after), change)):
                item = QtWidgets.QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if col == 3 and colour is not None:
                    item.setForeground(colour)
                self.table.setItem(row, col, item)
        plan, result = wizard.plan, wizard.training_result
        held = len(plan.validation) if plan is not None else 0
        scored = len(plan.labelled_validation) if plan is not None else 0
        if not rows:
            heldout = result.heldout_losses if result is not None else {}
            losses = list(heldout.items())
            loss_text = (
                f" Held-out episode loss: {losses[0][1]:.4f} at step {losses[0][0]}, "
                f"{losses[-1][1]:.4f} at step {losses[-1][0]}."
                if len(losses) >= 2
                else ""
            )
            self.note.setText(
                "No Dice to compare: no volume was held out for validation."
                if not held
                else "No Dice can be measured: no held-out volume has a label map." + loss_text
                if not scored
                else "No Dice was measured on the held-out volumes."
            )
        else:
            self.note.setText(f"Mean Dice per class on {plural(scored, 'held-out volume')}.")
        if result is not None:
            folder = result.best_dir or result.model_dir
            self.summary.setText(
                f"{plural(result.steps, 'step')} in {format_seconds(result.seconds) or '0 s'}; "
                f"the model is in {folder}."
            )
        if not self.name_edit.text() and plan is not None:
            self.name_edit.setText(model_name_from(Path(plan.out).name))
        self._name_changed()

    def name_problem_text(self) -> str:
        """Why the name cannot be used ("" when it can)."""
        from sd_fsmis.ui.dialogs.model_jobs import new_model_name_problem

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
