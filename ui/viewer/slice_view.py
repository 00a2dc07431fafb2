"""One orthogonal slice view (axial, coronal or sagittal) of a 3-D (z, y, x) volume, with its overlays.

Mouse (like ITK-SNAP / 3D Slicer):
- wheel: next/previous slice (Ctrl+wheel: zoom at the mouse); the slider under the image does the same;
- left: navigate mode moves the crosshair (``clicked``); paint mode emits ``paintPressed/Moved/Released``
  in volume indices, so the main window calls core painting and history (a drag that leaves the image
  reports indices outside the volume: clip them, as ``core.painting`` does);
- right-drag: window/level (horizontal = width, vertical = level), or zoom with Ctrl or in "zoom" mode;
- middle-drag: pan. Keys (view focused): Up/Down, Page Up/Page Down (10 slices), Home/End.

Nothing here owns data: the view shows numpy arrays given to it and announces what the user did.

Over 500 lines: one view widget, whose display, mouse and keyboard handling share its state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.slice_numbering import SliceNumbering, slice_numbering
from sd_fsmis.ui.colors import BACKGROUND, MARKER_COLOR, RGB
from sd_fsmis.ui.pyside_fixes import protect_singletons
from sd_fsmis.ui.viewer.orientation import UNORIENTED_TITLES, PlaneLayout, plane_layout
from sd_fsmis.ui.viewer.overlays import BrushCursor, Crosshair, LabelOverlay, confusion_overlay
from sd_fsmis.ui.viewer.window_level import Window, auto_window, data_range, drag_window

if TYPE_CHECKING:
    from sd_fsmis.core.geometry import Geometry

NAVIGATE, PAINT = "navigate", "paint"
#: A volume region: three ``slice`` objects (z, y, x), or three ``(start, stop)`` pairs, half-open.
Region = Sequence[slice | Sequence[int]]
_ZOOM_PER_NOTCH = 0.87
_ZOOM_PER_PIXEL = 0.01


def normalize_region(region: Region, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """``region`` as three clipped ``slice`` s of an array of ``shape``."""
    if len(region) != 3:
        raise ValueError(f"a region has three (z, y, x) parts, got {region!r}")
    out = []
    for part, n in zip(region, shape):
        s = part if isinstance(part, slice) else slice(int(part[0]), int(part[1]))
        start, stop, _ = s.indices(int(n))
        out.append(slice(start, stop))
    return (out[0], out[1], out[2])


class SliceView(QtWidgets.QWidget):
    """One orthogonal view: image, label and confusion overlays, crosshair, brush cursor, slider."""

    cursorMoved = Signal(int, int, int)  # voxel (z, y, x) under the mouse
    clicked = Signal(int, int, int)  # left press or drag in navigate mode: move the crosshair here
    sliceChanged = Signal(int)  # index along ``axis``
    paintPressed = Signal(int, int, int, object, object)  # z, y, x, Qt.MouseButton, Qt.KeyboardModifier
    paintMoved = Signal(int, int, int, object, object)
    paintReleased = Signal(int, int, int, object, object)
    windowChanged = Signal(float, float)  # (center, width) after a window/level drag
    maximizeRequested = Signal()

    def __init__(self, view: str = "axial", parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        protect_singletons()  # PySide6 6.12 on Python 3.11 leaks None/True (see pyside_fixes)
        self.view = view
        self._array: np.ndarray | None = None
        self._layout: PlaneLayout = plane_layout(view, (1, 1, 1))
        self._numbering: SliceNumbering | None = None
        self._spacing_zyx = (1.0, 1.0, 1.0)
        self._index = 0
        self._window = Window(0.5, 1.0)
        self._value_range = 1.0
        self._label_array: np.ndarray | None = None
        self._confusion_array: np.ndarray | None = None
        self._cursor = (0, 0, 0)
        self._tool = NAVIGATE
        self._brush_radius = 5.0
        self._right_drag = "window"
        self._drag: dict | None = None  # the drag in progress: kind, start/last positions, start window
        self._hover_pos: QtCore.QPointF | None = None  # the mouse on the viewport, while it is there
        self._wheel_rest = 0

        self.graphics = pg.GraphicsView(background=BACKGROUND)
        self.graphics.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.view_box = pg.ViewBox(invertY=True, lockAspect=True, enableMenu=False)
        self.view_box.setMouseEnabled(False, False)
        self.graphics.setCentralItem(self.view_box)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_item.setAutoDownsample(False)
        self.view_box.addItem(self.image_item)
        self.labels = LabelOverlay()
        self.confusion = confusion_overlay()
        self.confusion.item.setVisible(False)
        for overlay in (self.labels, self.confusion):
            self.view_box.addItem(overlay.item, ignoreBounds=True)
        self.crosshair = Crosshair(self.view_box)
        self.brush_cursor = BrushCursor()
        self.view_box.addItem(self.brush_cursor, ignoreBounds=True)

        self._build_chrome()
        viewport = self.graphics.viewport()
        viewport.setMouseTracking(True)
        viewport.installEventFilter(self)
        self.graphics.installEventFilter(self)

    # ------------------------------------------------------------------------------------------ building
    def _build_chrome(self) -> None:
        self.title = QtWidgets.QLabel(self.view.capitalize())
        self.title.setStyleSheet("font-weight: bold;")
        self.maximize_button = QtWidgets.QToolButton()
        self.maximize_button.setText("⤢")
        self.maximize_button.setAutoRaise(True)
        self.maximize_button.setToolTip(f"Show the {self.view} view large")
        self.maximize_button.clicked.connect(self.maximizeRequested)
        self.slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.slider.valueChanged.connect(self.set_slice)
        self.index_label = QtWidgets.QLabel("0 / 0")
        self.index_label.setMinimumWidth(70)
        self.index_label.setToolTip(
            "Slice number (counted along the patient's body: axial from the feet up) and the slice's "
            "position in mm; F1 explains the convention"
        )
        self.index_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

        header = QtWidgets.QHBoxLayout()
        header.setContentsMargins(4, 0, 0, 0)
        header.addWidget(self.title)
        header.addStretch(1)
        header.addWidget(self.maximize_button)
        footer = QtWidgets.QHBoxLayout()
        footer.setContentsMargins(4, 0, 4, 0)
        footer.addWidget(self.slider, 1)
        footer.addWidget(self.index_label)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addLayout(header)
        layout.addWidget(self.graphics, 1)
        layout.addLayout(footer)

        self._markers = []
        for _ in range(4):
            marker = QtWidgets.QLabel(self.graphics.viewport())
            marker.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
            marker.setStyleSheet(f"color: {MARKER_COLOR}; background: transparent; font-weight: bold;")
            self._markers.append(marker)
        self._update_markers()

    def _update_markers(self) -> None:
        """Orientation letters at the middle of each edge of the image area (R/L, A/P, S/I)."""
        rect = self.graphics.viewport().rect()
        for marker, letter in zip(self._markers, self._layout.markers):
            marker.setText(letter)
            marker.adjustSize()
        (left, right, top, bottom), m = self._markers, 4
        left.move(m, rect.height() // 2 - left.height() // 2)
        right.move(rect.width() - right.width() - m, rect.height() // 2 - right.height() // 2)
        top.move(rect.width() // 2 - top.width() // 2, m)
        bottom.move(rect.width() // 2 - bottom.width() // 2, rect.height() - bottom.height() - m)

    # -------------------------------------------------------------------------------------------- state
    @property
    def layout_info(self) -> PlaneLayout:
        """Which array axes this view shows and how (see :mod:`sd_fsmis.ui.viewer.orientation`)."""
        return self._layout

    @property
    def axis(self) -> int:
        """The numpy axis normal to this view's plane (0 for an axial acquisition's axial view)."""
        return self._layout.axis

    @property
    def numbering(self) -> SliceNumbering | None:
        """How this view's slices are numbered for the person (None before a volume with a geometry)."""
        return self._numbering

    @property
    def slice_index(self) -> int:
        return self._index

    @property
    def slice_count(self) -> int:
        return 0 if self._array is None else int(self._array.shape[self.axis])

    @property
    def tool(self) -> str:
        return self._tool

    @property
    def current_window(self) -> Window:
        """The display window (``window`` and ``cursor`` are QWidget methods, hence the names)."""
        return self._window

    @property
    def crosshair_position(self) -> tuple[int, int, int]:
        """The crosshair position (z, y, x)."""
        return self._cursor

    def plane_of(self, array: np.ndarray) -> np.ndarray:
        """The 2-D view ``(row, column)`` of a (z, y, x) array on this view's current slice (no copy)."""
        key: list[slice | int] = [slice(None)] * 3
        key[self.axis] = self._index
        return array[tuple(key)]

    def to_plane(self, z: int, y: int, x: int) -> tuple[int, int]:
        """``(row, column)`` of a volume index in this view's plane (the ``core.painting`` plane order)."""
        return self._layout.to_plane((z, y, x))

    # ------------------------------------------------------------------------------------------- data
    def set_volume(
        self,
        array: np.ndarray,
        geometry: Geometry | None = None,
        window: Window | tuple[float, float] | None = None,
        value_range: float | None = None,
        oriented: bool = True,
    ) -> None:
        """Show ``array`` (z, y, x) on ``geometry`` (spacing and direction; identity 1 mm when None).

        ``oriented=False``: the image has no patient orientation; it is shown as stored, and the view's
        title and edges claim no anatomy (no "Axial", no R/L, A/P)."""
        if array.ndim != 3:
            raise ValueError(f"expected a 3-D (z, y, x) array, got shape {array.shape}")
        spacing = tuple(geometry.spacing) if geometry is not None else (1.0, 1.0, 1.0)
        direction = tuple(geometry.direction) if geometry is not None else None
        self._array = array
        self._spacing_zyx = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
        self._layout = plane_layout(self.view, array.shape, spacing, direction, oriented)
        self._numbering = slice_numbering(geometry, self.axis, oriented) if geometry is not None else None
        self.title.setText(self.view.capitalize() if oriented else UNORIENTED_TITLES[self.view])
        self.title.setToolTip(
            ""
            if oriented
            else "This image has no patient orientation in its file (a planar image): it is shown as "
            "stored, without anatomical directions"
        )
        transform = QtGui.QTransform(*self._layout.transform)
        for item in (self.image_item, self.labels.item, self.confusion.item, self.brush_cursor):
            item.setTransform(transform)
        self._value_range = float(value_range) if value_range else data_range(array)
        if window is None:
            window = auto_window(array)
        self._window = window if isinstance(window, Window) else Window(float(window[0]), float(window[1]))
        self._label_array = self._label_array if self._fits(self._label_array) else None
        self._confusion_array = self._confusion_array if self._fits(self._confusion_array) else None
        self._cursor = (array.shape[0] // 2, array.shape[1] // 2, array.shape[2] // 2)
        self._index = self._cursor[self.axis]
        self.slider.blockSignals(True)
        self.slider.setRange(0, array.shape[self.axis] - 1)
        # slice 1 at the slider's left end, whatever the file's order
        self.slider.setInvertedAppearance(self._numbering is not None and self._numbering.reversed)
        self.slider.blockSignals(False)
        self._update_markers()
        self._show_slice()
        self._place_crosshair()
        self.reset_view()

    def _fits(self, other: np.ndarray | None) -> bool:
        return other is not None and self._array is not None and other.shape == self._array.shape

    def _show_slice(self) -> None:
        if self._array is None:
            return
        self.image_item.setImage(self.plane_of(self._array), autoLevels=False, levels=self._window.levels())
        self.labels.set_plane(None if self._label_array is None else self.plane_of(self._label_array))
        self.confusion.set_plane(
            None if self._confusion_array is None else self.plane_of(self._confusion_array)
        )
        self.slider.blockSignals(True)
        self.slider.setValue(self._index)
        self.slider.blockSignals(False)
        self.index_label.setText(
            self._numbering.label(self._index)
            if self._numbering is not None
            else f"{self._index + 1} / {self.slice_count}"
        )

    def set_slice(self, index: int) -> None:
        """Show slice ``index`` along :attr:`axis` (clamped); emits ``sliceChanged`` when it changes."""
        if self._array is None:
            return
        index = min(max(int(index), 0), self.slice_count - 1)
        if index == self._index:
            return
        self._index = index
        cursor = list(self._cursor)
        cursor[self.axis] = index
        self._cursor = (cursor[0], cursor[1], cursor[2])
        self._show_slice()
        self.sliceChanged.emit(index)
        if self._hover_pos is not None:  # the mouse rests on the view (wheel, keys): its voxel changed
            voxel = self.voxel_at(self._hover_pos)
            if voxel is not None:
                self.cursorMoved.emit(*voxel)

    def step_slice(self, steps: int) -> None:
        """Move ``steps`` wheel notches (positive: towards superior / anterior / patient left)."""
        self.set_slice(self._index + steps * self._layout.wheel_step)

    def set_window(self, center: float, width: float) -> None:
        """Display values in ``center ± width / 2`` (modality units)."""
        self._window = Window(float(center), max(float(width), 1e-6))
        self.image_item.setLevels(self._window.levels())

    def set_labels(
        self,
        array: np.ndarray | None,
        colors: Mapping[int, RGB] | None = None,
        opacity: float | None = None,
        visible: Mapping[int, bool] | None = None,
    ) -> None:
        """Overlay the label array (same shape as the volume; the view keeps a reference, not a copy)."""
        if array is not None and not self._fits(array):
            raise ValueError(f"label array shape {array.shape} does not match the volume")
        self._label_array = array
        self.labels.set_style(colors=colors, opacity=opacity, visible=visible)
        self.labels.set_plane(None if array is None or self._array is None else self.plane_of(array))

    def set_label_style(
        self,
        colors: Mapping[int, RGB] | None = None,
        opacity: float | None = None,
        visible: Mapping[int, bool] | None = None,
        mode: str | None = None,
    ) -> None:
        """Label colours, opacity (0..1), per-label visibility, "fill" or "outline"."""
        self.labels.set_style(colors=colors, opacity=opacity, visible=visible, mode=mode)

    def set_labels_visible(self, visible: bool) -> None:
        self.labels.item.setVisible(bool(visible))

    def refresh_overlay(self, region: Region | None = None) -> None:
        """Redraw the labels after the label array changed in ``region`` (volume indices; all when None)."""
        if self._label_array is None:
            return
        if region is None:
            self.labels.refresh()
            return
        zyx = normalize_region(region, self._label_array.shape)
        along = zyx[self.axis]
        if not along.start <= self._index < along.stop:
            return
        self.labels.refresh(zyx[self._layout.row_axis], zyx[self._layout.col_axis])

    def set_confusion(self, array: np.ndarray | None, opacity: float | None = None) -> None:
        """Overlay a confusion map (0 none, 1 TP, 2 FP, 3 FN), or remove it."""
        if array is not None and not self._fits(array):
            raise ValueError(f"confusion array shape {array.shape} does not match the volume")
        self._confusion_array = array
        if opacity is not None:
            self.confusion.set_style(opacity=opacity)
        self.confusion.item.setVisible(array is not None)
        self.confusion.set_plane(None if array is None or self._array is None else self.plane_of(array))

    # --------------------------------------------------------------------------------------- crosshair
    def set_crosshair(self, z: int, y: int, x: int) -> None:
        """Draw the crosshair through voxel (z, y, x) (the slice shown is not changed)."""
        self._cursor = (int(z), int(y), int(x))
        self._place_crosshair()

    def set_crosshair_visible(self, visible: bool) -> None:
        self.crosshair.set_visible(visible)

    def _place_crosshair(self) -> None:
        row, col = self._layout.to_plane(self._cursor)
        self.crosshair.set_position(*self._layout.pixel_to_mm(col + 0.5, row + 0.5))

    # ------------------------------------------------------------------------------------ tools, zoom
    def set_tool(self, mode: str) -> None:
        """ "navigate": left-drag moves the crosshair; "paint": left-drag paints (brush cursor shown)."""
        if mode not in (NAVIGATE, PAINT):
            raise ValueError(f"tool must be {NAVIGATE!r} or {PAINT!r}, got {mode!r}")
        self._tool = mode
        self.brush_cursor.setVisible(False)
        shape = Qt.CursorShape.CrossCursor if mode == PAINT else Qt.CursorShape.ArrowCursor
        self.graphics.viewport().setCursor(shape)

    def set_brush_radius(self, radius: float) -> None:
        """Brush radius in voxels of the plane's finer axis (as ``core.painting`` measures it)."""
        self._brush_radius = max(float(radius), 0.0)

    def set_right_drag(self, mode: str) -> None:
        """What right-drag does: "window" (window/level, default) or "zoom"."""
        if mode not in ("window", "zoom"):
            raise ValueError(f"right-drag mode must be 'window' or 'zoom', got {mode!r}")
        self._right_drag = mode

    def reset_view(self) -> None:
        """Fit the whole slice in the view."""
        width, height = self._layout.extent_mm
        self.view_box.setRange(QtCore.QRectF(0, 0, width, height), padding=0.02)

    def zoom(self, factor: float, center_mm: QtCore.QPointF | None = None) -> None:
        """Magnify by ``factor`` (> 1 zooms in) around ``center_mm`` (the view's centre when None)."""
        self.view_box.scaleBy((1.0 / factor, 1.0 / factor), center=center_mm)

    def _place_brush(self, row: int, col: int) -> None:
        sr, sc = self._spacing_zyx[self._layout.row_axis], self._spacing_zyx[self._layout.col_axis]
        r_mm = (self._brush_radius + 0.5) * min(sr, sc)
        self.brush_cursor.place(row, col, r_mm / sr, r_mm / sc)
        self.brush_cursor.setVisible(True)

    # -------------------------------------------------------------------------------- mouse mapping
    def voxel_at(self, pos: QtCore.QPointF | QtCore.QPoint, clip: bool = True) -> tuple[int, int, int] | None:
        """The voxel (z, y, x) under viewport position ``pos``; None outside the slice when ``clip``."""
        if self._array is None:
            return None
        point = QtCore.QPointF(pos)
        pixel = self.image_item.mapFromScene(self.graphics.mapToScene(point.toPoint()))
        row, col = math.floor(pixel.y()), math.floor(pixel.x())
        plane_shape = (self._array.shape[self._layout.row_axis], self._array.shape[self._layout.col_axis])
        if clip and not (0 <= row < plane_shape[0] and 0 <= col < plane_shape[1]):
            return None
        return self._layout.to_volume(self._index, row, col)

    def viewport_pos(self, z: int, y: int, x: int) -> QtCore.QPoint:
        """The viewport position of voxel (z, y, x)'s centre (the inverse of :meth:`voxel_at`)."""
        row, col = self._layout.to_plane((z, y, x))
        mm = QtCore.QPointF(*self._layout.pixel_to_mm(col + 0.5, row + 0.5))
        return self.graphics.mapFromScene(self.view_box.mapViewToScene(mm))

    # ---------------------------------------------------------------------------------------- events
    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        """Handle the mouse and keys of the graphics view (pyqtgraph's own interaction is off)."""
        kind = event.type()
        if watched is self.graphics and kind == QtCore.QEvent.Type.KeyPress:
            return self._key(event)
        if watched is not self.graphics.viewport():
            return False
        if kind == QtCore.QEvent.Type.MouseButtonPress:
            self._press(event)
            return True
        if kind == QtCore.QEvent.Type.MouseMove:
            self._move(event)
            return True
        if kind == QtCore.QEvent.Type.MouseButtonRelease:
            self._release(event)
            return True
        if kind in (QtCore.QEvent.Type.MouseButtonDblClick, QtCore.QEvent.Type.ContextMenu):
            return True  # right-drag is window/level: no pyqtgraph context menu
        if kind == QtCore.QEvent.Type.Wheel:
            self._wheel(event)
            return True
        if kind == QtCore.QEvent.Type.Leave:
            self.brush_cursor.setVisible(False)
            self._hover_pos = None
        elif kind == QtCore.QEvent.Type.Resize:
            self._update_markers()
        return False

    def _press(self, event: QtGui.QMouseEvent) -> None:
        self.graphics.setFocus(Qt.FocusReason.MouseFocusReason)
        button, mods, pos = event.button(), event.modifiers(), event.position()
        if self._array is None or self._drag is not None:
            return
        if button == Qt.MouseButton.LeftButton:
            voxel = self.voxel_at(pos)
            if voxel is None:
                return
            if self._tool == PAINT:
                self._drag = {"kind": "paint"}
                self.paintPressed.emit(*voxel, button, mods)
            else:
                self._drag = {"kind": "cursor"}
                self.clicked.emit(*voxel)
        elif button == Qt.MouseButton.RightButton:
            zoom = self._right_drag == "zoom" or bool(mods & Qt.KeyboardModifier.ControlModifier)
            self._drag = {
                "kind": "zoom" if zoom else "window",
                "start": pos,
                "last": pos,
                "window": self._window,
            }
        elif button == Qt.MouseButton.MiddleButton:
            self._drag = {"kind": "pan", "last": pos}

    def _move(self, event: QtGui.QMouseEvent) -> None:
        pos = event.position()
        self._hover_pos = QtCore.QPointF(pos)
        voxel = self.voxel_at(pos)
        if voxel is not None:
            self.cursorMoved.emit(*voxel)
            if self._tool == PAINT:
                self._place_brush(*self._layout.to_plane(voxel))
        elif self._tool == PAINT:
            self.brush_cursor.setVisible(False)
        drag = self._drag
        if drag is None:
            return
        kind = drag["kind"]
        if kind == "paint":
            self.paintMoved.emit(*self.voxel_at(pos, clip=False), event.buttons(), event.modifiers())
        elif kind == "cursor" and voxel is not None:
            self.clicked.emit(*voxel)
        elif kind == "window":
            delta = pos - drag["start"]
            window = drag_window(drag["window"], delta.x(), delta.y(), self._value_range)
            self.set_window(window.center, window.width)
            self.windowChanged.emit(window.center, window.width)
        elif kind == "pan":
            last = self.view_box.mapSceneToView(self.graphics.mapToScene(drag["last"].toPoint()))
            now = self.view_box.mapSceneToView(self.graphics.mapToScene(pos.toPoint()))
            self.view_box.translateBy(t=(last.x() - now.x(), last.y() - now.y()))
            drag["last"] = pos
        elif kind == "zoom":
            dy = pos.y() - drag["last"].y()
            center = self.view_box.mapSceneToView(self.graphics.mapToScene(drag["start"].toPoint()))
            self.zoom(math.exp(-dy * _ZOOM_PER_PIXEL), center)
            drag["last"] = pos

    def _release(self, event: QtGui.QMouseEvent) -> None:
        drag = self._drag
        if drag is None:
            return
        if drag["kind"] == "paint":
            if event.button() != Qt.MouseButton.LeftButton:
                return
            voxel = self.voxel_at(event.position(), clip=False)
            self.paintReleased.emit(*voxel, event.button(), event.modifiers())
        elif (drag["kind"] == "cursor" and event.button() != Qt.MouseButton.LeftButton) or (
            drag["kind"] in ("window", "zoom") and event.button() != Qt.MouseButton.RightButton
        ):
            return
        self._drag = None

    def _wheel(self, event: QtGui.QWheelEvent) -> None:
        delta = event.angleDelta().y()
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            center = self.view_box.mapSceneToView(self.graphics.mapToScene(event.position().toPoint()))
            self.zoom(_ZOOM_PER_NOTCH ** (-delta / 120.0), center)
            return
        self._wheel_rest += delta
        steps = int(self._wheel_rest / 120)
        self._wheel_rest -= steps * 120
        if steps:
            self.step_slice(steps)

    def _key(self, event: QtGui.QKeyEvent) -> bool:
        steps = {
            Qt.Key.Key_Up: 1,
            Qt.Key.Key_Down: -1,
            Qt.Key.Key_PageUp: 10,
            Qt.Key.Key_PageDown: -10,
        }.get(event.key())
        if steps is not None and not event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            self.step_slice(steps)
            return True
        if event.key() in (Qt.Key.Key_Home, Qt.Key.Key_End) and self._array is not None:
            number = 1 if event.key() == Qt.Key.Key_Home else self.slice_count  # first / last slice number
            self.set_slice(self._numbering.index(number) if self._numbering is not None else number - 1)
            return True
        return False
