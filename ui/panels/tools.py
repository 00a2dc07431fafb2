"""The paint tools panel: navigate / brush / eraser / fill, brush radius, "paint over other labels"."""

from __future__ import annotations

from functools import partial

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.ui.viewer.paint_controller import BRUSH, ERASER, FILL, MAX_RADIUS, PaintController
from sd_fsmis.ui.viewer.slice_view import NAVIGATE

#: tool, button text, key, tooltip
TOOL_BUTTONS = (
    (NAVIGATE, "Navigate", "N", "Click or drag to move the crosshair; right-drag: window/level"),
    (BRUSH, "Brush", "B", "Paint the active label (Shift+drag erases)"),
    (ERASER, "Eraser", "E", "Erase (every label, or only the active one when not painting over others)"),
    (FILL, "Fill", "F", "Fill the enclosed region under the click with the active label"),
)


class ToolsPanel(QtWidgets.QWidget):
    """Buttons and controls of the :class:`PaintController` (kept in step with its signals)."""

    def __init__(self, controller: PaintController, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._spacing_mm = 1.0
        self.buttons: dict[str, QtWidgets.QToolButton] = {}
        group = QtWidgets.QButtonGroup(self)
        group.setExclusive(True)
        grid = QtWidgets.QGridLayout()
        grid.setSpacing(4)
        for i, (tool, text, key, tip) in enumerate(TOOL_BUTTONS):
            button = QtWidgets.QToolButton()
            button.setText(f"{text}  ({key})")
            button.setToolTip(f"{tip}  [{key}]")
            button.setCheckable(True)
            button.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
            button.clicked.connect(partial(controller.set_tool, tool))
            group.addButton(button)
            grid.addWidget(button, i // 2, i % 2)
            self.buttons[tool] = button

        self.radius_slider = QtWidgets.QSlider(Qt.Orientation.Horizontal)
        self.radius_slider.setRange(0, int(MAX_RADIUS))
        self.radius_slider.setToolTip("Brush radius in voxels  [ and ] keys")
        self.radius_slider.valueChanged.connect(lambda v: controller.set_radius(float(v)))
        self.radius_label = QtWidgets.QLabel()
        self.radius_label.setMinimumWidth(96)
        radius_row = QtWidgets.QHBoxLayout()
        radius_row.addWidget(QtWidgets.QLabel("Radius"))
        radius_row.addWidget(self.radius_slider, 1)
        radius_row.addWidget(self.radius_label)

        self.overwrite_box = QtWidgets.QCheckBox("Paint over other labels")
        self.overwrite_box.setToolTip(
            "On: the brush replaces any label and the eraser erases any label.\n"
            "Off: the brush paints only on background and the eraser erases only the active label."
        )
        self.overwrite_box.toggled.connect(controller.set_overwrite)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(grid)
        layout.addLayout(radius_row)
        layout.addWidget(self.overwrite_box)
        layout.addStretch(1)

        controller.toolChanged.connect(self._show_tool)
        controller.radiusChanged.connect(self._show_radius)
        controller.overwriteChanged.connect(self.overwrite_box.setChecked)
        self._show_tool(controller.tool)
        self._show_radius(controller.radius)
        self.overwrite_box.setChecked(controller.overwrite)

    def set_spacing(self, finest_mm: float) -> None:
        """The study's finest in-plane spacing, to show the radius in millimetres too."""
        self._spacing_mm = float(finest_mm) if finest_mm > 0 else 1.0
        self._show_radius(self.controller.radius)

    def _show_tool(self, tool: str) -> None:
        self.buttons[tool].setChecked(True)
        painting = tool in (BRUSH, ERASER)
        self.radius_slider.setEnabled(painting)

    def _show_radius(self, radius: float) -> None:
        self.radius_slider.blockSignals(True)
        self.radius_slider.setValue(round(radius))
        self.radius_slider.blockSignals(False)
        mm = radius * self._spacing_mm
        self.radius_label.setText(f"{radius:g} vx · {mm:.1f} mm")
