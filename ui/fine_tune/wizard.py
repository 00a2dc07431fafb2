"""Fine-tune on my data: a wizard from annotated volumes to a registered model, without a terminal.

Base model → data (checked pairs, classes, held-out volumes) → settings (with a memory and time estimate)
→ training (live loss curve, Pause/Resume, Stop with a checkpoint, Resume) → result (Dice before/after on
the held-out volumes, register the model under a name, make it the default). The pages live in
the ``sd_fsmis.ui.fine_tune_*_page`` modules; every long step is a core job in a worker thread.

When the wizard opens it looks for runs that stopped before their last step (a crash, the application
closed while training) and offers to resume the newest from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6 import QtWidgets
from PySide6.QtCore import Signal

from sd_fsmis.ui.fine_tune.common import (
    PAGE_DATA,
    PAGE_MODEL,
    PAGE_RESULT,
    PAGE_SETTINGS,
    PAGE_TRAINING,
    find_interrupted,
)
from sd_fsmis.ui.fine_tune.data_page import DataPage
from sd_fsmis.ui.fine_tune.model_page import BaseModelPage
from sd_fsmis.ui.fine_tune.result_page import ResultPage
from sd_fsmis.ui.fine_tune.settings_page import SettingsPage
from sd_fsmis.ui.fine_tune.training_page import TrainingPage
from sd_fsmis.ui.settings import AppSettings
from sd_fsmis.ui.window.mask_files import wait_cursor
from sd_fsmis.ui.workers.job_worker import JobWorker, qt_alive

if TYPE_CHECKING:
    from sd_fsmis.core.session.state import Session
    from sd_fsmis.core.training.fine_tune import FineTunePlan, InterruptedRun

log = logging.getLogger(__name__)


class FineTuneWizard(QtWidgets.QWizard):
    """The fine-tune wizard on the studies of ``session`` (optional: files and folders work without one).

    Signals: ``modelRegistered(name)`` once the trained model is in the store; ``modelsChanged()`` when a
    base model was created from the wizard; ``trainingStarted()`` and ``trainingEnded(outcome)``
    ("finished", "cancelled", "failed"). ``confirm(title, text) -> bool`` asks a yes/no question; tests
    replace it. ``check_interrupted=False`` skips the search for interrupted runs.
    """

    modelRegistered = Signal(str)
    modelsChanged = Signal()
    trainingStarted = Signal()
    trainingEnded = Signal(str)

    def __init__(
        self,
        session: Session | None = None,
        parent: QtWidgets.QWidget | None = None,
        *,
        check_interrupted: bool = True,
        settings: AppSettings | None = None,
        save_settings: bool = True,
    ) -> None:
        super().__init__(parent)
        self.session = session
        #: the application's settings: the data list is remembered there (None: not remembered)
        self.settings = settings
        self._save_settings = save_settings
        self.setWindowTitle("Fine-tune on my data")
        self.setWizardStyle(QtWidgets.QWizard.WizardStyle.ClassicStyle)
        self.setOption(QtWidgets.QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.setOption(QtWidgets.QWizard.WizardOption.HaveHelpButton, False)
        self.resize(1000, 720)
        self.confirm: Callable[[str, str], bool] = self._confirm_dialog
        #: label value -> name, gathered from the label sidecars, datasets and studies added
        self.class_names: dict[int, str] = {}
        #: names of the models in the store (to refuse a name already taken)
        self.model_names: set[str] = set()
        #: messages shown as errors (tests, logs)
        self.errors: list[str] = []
        self.plan: FineTunePlan | None = None
        self.resume = False
        self.training_result: Any = None
        self._stamp = time.strftime("%Y%m%d-%H%M%S")
        self._default_out: Path | None = None
        self._interrupted_worker: JobWorker | None = None

        self.model_page = BaseModelPage()
        self.data_page = DataPage()
        self.settings_page = SettingsPage()
        self.training_page = TrainingPage()
        self.result_page = ResultPage()
        for page_id, page in (
            (PAGE_MODEL, self.model_page),
            (PAGE_DATA, self.data_page),
            (PAGE_SETTINGS, self.settings_page),
            (PAGE_TRAINING, self.training_page),
            (PAGE_RESULT, self.result_page),
        ):
            self.setPage(page_id, page)
        self.setStartId(PAGE_MODEL)
        self.model_page.refresh()
        self._remembering = False
        if settings is not None and settings.fine_tune_self_supervised:
            self.data_page.set_self_supervised(True)
        if settings is not None and settings.fine_tune_pairs:
            self.data_page.restore_pairs(list(settings.fine_tune_pairs))
        self._remembering = settings is not None
        if check_interrupted:
            self.look_for_interrupted_runs()

    def remember_pairs(self, pairs: list[dict]) -> None:
        """Keep the data list (and the self-supervised choice) in the settings (saved at once): reopening
        the wizard shows it again."""
        if not getattr(self, "_remembering", False) or self.settings is None:
            return
        self_supervised = self.data_page.self_supervised()
        if (
            pairs != self.settings.fine_tune_pairs
            or self_supervised != self.settings.fine_tune_self_supervised
        ):
            self.settings.fine_tune_pairs = pairs
            self.settings.fine_tune_self_supervised = self_supervised
            if self._save_settings:
                self.settings.save()

    # ------------------------------------------------------------------------------------------ state
    @property
    def base_model(self) -> str:
        """The model chosen on the first page (a resumed plan's base model while resuming)."""
        if self.resume and self.plan is not None:
            return str(self.plan.base_model)
        return self.model_page.base_model

    def default_out(self) -> Path:
        """The run folder proposed: ``<runs>/<base model>-ft-<date-time>``, fixed once first used."""
        if self._default_out is None:
            from sd_fsmis.core.training.fine_tune import runs_dir
            from sd_fsmis.ui.fine_tune.common import model_name_from

            base = model_name_from(self.base_model or "model")
            self._default_out = Path(runs_dir()) / f"{base}-ft-{self._stamp}"
        return self._default_out

    def out_folder(self) -> Path:
        """The run folder chosen on the settings page (the default until the user changes it)."""
        text = self.settings_page.out_edit.text().strip()
        return Path(text).expanduser() if text else self.default_out()

    def data_folder(self) -> Path:
        """Where the session's studies are written as image + label files for the run."""
        return self.out_folder() / "data"

    def build_plan(self) -> FineTunePlan:
        """The plan of the data and settings pages, validated (UserError with one line otherwise)."""
        from sd_fsmis.core.training.fine_tune import FineTunePlan

        data = self.data_page
        usable = data.usable_entries()
        classes = data.chosen_classes()
        plan = FineTunePlan(
            base_model=self.base_model,
            pairs=[entry.pair for entry in usable],
            classes=classes,
            class_names={value: data.class_name(value) for value in classes},
            validation=[i for i, entry in enumerate(usable) if entry.validation],
            out=str(self.out_folder()),
            self_supervised=data.self_supervised(),
            **self.settings_page.options(),
        )
        plan.validate()
        return plan

    def is_training(self) -> bool:
        return self.training_page.is_running()

    def models_changed(self) -> None:
        """A model was created or removed from the wizard."""
        self.modelsChanged.emit()

    def registered_model(self, name: str) -> None:
        """The trained model is in the store (the result page calls this)."""
        self.modelRegistered.emit(name)

    # ------------------------------------------------------------------------------------ interrupted
    def look_for_interrupted_runs(self) -> None:
        """Search the runs folder for interrupted runs in a worker; offer the newest on the first page."""
        worker = JobWorker(find_interrupted, name="interrupted runs", parent=self)
        worker.finished.connect(self._interrupted_found)
        worker.failed.connect(lambda message, _user: log.warning("interrupted runs: %s", message))
        self._interrupted_worker = worker
        worker.start()

    def _interrupted_found(self, runs: list[InterruptedRun]) -> None:
        if qt_alive(self) and self.currentId() in (PAGE_MODEL, -1):
            self.model_page.set_interrupted(runs)

    def interrupted_search_running(self) -> bool:
        return self._interrupted_worker is not None and self._interrupted_worker.is_running()

    def resume_interrupted(self, run: InterruptedRun) -> None:
        """Continue ``run`` from its newest checkpoint: straight to the training page."""
        self.plan = run.plan
        self.resume = True
        self.settings_page.set_options(out=str(run.out))
        self.model_page.resume_banner.setVisible(False)
        self.model_page.jump_to_training = True
        self.model_page.setCommitPage(True)  # no way back into a half-finished run's settings
        if self.currentId() == -1:
            self.restart()
        while self.currentId() not in (PAGE_MODEL, PAGE_TRAINING) and self.currentId() != -1:
            self.back()
        if self.currentId() == PAGE_MODEL:
            self.next()

    # ------------------------------------------------------------------------------------------ closing
    def stop_training(self, timeout_ms: int | None = None) -> bool:
        """Stop a running training at its next step boundary (a checkpoint is written) and wait for it."""
        return self.training_page.shutdown(timeout_ms)

    def shutdown(self) -> None:
        """Stop every job of the wizard (closing)."""
        self.data_page.shutdown()
        self.settings_page.shutdown()
        self.stop_training()

    def reject(self) -> None:
        """Cancel / Esc / the close button: ask first while training, or when a trained model is unsaved."""
        if self.is_training():
            if not self.confirm(
                "Stop the training?",
                "The training is running. Stop it at the end of this step (a checkpoint is saved: you can "
                "resume it later) and close the wizard?",
            ):
                return
        elif (
            self.training_result is not None
            and self.result_page.registered is None
            and not self.confirm(
                "Close without registering?",
                "The trained model is not registered in the store (it stays in the run folder). Close?",
            )
        ):
            return
        with wait_cursor():
            self.shutdown()
        super().reject()

    def _confirm_dialog(self, title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes
