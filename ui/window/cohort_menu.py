"""The Segment menu's cohort actions: "Segment all open studies…" and "Segment a folder of studies…".

A mix-in of :class:`~sd_fsmis.ui.window.main_window.MainWindow` (needs ``session`` and ``segment_panel``):
each opens :class:`~sd_fsmis.ui.dialogs.cohort.CohortDialog` with the Segment panel's engine, device and
structure; one dialog at a time while it runs. A folder study's result is a run of the runs table; a
double-click on it opens the study (:meth:`CohortMenuMixin.open_file_run`) and shows its mask on it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6 import QtWidgets

from sd_fsmis.core.errors import UserError
from sd_fsmis.ui.workers.job_worker import qt_alive


class CohortMenuMixin:
    """Opens the cohort dialog (open studies, or a folder of studies)."""

    _cohort_dialog: QtWidgets.QDialog | None = None
    #: file runs whose study is being opened, to show on it once open
    _file_runs_wanted: frozenset[str] = frozenset()

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

    # -- a folder study's result, opened from the runs table ---------------------------------------------
    def open_file_run(self, run_id: str) -> bool:
        """Show a folder study's mask: on its study when open, else once the study is opened (now)."""
        try:
            run = self.session.runs.get(run_id)
        except KeyError:
            return False
        if run.query_study_id and run.result_layer_id:  # shown already: go to it
            try:
                study, layer = self.session.find_layer(run.result_layer_id)
            except KeyError:
                return False
            self.session.set_active_study(study)
            study.set_active_layer(layer)
            return True
        for study in self.session.studies:
            if run in self.session.file_runs_for(study):
                self.session.set_active_study(study)
                return self._attach_file_run(run, study)
        image = str(run.settings.get("image") or "")
        if not Path(image).exists():
            self.show_error("Cannot open", f"{image}: no such file or folder (moved since it was segmented?)")
            return False
        self._file_runs_wanted = self._file_runs_wanted | {run.id}
        self.open_paths([image])
        return True

    def show_wanted_file_runs(self, study) -> None:
        """A study was opened: show the masks of the file runs asked for on it."""
        for run in self.session.file_runs_for(study):
            if run.id in self._file_runs_wanted:
                self._file_runs_wanted = self._file_runs_wanted - {run.id}
                self._attach_file_run(run, study)

    def _attach_file_run(self, run, study) -> bool:
        try:
            self.session.attach_file_run(run, study)
        except (UserError, OSError, ValueError) as exc:
            self.show_error("Cannot open the mask", f"{run.settings.get('mask')}: {exc}")
            return False
        return True
