"""The Segment menu's cohort actions: "Segment all open studies…" and "Segment a folder of studies…".

A mix-in of :class:`~sd_fsmis.ui.window.main_window.MainWindow` (needs ``session`` and ``segment_panel``):
each opens :class:`~sd_fsmis.ui.dialogs.cohort.CohortDialog` with the Segment panel's engine, device and
structure; one dialog at a time while it runs.
"""

from __future__ import annotations

from PySide6 import QtWidgets

from sd_fsmis.ui.workers.job_worker import qt_alive


class CohortMenuMixin:
    """Opens the cohort dialog (open studies, or a folder of studies)."""

    _cohort_dialog: QtWidgets.QDialog | None = None

    def segment_all_open_studies(self) -> QtWidgets.QDialog | None:
        """Segment the structure on every open study with the support set."""
        return self._open_cohort_dialog("open")

    def segment_folder_of_studies(self) -> QtWidgets.QDialog | None:
        """Segment the structure on every study of a folder (masks written to an output folder)."""
        return self._open_cohort_dialog("folder")

    @property
    def cohort_dialog(self) -> QtWidgets.QDialog | None:
        dialog = self._cohort_dialog
        return dialog if dialog is not None and qt_alive(dialog) else None

    def _open_cohort_dialog(self, mode: str) -> QtWidgets.QDialog | None:
        from sd_fsmis.ui.dialogs.cohort import CohortDialog, choice_from_panel

        if self.segment_panel is None:
            return None
        dialog = self.cohort_dialog
        if dialog is not None and dialog.is_running():
            dialog.show()
            dialog.raise_()
            return dialog
        if dialog is not None:
            dialog.deleteLater()
        dialog = CohortDialog(self.session, choice_from_panel(self.segment_panel), mode, self)
        self._cohort_dialog = dialog
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def shutdown_cohort(self, timeout_ms: int = 30_000) -> bool:
        """Cancel and join a running cohort (the window's close)."""
        dialog = self.cohort_dialog
        if dialog is None:
            return True
        dialog.cancel()
        return dialog.shutdown(timeout_ms)
