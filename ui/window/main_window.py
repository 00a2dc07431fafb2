"""The main window: the three views in the middle, studies/tools/masks on the left, segment/support/compare
on the right, menus, status bar, drag and drop, autosave.

The window observes the :class:`~sd_fsmis.core.session.state.Session` (napari style) and composes the widgets
that each observe a part of it; it owns nothing the session does not. Long work (opening, loading masks,
exporting, segmenting) runs in worker threads: the window never freezes.

Over 500 lines: the window's wiring (docks, panels, every action's slot); opening studies and the Models menu
are mix-ins of their own (:mod:`~sd_fsmis.ui.window.opening`, :mod:`~sd_fsmis.ui.window.models_menu`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis import __version__
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.dialogs.help import HelpDialog
from sd_fsmis.ui.panels.compare import ComparePanel
from sd_fsmis.ui.panels.labels import LabelsPanel
from sd_fsmis.ui.panels.segment import SegmentPanel
from sd_fsmis.ui.panels.status_bar import StatusBar
from sd_fsmis.ui.panels.studies import StudiesPanel
from sd_fsmis.ui.panels.support import SupportPanel
from sd_fsmis.ui.panels.tools import ToolsPanel
from sd_fsmis.ui.panels.welcome import WelcomePage
from sd_fsmis.ui.settings import AppSettings
from sd_fsmis.ui.viewer.layer_display import LayerDisplay
from sd_fsmis.ui.viewer.ortho_viewer import OrthoViewer
from sd_fsmis.ui.viewer.paint_controller import PaintController
from sd_fsmis.ui.viewer.window_level import Window
from sd_fsmis.ui.window.actions import build_actions, build_toolbar
from sd_fsmis.ui.window.autosave_timer import AutosaveTimer
from sd_fsmis.ui.window.cohort_menu import CohortMenuMixin
from sd_fsmis.ui.window.mask_files import MaskFiles, wait_cursor
from sd_fsmis.ui.window.models_menu import ModelsMenuMixin
from sd_fsmis.ui.window.opening import StudyOpeningMixin
from sd_fsmis.ui.workers.job_worker import error_box, qt_alive
from sd_fsmis.ui.workers.open_worker import JobRunner, StudyOpener

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1400, 900)


class MainWindow(StudyOpeningMixin, ModelsMenuMixin, CohortMenuMixin, QtWidgets.QMainWindow):
    """SD-FSMIS desktop's window on one :class:`Session`.

    ``autosave_folder``: where the session is autosaved (default ``<data dir>/session``); ``autosave=False``
    turns it off (the self-test). ``confirm`` asks a yes/no question; tests replace it.
    """

    def __init__(
        self,
        session: Session | None = None,
        *,
        settings: AppSettings | None = None,
        autosave: bool = True,
        autosave_folder: str | os.PathLike[str] | None = None,
        probe_device: bool = True,
        save_settings: bool = True,
    ) -> None:
        super().__init__()
        self.session = session or Session()
        self.settings = settings if settings is not None else AppSettings.load()
        self._save_settings = save_settings
        self._windows: dict[str, Window] = {}  # study id -> its window/level when it was last shown
        self._shown_study: Study | None = None
        self._help: HelpDialog | None = None
        self._fine_tune: QtWidgets.QWizard | None = None
        self._model_manager: QtWidgets.QDialog | None = None
        self._closing = False
        self._state_restored = False
        self._confusion = None
        self.confirm: Callable[[str, str], bool] = self._confirm_dialog
        #: messages shown in error boxes (for the status line, the self-test and tests)
        self.errors: list[str] = []
        self.setWindowTitle("SD-FSMIS")
        self.setAcceptDrops(True)
        self.setDockOptions(
            QtWidgets.QMainWindow.DockOption.AnimatedDocks | QtWidgets.QMainWindow.DockOption.AllowTabbedDocks
        )

        self.runner = JobRunner(self)
        self.runner.errorOccurred.connect(lambda message: self.show_error("Error", message))
        self.viewer = OrthoViewer()
        self.layer_display = LayerDisplay(self.viewer, self)
        self.paint = PaintController(self.session, self.viewer, self)
        self.opener = StudyOpener(self.session, self.runner, self._choose_series, self)
        self.opener.opened.connect(self._study_opened)
        self.files = MaskFiles(self)
        self.opener.failed.connect(lambda path, message: self.show_error("Cannot open", message))

        self.welcome = WelcomePage(self)
        self.central = QtWidgets.QStackedWidget()
        self.central.addWidget(self.welcome)
        self.central.addWidget(self.viewer)
        self.setCentralWidget(self.central)

        self._build_panels()
        self.status = StatusBar(self.runner, self, probe=probe_device)
        self.setStatusBar(self.status)
        if self.segment_panel is not None:  # "Automatic (CPU only: no GPU found)" in its device chooser
            self.status.deviceKnown.connect(self.segment_panel.show_machine_device)
            if self.status.known_device is not None:
                self.segment_panel.show_machine_device(self.status.known_device)
        self.actions_ = build_actions(self)
        self.toolbar = build_toolbar(self, self.actions_)
        for dock in self.docks.values():
            self.actions_.view["docks"].addAction(dock.toggleViewAction())
        self._connect()
        self._apply_settings()
        # tools and brush are remembered as they change (a crash must not lose them, as a clean exit does not)
        self._settings_timer = QtCore.QTimer(self)
        self._settings_timer.setSingleShot(True)
        self._settings_timer.setInterval(1000)
        self._settings_timer.timeout.connect(self._store_settings)
        for signal in (self.paint.toolChanged, self.paint.radiusChanged, self.paint.overwriteChanged):
            signal.connect(lambda *_: self._settings_timer.start())
        self.welcome.set_recent(self.settings.recent_files)
        self._fill_recent_menu()

        self.autosave: AutosaveTimer | None = None
        if autosave:
            self.autosave = AutosaveTimer(self.session, autosave_folder, parent=self)
            self.autosave.failed.connect(lambda message: self.status.showMessage(message, 10_000))
            self.autosave.hold = lambda: self.paint.stroke_active
            self.autosave.start()
        self._show_study(self.session.active_study)

    # --------------------------------------------------------------------------------------- building
    def _build_panels(self) -> None:
        self.studies_panel = StudiesPanel(self.session)
        self.tools_panel = ToolsPanel(self.paint)
        self.labels_panel = LabelsPanel(self.session)
        self.docks: dict[str, QtWidgets.QDockWidget] = {}
        left = Qt.DockWidgetArea.LeftDockWidgetArea
        right = Qt.DockWidgetArea.RightDockWidgetArea
        self._dock("Studies", self.studies_panel, left)
        self._dock("Tools", self.tools_panel, left)
        self._dock("Masks and labels", self.labels_panel, left)
        self.segment_panel = SegmentPanel(self.session)
        self._dock("Segment", self.segment_panel, right)
        self.support_panel = SupportPanel(self.session)
        self._dock("Support examples", self.support_panel, right)
        self.compare_panel = ComparePanel(self.session)
        self._dock("Compare", self.compare_panel, right)
        # Segment and Compare share the top of the right column (one follows the other: Compare is raised
        # when a run finishes); the support examples stay visible below either
        self.tabifyDockWidget(self.docks["Segment"], self.docks["Compare"])
        self.docks["Segment"].raise_()

    def _default_dock_sizes(self) -> None:
        """Left column ~270 px (studies small, masks tall), right ~350 px: the views get the rest."""
        left = [self.docks[n] for n in ("Studies", "Tools", "Masks and labels")]
        self.resizeDocks(left, [105, 120, 520], Qt.Orientation.Vertical)
        right = [d for n, d in self.docks.items() if n in ("Segment", "Support examples")]
        if len(right) == 2:
            self.resizeDocks(right, [520, 300], Qt.Orientation.Vertical)
        widths = [left[0], *right[:1]]
        self.resizeDocks(widths, [260, 340][: len(widths)], Qt.Orientation.Horizontal)

    def _dock(self, title: str, widget: QtWidgets.QWidget, area: Qt.DockWidgetArea) -> None:
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setFeatures(
            QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        self.docks[title] = dock

    def _connect(self) -> None:
        events = self.session.events
        events.active_study.connect(self._on_active_study)
        events.study_added.connect(self._on_study_list)
        events.study_removed.connect(self._on_study_list)
        self.viewer.statusChanged.connect(self.status.set_position)
        self.viewer.crosshairChanged.connect(self._cursor_moved)
        self.viewer.layoutChanged.connect(self._sync_view_actions)
        self.paint.toolChanged.connect(self._sync_tool_actions)
        self.paint.painted.connect(self._painted)
        if self.support_panel is not None:
            self.support_panel.goToSupport.connect(self.go_to_support)
        if self.compare_panel is not None and hasattr(self.compare_panel, "goToSlice"):
            self.compare_panel.goToSlice.connect(self.viewer.go_to_slice)
        if self.compare_panel is not None and hasattr(self.compare_panel, "runs_table"):
            self.compare_panel.runs_table.openRequested.connect(self.open_file_run)
        if self.compare_panel is not None and hasattr(self.compare_panel, "confusionChanged"):
            self.compare_panel.confusionChanged.connect(self._show_confusion)
        if self.segment_panel is not None:
            self.segment_panel.runStarted.connect(self._update_actions)
            self.segment_panel.runFinished.connect(self._run_finished)

    def _apply_settings(self) -> None:
        s = self.settings
        self.paint.set_radius(s.brush_radius)
        self.paint.set_overwrite(s.overwrite_labels)
        if s.tool in ("navigate", "brush", "eraser", "fill"):
            self.paint.set_tool(s.tool)
        if s.layout in ("main", "row", "single"):
            self.viewer.set_layout(s.layout)
        self.viewer.set_crosshair_visible(s.crosshair)
        restored = bool(s.window_geometry) and self.restoreGeometry(
            QtCore.QByteArray.fromBase64(s.window_geometry.encode("ascii"))
        )
        if not restored:
            self.resize(*DEFAULT_SIZE)
        if s.window_state:
            state = QtCore.QByteArray.fromBase64(s.window_state.encode("ascii"))
            self._state_restored = bool(self.restoreState(state))
        self.actions_.view["labels"].setChecked(True)
        self.actions_.view["contours"].setChecked(True)
        self.actions_.view["crosshair"].setChecked(s.crosshair)
        self._sync_view_actions()
        self._sync_tool_actions(self.paint.tool)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if not self._state_restored:
            self._state_restored = True
            self._default_dock_sizes()

    # ---------------------------------------------------------------------------------- active study
    def _on_study_list(self, *_: object) -> None:
        if qt_alive(self):
            self._update_actions()

    def _on_active_study(self, study: Study | None) -> None:
        if qt_alive(self):
            self._show_study(study)

    def _show_study(self, study: Study | None) -> None:
        """Show ``study`` in the viewer (its volume, window/level and masks) or the welcome page."""
        previous = self._shown_study
        if previous is not None and previous is not study:
            self._windows[previous.id] = self.viewer.current_window
            self._set_study_events(previous, False)
        if study is not None and study is not previous:
            meta = study.volume.metadata
            dicom = None
            if meta.window_center is not None and meta.window_width:
                dicom = (float(meta.window_center), float(meta.window_width))
            self.viewer.set_volume(study.volume.array, study.geometry, meta.modality, dicom, meta.oriented)
            if self._confusion is not None and self._confusion.shape == study.volume.shape:
                self.viewer.set_confusion(self._confusion)
            saved = self._windows.get(study.id)
            if saved is not None:
                self.viewer.set_window(saved.center, saved.width)
            self._set_study_events(study, True)
            sx, sy, _ = study.geometry.spacing
            self.tools_panel.set_spacing(min(sx, sy))
            self._fill_presets()
        self._shown_study = study
        self.layer_display.set_study(study)
        self.central.setCurrentWidget(self.viewer if study is not None else self.welcome)
        self.setWindowTitle(f"{study.name} — SD-FSMIS" if study is not None else "SD-FSMIS")
        self._update_support_context()
        self._update_actions()

    def _set_study_events(self, study: Study, on: bool) -> None:
        events = study.events
        for signal, slot in (
            (events.active_layer, self._on_layer_switch),
            (events.layer_added, self._on_layer_switch),
            (events.layer_removed, self._on_layer_switch),
            (events.layer_changed, self._on_layer_event),
        ):
            (signal.connect if on else signal.disconnect)(slot)

    def _on_layer_switch(self, *_: object) -> None:
        if qt_alive(self):
            self._update_support_context()
            self._update_actions()

    def _on_layer_event(self, layer: LabelLayer, event_name: str, *args: object) -> None:
        if not qt_alive(self):
            return
        if event_name == "history" and layer is self.active_layer:
            self._update_undo()
        elif event_name == "selected_label" and layer is self.active_layer:
            self._update_support_context()

    @property
    def active_study(self) -> Study | None:
        return self.session.active_study

    @property
    def active_layer(self) -> LabelLayer | None:
        study = self.session.active_study
        return study.active_layer if study is not None else None

    def _cursor_moved(self, z: int, y: int, x: int) -> None:
        self._update_support_context()

    def _update_support_context(self) -> None:
        if self.support_panel is None:
            return
        study = self.active_study
        z = self.viewer.crosshair_position[0] if study is not None else None
        self.support_panel.set_context(study, self.active_layer, z)

    def go_to_support(self, study_id: str, slice_index: int) -> None:
        """Show a support example: its study, its slice."""
        try:
            study = self.session.study(study_id)
        except KeyError:
            return
        self.session.set_active_study(study)
        self.viewer.go_to_slice(int(slice_index))

    def _show_confusion(self, array: np.ndarray | None) -> None:
        """The compare panel's disagreement map (TP/FP/FN) on the views, when it is of the study shown."""
        self._confusion = array
        study = self._shown_study
        if array is None or (study is not None and array.shape == study.volume.shape):
            self.viewer.set_confusion(array)

    def _painted(self) -> None:
        if not self.layer_display.labels_visible:
            self.toggle_labels(True)

    def _run_finished(self, run: object) -> None:
        """A segmentation ended: when it produced a result, show the comparison (Dice) next."""
        self._update_actions()
        if getattr(run, "status", "") == "done" and "Compare" in self.docks:
            self.docks["Compare"].raise_()

    # ----------------------------------------------------------------------------------- enabling
    def _update_actions(self) -> None:
        a = self.actions_
        study, layer = self.active_study, self.active_layer
        has_study, has_layer = study is not None, layer is not None
        for name in ("load_mask", "load_reference", "screenshot"):
            a.file[name].setEnabled(has_study)
        a.file["save_mask"].setEnabled(has_layer)
        dicom = has_study and study.volume.metadata.source_format in ("dicom", "dicomdir")
        problem = "DICOM-SEG refers to the DICOM images: only for studies opened from DICOM"
        if dicom:
            from sd_fsmis.core.io.dicom.seg import export_problem

            problem = export_problem(study.volume)
        a.file["export_seg"].setEnabled(has_layer and not problem)
        a.file["export_seg"].setToolTip(problem or "Export the active mask as DICOM-SEG for a PACS")
        for name in ("clear_slice", "clear_label", "add_support"):
            a.edit[name].setEnabled(has_layer)
        running = self.segment_panel is not None and self.segment_panel.is_running()
        a.edit["segment"].setEnabled(self.segment_panel is not None and has_study and not running)
        a.edit["cancel_segment"].setEnabled(running)
        self._update_undo()

    def _update_undo(self) -> None:
        layer = self.active_layer
        a = self.actions_
        a.edit["undo"].setEnabled(layer is not None and layer.can_undo)
        a.edit["redo"].setEnabled(layer is not None and layer.can_redo)
        undo = layer.history.undo_name if layer is not None else None
        redo = layer.history.redo_name if layer is not None else None
        a.edit["undo"].setText(f"&Undo {undo}" if undo else "&Undo")
        a.edit["redo"].setText(f"&Redo {redo}" if redo else "&Redo")

    def _sync_tool_actions(self, tool: str) -> None:
        action = self.actions_.tools.get(tool)
        if action is not None:
            action.setChecked(True)

    def _sync_view_actions(self, *_: object) -> None:
        action = self.actions_.layouts.get(self.viewer.layout_mode)
        if action is not None:
            action.setChecked(True)

    def _fill_presets(self) -> None:
        menu = self.actions_.presets_menu
        if menu is None:
            return
        menu.clear()
        for name in self.viewer.preset_names():
            action = menu.addAction(name)
            action.triggered.connect(lambda _=False, n=name: self.viewer.apply_preset(n))

    # --------------------------------------------------------------------------------------- editing
    def undo(self) -> None:
        layer = self.active_layer
        if layer is not None:
            layer.undo()

    def redo(self) -> None:
        layer = self.active_layer
        if layer is not None:
            layer.redo()

    def clear_label_on_slice(self) -> bool:
        """Erase the active label on the slice of the large view (one undo step)."""
        layer = self.active_layer
        if layer is None or self.active_study is None:
            return False
        view = self.viewer.views[self.viewer.main_view]
        region: list[slice] = [slice(None)] * 3
        region[view.axis] = slice(view.slice_index, view.slice_index + 1)
        key = tuple(region)
        values = layer.array[key]
        cleared = np.where(values == layer.selected_label, 0, values).astype(values.dtype)
        return layer.set_region(key, cleared, "clear slice")  # type: ignore[arg-type]

    def clear_label_everywhere(self) -> bool:
        layer = self.active_layer
        if layer is None:
            return False
        name = layer.label_map.label_name(layer.selected_label)
        if not self.confirm("Clear label", f"Erase {name} on every slice? (Ctrl+Z undoes it)"):
            return False
        return layer.clear_label(layer.selected_label)

    def add_support_slice(self) -> object:
        """S: the axial slice shown, with the active label, as a support example."""
        if self.support_panel is None:
            return None
        self._update_support_context()
        return self.support_panel.add_current_slice()

    def segment(self) -> bool:
        return bool(self.segment_panel is not None and self.segment_panel.segment())

    def cancel_segmentation(self) -> None:
        if self.segment_panel is not None:
            self.segment_panel.cancel()

    # ------------------------------------------------------------------------------------------- view
    def toggle_labels(self, visible: bool | None = None) -> None:
        """H: show or hide every mask overlay."""
        visible = (not self.layer_display.labels_visible) if visible is None else bool(visible)
        self.layer_display.set_labels_visible(visible)
        self.actions_.view["labels"].setChecked(visible)

    def toggle_contours(self) -> None:
        self.layer_display.set_others_as_contours(self.actions_.view["contours"].isChecked())

    def toggle_crosshair(self) -> None:
        visible = self.actions_.view["crosshair"].isChecked()
        self.viewer.set_crosshair_visible(visible)
        self.settings.crosshair = visible

    def set_mask_opacity(self, value: float) -> None:
        layer = self.active_layer
        if layer is not None:
            layer.opacity = value

    def show_help(self) -> HelpDialog:
        if self._help is None:
            self._help = HelpDialog(self)
        self._help.show()
        self._help.raise_()
        return self._help

    def show_about(self) -> None:
        QtWidgets.QMessageBox.about(
            self,
            "About SD-FSMIS",
            f"<h3>SD-FSMIS desktop {__version__}</h3>"
            "<p>Few-shot medical image segmentation with Stable Diffusion: paint a structure on a few "
            "slices, segment it on the whole volume, compare by Dice, correct and export.</p>"
            "<p>Not a medical device: for research use.</p>",
        )

    # ------------------------------------------------------------------------------------- messages
    def show_error(self, title: str, message: str) -> None:
        """A non-blocking message box (one line from a UserError, never a traceback)."""
        self.errors.append(message)
        log.info("%s: %s", title, message)
        if not self._closing:
            error_box(self, title, message)

    def _confirm_dialog(self, title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def wait_idle(self, timeout_ms: int = 60_000) -> bool:
        """Process events until no job of the window runs (tests, the self-test); False on timeout."""
        return self.runner.wait_all(timeout_ms)

    # ---------------------------------------------------------------------------------------- closing
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        if self._closing:
            event.accept()
            return
        panel = self.segment_panel
        if panel is not None and panel.is_running():
            if not self.confirm("Quit", "A segmentation is running. Cancel it and quit?"):
                event.ignore()
                return
            panel.cancel()
        stop_training = self.fine_tuning()
        if stop_training and not self.confirm(
            "Quit",
            "A fine-tuning is running. Stop it at the end of this step (a checkpoint is saved: open the "
            "fine-tune wizard again to resume it) and quit?",
        ):
            event.ignore()
            return
        unsaved = [
            f"{layer.name} ({study.name})"
            for study in self.session.studies
            for layer in study.layers
            if layer.kind == "manual" and layer.modified and layer.array.any()
        ]
        if unsaved and not self.confirm(
            "Quit",
            "These masks have changes not saved to a file:\n  " + "\n  ".join(unsaved) + "\n\nQuit anyway?",
        ):
            event.ignore()
            return
        self._closing = True
        with wait_cursor():
            if stop_training:
                self.status.showMessage("Stopping the fine-tuning (saving a checkpoint)…")
                self.fine_tune_wizard.stop_training()
            if self.fine_tune_wizard is not None:
                self.fine_tune_wizard.shutdown()
            self.shutdown_cohort()
            for candidate in (self.segment_panel, self.support_panel, self.compare_panel):
                shutdown = getattr(candidate, "shutdown", None)
                if callable(shutdown):
                    shutdown()
            self.runner.cancel_all()
            self.runner.wait_all(30_000)
            if self.autosave is not None:
                self.autosave.stop(clean=True)
        self._store_settings()
        event.accept()

    def _store_settings(self) -> None:
        s = self.settings
        s.brush_radius = self.paint.radius
        s.tool = self.paint.tool
        s.overwrite_labels = self.paint.overwrite
        s.layout = self.viewer.layout_mode
        s.window_geometry = bytes(self.saveGeometry().toBase64()).decode("ascii")
        s.window_state = bytes(self.saveState().toBase64()).decode("ascii")
        if self._save_settings:
            s.save()
