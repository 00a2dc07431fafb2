"""The paint tools: the OrthoViewer's paint signals become strokes and fills on the active label layer.

The tool state (navigate / brush / eraser / fill, brush radius, "paint over other labels") lives here; the
tools panel and the keyboard shortcuts change it. A press starts a
:class:`~sd_fsmis.core.session.layers.Stroke`
(brush or eraser) or fills; moves add points; the release finishes the stroke: one undo step. The layer
announces each change (``layer.events.data``) and the overlay redraws only that region.
Shift+drag with the brush erases (like ITK-SNAP's right button).
"""

from __future__ import annotations

import logging

from PySide6 import QtCore
from PySide6.QtCore import Qt, Signal

from sd_fsmis.core.session.layers import LabelLayer, Stroke
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.viewer.ortho_viewer import OrthoViewer
from sd_fsmis.ui.viewer.slice_view import NAVIGATE, PAINT

log = logging.getLogger(__name__)

BRUSH, ERASER, FILL = "brush", "eraser", "fill"
TOOLS = (NAVIGATE, BRUSH, ERASER, FILL)
MIN_RADIUS, MAX_RADIUS = 0.0, 60.0
DEFAULT_LAYER_NAME = "Segmentation"


def plane_point(axis: int, z: int, y: int, x: int) -> tuple[int, tuple[float, float]]:
    """``(slice index, (row, column))`` of voxel (z, y, x) on the plane normal to ``axis`` (core.painting)."""
    if axis == 0:
        return z, (float(y), float(x))
    if axis == 1:
        return y, (float(z), float(x))
    return x, (float(z), float(y))


def ensure_editable_layer(study: Study, label_name: str = "") -> LabelLayer:
    """The study's active layer when it may be painted, else a new "Segmentation" layer with one label.

    Like 3D Slicer's Segment Editor: one click and the user paints. The first label is ``label_name`` (or
    "Label 1") in ITK-SNAP's first colour.
    """
    layer = study.active_layer
    if layer is not None and layer.kind != "reference":
        return layer
    layer = study.add_layer(DEFAULT_LAYER_NAME)
    layer.add_label(label_name or "Label 1")
    return layer


class PaintController(QtCore.QObject):
    """Tool state and the link from the viewer's mouse to the active layer of the active study."""

    toolChanged = Signal(str)
    radiusChanged = Signal(float)
    overwriteChanged = Signal(bool)
    painted = Signal()  # a stroke or fill changed the layer (for "labels were hidden: show them")

    def __init__(self, session: Session, viewer: OrthoViewer, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.viewer = viewer
        self._tool = NAVIGATE
        self._radius = 5.0
        self._overwrite = True
        self._stroke: Stroke | None = None
        viewer.paintPressed.connect(self._pressed)
        viewer.paintMoved.connect(self._moved)
        viewer.paintReleased.connect(self._released)
        viewer.set_brush_radius(self._radius)

    # ---------------------------------------------------------------------------------------- state
    @property
    def tool(self) -> str:
        return self._tool

    def set_tool(self, tool: str) -> None:
        """ "navigate", "brush", "eraser" or "fill"."""
        if tool not in TOOLS:
            raise ValueError(f"tool must be one of {TOOLS}, got {tool!r}")
        if tool != self._tool:
            self._finish_stroke()
            self._tool = tool
            self.viewer.set_tool(NAVIGATE if tool == NAVIGATE else PAINT)
            self.viewer.set_brush_radius(self._radius if tool in (BRUSH, ERASER) else 0.0)
            self.toolChanged.emit(tool)

    @property
    def radius(self) -> float:
        return self._radius

    def set_radius(self, radius: float) -> None:
        radius = float(min(max(radius, MIN_RADIUS), MAX_RADIUS))
        if radius != self._radius:
            self._radius = radius
            if self._tool in (BRUSH, ERASER):
                self.viewer.set_brush_radius(radius)
            self.radiusChanged.emit(radius)

    def grow(self, step: int = 1) -> None:
        """``]``: a larger brush (``[``: ``step=-1``); steps of 1 voxel, 2 above 10, 5 above 30."""
        r = self._radius
        size = 5 if r + (step > 0) > 30 else 2 if r + (step > 0) > 10 else 1
        self.set_radius(r + step * size)

    @property
    def overwrite(self) -> bool:
        """True: the brush paints over other labels, the eraser erases any; False: only the active label."""
        return self._overwrite

    def set_overwrite(self, overwrite: bool) -> None:
        overwrite = bool(overwrite)
        if overwrite != self._overwrite:
            self._overwrite = overwrite
            self.overwriteChanged.emit(overwrite)

    @property
    def stroke_active(self) -> bool:
        """True between the press and the release of a brush or eraser stroke."""
        return self._stroke is not None and not self._stroke.finished

    # --------------------------------------------------------------------------------------- mouse
    def target_layer(self) -> LabelLayer | None:
        """The layer the tools paint on (created when the active study has none to paint on)."""
        study = self.session.active_study
        if study is None:
            return None
        return ensure_editable_layer(study) if study.active_layer is None else study.active_layer

    def _pressed(self, axis: int, z: int, y: int, x: int, buttons: object, modifiers: object) -> None:
        layer = self.target_layer()
        if layer is None or self._tool == NAVIGATE:
            return
        self._finish_stroke()
        if not layer.visible:
            layer.visible = True  # painting on a hidden layer would be invisible
        index, point = plane_point(axis, z, y, x)
        shift = bool(modifiers & Qt.KeyboardModifier.ShiftModifier) if modifiers is not None else False
        if self._tool == FILL:
            layer.fill(axis, index, point, overwrite=self._overwrite)
            self.painted.emit()
            return
        tool = ERASER if (self._tool == ERASER or shift) else BRUSH
        only = None if (self._overwrite or tool == BRUSH) else layer.selected_label
        self._stroke = layer.begin_stroke(
            axis, index, tool=tool, radius=self._radius, overwrite=self._overwrite, only_label=only
        )
        self._stroke.add_point(point)
        self.painted.emit()

    def _moved(self, axis: int, z: int, y: int, x: int, buttons: object, modifiers: object) -> None:
        stroke = self._stroke
        if stroke is None or stroke.finished or stroke.axis != axis:
            return
        stroke.add_point(plane_point(axis, z, y, x)[1])

    def _released(self, axis: int, z: int, y: int, x: int, buttons: object, modifiers: object) -> None:
        stroke = self._stroke
        if stroke is not None and not stroke.finished and stroke.axis == axis:
            stroke.add_point(plane_point(axis, z, y, x)[1])
        self._finish_stroke()

    def _finish_stroke(self) -> None:
        if self._stroke is not None:
            if not self._stroke.finished:
                self._stroke.finish()
            self._stroke = None

    def cancel_stroke(self) -> None:
        """Escape during a stroke: take back what it painted (no undo step)."""
        if self._stroke is not None:
            self._stroke.cancel()
            self._stroke = None
