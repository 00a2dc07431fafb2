"""The fine-tune wizard's first page: the base model (existing or new), and the offer to resume an
interrupted run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.ui.fine_tune.common import (
    PAGE_DATA,
    PAGE_TRAINING,
    WizardPage,
    list_base_models,
    plural,
    standard_icon,
)
from sd_fsmis.ui.workers.job_worker import JobWorker, qt_alive

if TYPE_CHECKING:
    from sd_fsmis.core.training.fine_tune import InterruptedRun


# ======================================================================================= 1. base model
class BaseModelPage(WizardPage):
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
        icon.setPixmap(standard_icon("SP_MessageBoxInformation").pixmap(24, 24))
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
        from sd_fsmis.ui.dialogs.create_model import CreateModelDialog

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
        more = f" ({plural(len(runs) - 1, 'other interrupted run')} too)" if len(runs) > 1 else ""
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
