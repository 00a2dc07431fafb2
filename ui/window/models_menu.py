"""The main window's Models menu: the model manager and the fine-tune wizard, and the Segment panel
following what they change (a model created, renamed, made the default, or registered by the wizard).

A mix-in of :class:`~sd_fsmis.ui.window.main_window.MainWindow` (needs ``session``, ``segment_panel``,
``status``, ``docks``, ``settings``, ``_save_settings``, ``_fine_tune`` and ``_model_manager``).
"""

from __future__ import annotations

from PySide6 import QtWidgets

from sd_fsmis.ui.workers.job_worker import qt_alive


class ModelsMenuMixin:
    """Opens the model manager and the fine-tune wizard, one window of each."""

    # ---------------------------------------------------------------------------------------- models
    def open_fine_tune(self) -> QtWidgets.QWizard:
        """Show the fine-tune wizard (a new one unless one is open), with the session's studies."""
        from sd_fsmis.ui.fine_tune.wizard import FineTuneWizard

        wizard = self._fine_tune
        if wizard is None or not qt_alive(wizard) or not (wizard.isVisible() or wizard.is_training()):
            if wizard is not None and qt_alive(wizard):
                wizard.deleteLater()
            wizard = FineTuneWizard(
                self.session, self, settings=self.settings, save_settings=self._save_settings
            )
            wizard.modelRegistered.connect(self._model_registered)
            wizard.modelsChanged.connect(self._models_changed)
            self._fine_tune = wizard
        wizard.show()
        wizard.raise_()
        wizard.activateWindow()
        return wizard

    @property
    def fine_tune_wizard(self) -> QtWidgets.QWizard | None:
        """The fine-tune wizard opened last (None before the first)."""
        return self._fine_tune if self._fine_tune is not None and qt_alive(self._fine_tune) else None

    def fine_tuning(self) -> bool:
        """True while a fine-tuning runs."""
        wizard = self.fine_tune_wizard
        return wizard is not None and wizard.is_training()

    def open_model_manager(self) -> QtWidgets.QDialog:
        """Show the model manager (create, import, rename, remove, default).

        With a Segment panel, it is the panel's manager (one window; the panel follows a model created,
        renamed or made the default there).
        """
        from sd_fsmis.ui.dialogs.model_manager import ModelManagerDialog

        if self.segment_panel is not None and qt_alive(self.segment_panel):
            self._model_manager = self.segment_panel.open_model_dialog()
            return self._model_manager
        if self._model_manager is None or not qt_alive(self._model_manager):
            self._model_manager = ModelManagerDialog(self)
            self._model_manager.modelsChanged.connect(self._models_changed)
        self._model_manager.show()
        self._model_manager.raise_()
        self._model_manager.activateWindow()
        return self._model_manager

    def _models_changed(self) -> None:
        if self.segment_panel is not None and qt_alive(self.segment_panel):
            self.segment_panel.refresh_models()

    def _model_registered(self, name: str) -> None:
        """A fine-tuned model is in the store: the Segment panel offers it, and chooses it only when the
        person made it the default (only an explicit choice changes the engine)."""
        from sd_fsmis.core.model.store import default_model_name

        panel = self.segment_panel
        if panel is None or not qt_alive(panel):
            return
        chosen = default_model_name() == name

        def choose() -> None:
            panel.modelsListed.disconnect(choose)
            panel.select_engine(name)

        if chosen:
            panel.modelsListed.connect(choose)
        panel.refresh_models()
        self.status.showMessage(
            f"Model '{name}' registered"
            + (" and chosen (the default)" if chosen else ": choose it in the Segment panel to use it"),
            10_000,
        )
        if "Segment" in self.docks:
            self.docks["Segment"].raise_()
