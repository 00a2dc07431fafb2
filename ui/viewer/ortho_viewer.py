"""The three-view viewer: one large and two small orthogonal views (or 1 x 3, or one), linked.

Clicking in a view moves the crosshair there and the other views to the slices through it; scrolling a
view moves its line in the others. Window/level and the label overlay are shared: the same numpy label
array is shown in all three views. Keys (viewer focused): Alt+1/2/3 make axial/coronal/sagittal the large
view, Alt+L cycles the layouts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6 import QtGui, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.io.atomic import atomic_path
from sd_fsmis.ui.colors import RGB
from sd_fsmis.ui.viewer.orientation import VIEWS
from sd_fsmis.ui.viewer.slice_view import NAVIGATE, Region, SliceView
from sd_fsmis.ui.viewer.window_level import Window, data_range, default_window, preset_names, resolve_preset

if TYPE_CHECKING:
    from sd_fsmis.core.geometry import Geometry

MAIN, ROW, SINGLE = "main", "row", "single"  # one large + two small; 1 x 3; one view
LAYOUTS = (MAIN, ROW, SINGLE)


def format_value(value: float | int, modality: str = "") -> str:
    """A voxel value for the status bar: whole numbers as such, others to 5 significant digits; HU on CT."""
    number = float(value)
    text = str(int(number)) if number.is_integer() and abs(number) < 1e9 else f"{number:.5g}"
    return f"{text} HU" if modality.upper() == "CT" else text


class OrthoViewer(QtWidgets.QWidget):
    """Axial, coronal and sagittal :class:`SliceView` s of one volume, with a shared cursor and overlays."""

    statusChanged = Signal(str)  # "x 120 y 88 z 21 | (12.5, -40.1, 33.0) mm | 134 HU"
    cursorMoved = Signal(int, int, int)  # voxel (z, y, x) under the mouse, any view
    crosshairChanged = Signal(int, int, int)  # the shared crosshair moved (click, drag, scroll)
    sliceChanged = Signal(str, int)  # view name, index along its axis
    windowChanged = Signal(float, float)  # (center, width)
    paintPressed = Signal(int, int, int, int, object, object)  # plane axis, z, y, x, buttons, modifiers
    paintMoved = Signal(int, int, int, int, object, object)
    paintReleased = Signal(int, int, int, int, object, object)
    mainViewChanged = Signal(str)
    layoutChanged = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.views: dict[str, SliceView] = {name: SliceView(name) for name in VIEWS}
        self._array: np.ndarray | None = None
        self._geometry: Geometry | None = None
        self._modality = ""
        self._dicom_window: Window | None = None
        self._window = Window(0.5, 1.0)
        self._labels: np.ndarray | None = None
        self._cursor = (0, 0, 0)
        self._main = "axial"
        self._layout_mode = MAIN
        self._grid = QtWidgets.QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(3)
        for name, view in self.views.items():
            view.clicked.connect(self.go_to)
            view.cursorMoved.connect(self._hover)
            view.sliceChanged.connect(functools.partial(self._view_scrolled, name))
            view.windowChanged.connect(self.set_window)
            view.maximizeRequested.connect(functools.partial(self._maximize, name))
            for signal, out in (
                (view.paintPressed, self.paintPressed),
                (view.paintMoved, self.paintMoved),
                (view.paintReleased, self.paintReleased),
            ):
                signal.connect(functools.partial(self._relay_paint, view, out))
        for key, name in (("Alt+1", "axial"), ("Alt+2", "coronal"), ("Alt+3", "sagittal")):
            self._shortcut(key, functools.partial(self.set_main_view, name))
        self._shortcut("Alt+L", self.cycle_layout)
        self._arrange()

    def _shortcut(self, key: str, slot) -> None:
        shortcut = QtGui.QShortcut(QtGui.QKeySequence(key), self)
        shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        shortcut.activated.connect(slot)

    # ---------------------------------------------------------------------------------------- layout
    @property
    def main_view(self) -> str:
        return self._main

    @property
    def layout_mode(self) -> str:
        return self._layout_mode

    def set_main_view(self, name: str) -> None:
        """Make view ``name`` ("axial", "coronal", "sagittal") the large one."""
        if name not in self.views:
            raise ValueError(f"view must be one of {VIEWS}, got {name!r}")
        if name != self._main:
            self._main = name
            self._arrange()
            self.mainViewChanged.emit(name)

    def set_layout(self, mode: str) -> None:
        """ "main" (one large + two small), "row" (1 x 3) or "single" (the main view only)."""
        if mode not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {mode!r}")
        if mode != self._layout_mode:
            self._layout_mode = mode
            self._arrange()
            self.layoutChanged.emit(mode)

    def cycle_layout(self) -> None:
        self.set_layout(LAYOUTS[(LAYOUTS.index(self._layout_mode) + 1) % len(LAYOUTS)])

    def _maximize(self, name: str) -> None:
        """A view's ⤢ button: a small view becomes the large one; the large one toggles single view."""
        if name != self._main or self._layout_mode == ROW:
            self.set_main_view(name)
            self.set_layout(MAIN)
        else:
            self.set_layout(MAIN if self._layout_mode == SINGLE else SINGLE)

    def _arrange(self) -> None:
        grid = self._grid
        for view in self.views.values():
            grid.removeWidget(view)
        for i in range(3):
            grid.setRowStretch(i, 0)
            grid.setColumnStretch(i, 0)
        others = [n for n in VIEWS if n != self._main]
        if self._layout_mode == MAIN:
            grid.addWidget(self.views[self._main], 0, 0, 2, 1)
            grid.addWidget(self.views[others[0]], 0, 1)
            grid.addWidget(self.views[others[1]], 1, 1)
            grid.setColumnStretch(0, 2)
            grid.setColumnStretch(1, 1)
            grid.setRowStretch(0, 1)
            grid.setRowStretch(1, 1)
        elif self._layout_mode == ROW:
            for col, name in enumerate(VIEWS):
                grid.addWidget(self.views[name], 0, col)
                grid.setColumnStretch(col, 1)
            grid.setRowStretch(0, 1)
        else:
            grid.addWidget(self.views[self._main], 0, 0)
            grid.setColumnStretch(0, 1)
            grid.setRowStretch(0, 1)
        for name, view in self.views.items():
            view.setVisible(self._layout_mode != SINGLE or name == self._main)

    # ------------------------------------------------------------------------------------------- data
    def set_volume(
        self,
        array: np.ndarray,
        geometry: Geometry | None = None,
        modality: str = "",
        window: tuple[float, float] | None = None,
        oriented: bool = True,
    ) -> None:
        """Show ``array`` (z, y, x) in modality units on ``geometry``.

        ``window`` = ``(center, width)`` from the DICOM tags when the study has them: it is the opening
        window and the "From DICOM tags" preset. Without it CT opens in the abdomen window, MR in "Auto".
        ``oriented=False``: no patient orientation (a planar image): no anatomical view names or letters.
        """
        self._array, self._geometry, self._modality = array, geometry, modality
        self._dicom_window = Window(float(window[0]), float(window[1])) if window else None
        self._window = default_window(array, modality, self._dicom_window)
        self._labels = None
        value_range = data_range(array)
        for view in self.views.values():
            view.set_labels(None)
            view.set_confusion(None)
            view.set_volume(array, geometry, self._window, value_range, oriented)
        self._cursor = self.views["axial"].crosshair_position
        self.windowChanged.emit(self._window.center, self._window.width)
        self.statusChanged.emit(self.status_text(*self._cursor))

    def set_labels(
        self,
        label_array: np.ndarray | None,
        colors: Mapping[int, RGB] | None = None,
        opacity: float | None = None,
        visible: Mapping[int, bool] | None = None,
    ) -> None:
        """Overlay ``label_array`` (one array shared by the views); call refresh_overlay after edits."""
        self._labels = label_array
        for view in self.views.values():
            view.set_labels(label_array, colors=colors, opacity=opacity, visible=visible)

    def set_label_style(
        self,
        colors: Mapping[int, RGB] | None = None,
        opacity: float | None = None,
        visible: Mapping[int, bool] | None = None,
        mode: str | None = None,
    ) -> None:
        """Label colours, opacity (0..1), per-label visibility, or the mode "fill" / "outline"."""
        for view in self.views.values():
            view.set_label_style(colors=colors, opacity=opacity, visible=visible, mode=mode)

    def set_labels_visible(self, visible: bool) -> None:
        """Show or hide the whole label overlay."""
        for view in self.views.values():
            view.set_labels_visible(visible)

    def refresh_overlay(self, region: Region | None = None) -> None:
        """Redraw the labels after the label array changed in ``region`` = (z, y, x) slices; all when None."""
        for view in self.views.values():
            view.refresh_overlay(region)

    def set_confusion(self, array: np.ndarray | None, opacity: float | None = None) -> None:
        """Overlay a confusion map (0 none, 1 TP green, 2 FP vermillion, 3 FN blue), or remove it (None)."""
        for view in self.views.values():
            view.set_confusion(array, opacity)

    # ---------------------------------------------------------------------------------- window/level
    @property
    def current_window(self) -> Window:
        return self._window

    def set_window(self, center: float, width: float) -> None:
        """Display ``center ± width / 2`` in all views; emits ``windowChanged``."""
        self._window = Window(float(center), max(float(width), 1e-6))
        for view in self.views.values():
            view.set_window(self._window.center, self._window.width)
        self.windowChanged.emit(self._window.center, self._window.width)

    def preset_names(self) -> list[str]:
        """The presets that make sense for this study (CT ones for CT, DICOM tags when present, Auto)."""
        return preset_names(self._modality, self._dicom_window is not None)

    def apply_preset(self, name: str) -> Window:
        """Apply a preset: "CT abdomen", "Soft tissue", "Lung", "Bone", "Brain", "From DICOM tags", "Auto"."""
        window = resolve_preset(name, self._array, self._dicom_window)
        self.set_window(window.center, window.width)
        return window

    # ------------------------------------------------------------------------------ cursor, slices
    @property
    def crosshair_position(self) -> tuple[int, int, int]:
        return self._cursor

    def view_for_axis(self, axis: int) -> SliceView:
        """The view whose plane is normal to numpy ``axis`` (0 = the axial view of an axial acquisition)."""
        return next(view for view in self.views.values() if view.axis == axis)

    def go_to(self, z: int, y: int, x: int) -> None:
        """Move the crosshair to voxel (z, y, x) and every view to the slice through it."""
        if self._array is None:
            return
        zyx = tuple(min(max(int(v), 0), n - 1) for v, n in zip((z, y, x), self._array.shape))
        self._cursor = (zyx[0], zyx[1], zyx[2])
        moved = []
        for name, view in self.views.items():
            view.blockSignals(True)
            if view.slice_index != self._cursor[view.axis]:
                view.set_slice(self._cursor[view.axis])
                moved.append(name)
            view.set_crosshair(*self._cursor)
            view.blockSignals(False)
        for name in moved:
            self.sliceChanged.emit(name, self.views[name].slice_index)
        self.crosshairChanged.emit(*self._cursor)
        self.statusChanged.emit(self.status_text(*self._cursor))

    def go_to_slice(self, z: int) -> None:
        """Show axial slice ``z`` (numpy axis 0), keeping the crosshair's row and column."""
        self.go_to(z, self._cursor[1], self._cursor[2])

    def _view_scrolled(self, name: str, index: int) -> None:
        axis = self.views[name].axis
        cursor = list(self._cursor)
        cursor[axis] = index
        self._cursor = (cursor[0], cursor[1], cursor[2])
        for view in self.views.values():
            view.set_crosshair(*self._cursor)
        self.sliceChanged.emit(name, index)
        self.crosshairChanged.emit(*self._cursor)

    def _hover(self, z: int, y: int, x: int) -> None:
        self.cursorMoved.emit(z, y, x)
        self.statusChanged.emit(self.status_text(z, y, x))

    def _relay_paint(self, view: SliceView, out: Signal, z: int, y: int, x: int, buttons, modifiers) -> None:
        out.emit(view.axis, z, y, x, buttons, modifiers)

    def status_text(self, z: int, y: int, x: int) -> str:
        """``slice 16 / 37 (S -77.1 mm) | x 120 y 88 z 21 | (12.5, -40.1, 33.0) mm | 134 HU`` (and
        ``| label 2`` on a labelled voxel): the slice as numbered for the person, then the voxel's array
        index, patient position and value."""
        if self._array is None:
            return ""
        if self._geometry is not None:
            mm = self._geometry.index_to_mm((z, y, x))
        else:
            mm = (float(x), float(y), float(z))
        text = f"x {x} y {y} z {z} | ({mm[0]:.1f}, {mm[1]:.1f}, {mm[2]:.1f}) mm"
        # the stored slice (numpy axis 0: what supports and ranges refer to), numbered as its view does
        numbering = next((v.numbering for v in self.views.values() if v.axis == 0 and v.numbering), None)
        if numbering is not None:
            text = f"slice {numbering.number(z)} / {numbering.count} ({numbering.position_text(z)}) | " + text
        text += f" | {format_value(self._array[z, y, x], self._modality)}"
        if self._labels is not None and self._labels[z, y, x]:
            text += f" | label {int(self._labels[z, y, x])}"
        return text

    # ---------------------------------------------------------------------------------------- tools
    def set_tool(self, mode: str = NAVIGATE) -> None:
        """ "navigate" (left-drag moves the crosshair) or "paint" (left-drag emits paint signals)."""
        for view in self.views.values():
            view.set_tool(mode)

    def set_brush_radius(self, radius: float) -> None:
        """Radius of the brush cursor, in voxels of each plane's finer axis (like ``core.painting``)."""
        for view in self.views.values():
            view.set_brush_radius(radius)

    def set_crosshair_visible(self, visible: bool) -> None:
        for view in self.views.values():
            view.set_crosshair_visible(visible)

    def reset_views(self) -> None:
        """Fit each slice in its view (undo zoom and pan)."""
        for view in self.views.values():
            view.reset_view()

    def screenshot(self, path: str | Path) -> Path:
        """Save a PNG of the viewer as on screen (written to a temporary file, then renamed)."""
        path = Path(path)
        pixmap = self.grab()
        with atomic_path(path) as tmp:
            if not pixmap.save(str(tmp), "PNG"):
                raise OSError(f"could not write the screenshot {path}")
        return path
