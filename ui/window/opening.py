"""Opening studies in the main window: files, folders, the demo, recent files, drag and drop.

A mix-in of :class:`~sd_fsmis.ui.window.main_window.MainWindow`: the reading itself runs in the window's
:class:`~sd_fsmis.ui.workers.open_worker.StudyOpener` (a worker thread); these are its Qt entry points.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from PySide6 import QtGui, QtWidgets

from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.dialogs.series import choose_series
from sd_fsmis.ui.viewer.paint_controller import ensure_editable_layer

IMAGE_FILTER = "Images (*.nii.gz *.nii *.dcm *.nrrd *.mha *.mhd DICOMDIR);;All files (*)"


class StudyOpeningMixin:
    """The window's "open" actions (uses ``session``, ``settings``, ``opener``, ``runner``, ``paint``)."""

    def open_paths(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Open each path (file or folder) in the background; each series chosen becomes a study."""
        for path in paths:
            text = str(path)
            if not Path(text).exists():
                self.show_error("Cannot open", f"{text}: no such file or folder")
                continue
            self.settings.add_recent(text)
            self.settings.last_folder = str(Path(text).parent if Path(text).is_file() else Path(text))
            self.opener.open(text)
        self._fill_recent_menu()
        self.welcome.set_recent(self.settings.recent_files)

    def open_file_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Open an image", self.settings.last_folder, IMAGE_FILTER
        )
        if path:
            self.open_paths([path])

    def open_folder_dialog(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self, "Open a DICOM folder", self.settings.last_folder
        )
        if path:
            self.open_paths([path])

    def open_demo(self) -> None:
        """Open the generated demo study (written to the cache on first use, in the background)."""
        from sd_fsmis.core.io.demo import demo_study_paths

        self.runner.start(
            lambda progress, cancel: demo_study_paths(),
            "Preparing the demo study",
            on_done=lambda _paths: self._demo_ready(),
        )

    def _demo_ready(self) -> None:
        from sd_fsmis.core.io.demo import open_demo

        study = open_demo(self.session)  # fast now: the files exist
        self._study_opened(study, label_name="liver")

    def _choose_series(self, series: list, path: str) -> list:
        return choose_series(series, path, self)

    def _study_opened(self, study: Study, label_name: str = "") -> None:
        """A new study: give it a mask with a label ready to paint (3D Slicer's one click to start)."""
        if study in self.session.studies and not any(layer.kind != "reference" for layer in study.layers):
            ensure_editable_layer(study, label_name)
        plan = study.volume.metadata.regularization
        if plan is not None:  # said once here; the studies panel keeps it with the other warnings
            self.status.showMessage(f"{study.name}: {plan.note}", 30_000)
        self.show_wanted_file_runs(study)  # opened from the runs table: its cohort mask on it
        if self.paint.tool == "navigate":
            self.paint.set_tool("brush")
        self.viewer.views[self.viewer.main_view].graphics.setFocus()

    def _fill_recent_menu(self) -> None:
        menu = self.actions_.recent_menu
        if menu is None:
            return
        menu.clear()
        for path in self.settings.recent_files:
            action = menu.addAction(path)
            action.triggered.connect(lambda _=False, p=path: self.open_paths([p]))
        menu.setEnabled(bool(self.settings.recent_files))

    # drag and drop
    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)
