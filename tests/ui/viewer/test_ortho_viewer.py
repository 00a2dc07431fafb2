"""OrthoViewer: linked crosshair, shared window and labels, status text, layouts, presets, screenshot."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.geometry import Geometry
from sd_fsmis.ui.viewer.ortho_viewer import OrthoViewer, format_value
from sd_fsmis.ui.viewer.slice_view import PAINT
from sd_fsmis.ui.viewer.window_level import (
    AUTO,
    CT_PRESETS,
    FROM_DICOM,
    Window,
    auto_window,
    drag_window,
    preset_names,
    resolve_preset,
)

SHAPE = (16, 48, 56)  # (z, y, x)
SPACING = (1.25, 1.25, 7.7)


def phantom(shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like phantom (body ellipse, organ, spine, a marker on the patient's left) and its labels."""
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    body = ((x - nx / 2) / (nx * 0.42)) ** 2 + ((y - ny / 2) / (ny * 0.33)) ** 2 + (
        (z - nz / 2) / (nz * 0.7)
    ) ** 2 <= 1
    organ = ((x - nx * 0.38) / (nx * 0.14)) ** 2 + ((y - ny * 0.45) / (ny * 0.13)) ** 2 + (
        (z - nz / 2) / (nz * 0.3)
    ) ** 2 <= 1
    spine = np.broadcast_to(
        ((x - nx / 2) / (nx * 0.06)) ** 2 + ((y - ny * 0.72) / (ny * 0.07)) ** 2 <= 1, shape
    )
    marker = np.broadcast_to((x - nx * 0.8) ** 2 + (y - ny * 0.4) ** 2 <= 4, shape)
    texture = (np.indices(shape).sum(axis=0) % 7 * 6).astype(np.int16)  # makes transparency visible
    volume = np.where(body, 20 + texture, -1000).astype(np.int16)
    volume[organ] = 110 + texture[organ]
    volume[spine & body] = 700
    volume[marker & body] = 1200
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[spine & body] = 2
    return volume, labels


@pytest.fixture
def grid() -> Geometry:
    z, y, x = SHAPE
    return Geometry(
        size=(x, y, z), spacing=SPACING, origin=(-35.0, -30.0, 100.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )


@pytest.fixture
def viewer(qtbot, grid) -> OrthoViewer:
    widget = OrthoViewer()
    qtbot.addWidget(widget)
    widget.resize(900, 600)
    widget.show()
    qtbot.waitExposed(widget)
    volume, labels = phantom()
    widget.set_volume(volume, grid, modality="CT")
    widget.set_labels(labels, {1: (255, 60, 60), 2: (80, 200, 255)}, opacity=0.45)
    QtWidgets.QApplication.processEvents()
    return widget


def press(view, pos: QtCore.QPoint, button=Qt.MouseButton.LeftButton) -> None:
    viewport = view.graphics.viewport()
    for kind, buttons in (
        (QtCore.QEvent.Type.MouseButtonPress, button),
        (QtCore.QEvent.Type.MouseButtonRelease, Qt.MouseButton.NoButton),
    ):
        event = QtGui.QMouseEvent(
            kind,
            QtCore.QPointF(pos),
            QtCore.QPointF(viewport.mapToGlobal(pos)),
            button,
            buttons,
            Qt.KeyboardModifier.NoModifier,
        )
        QtWidgets.QApplication.sendEvent(viewport, event)


# ------------------------------------------------------------------------------------ linked crosshair
def test_click_in_axial_moves_coronal_and_sagittal(viewer, qtbot):
    axial, coronal, sagittal = (viewer.views[n] for n in ("axial", "coronal", "sagittal"))
    z = axial.slice_index
    target = (z, 10, 40)
    with qtbot.waitSignal(viewer.crosshairChanged) as moved:
        press(axial, axial.viewport_pos(*target))
    assert tuple(moved.args) == target
    assert coronal.slice_index == 10 and sagittal.slice_index == 40 and axial.slice_index == z
    for view in viewer.views.values():
        assert view.crosshair_position == target
    # the coronal crosshair is drawn through x = 40 and z
    x_mm, y_mm = coronal.crosshair.position()
    assert (x_mm, y_mm) == pytest.approx(coronal.layout_info.pixel_to_mm(40.5, z + 0.5))


def test_click_in_sagittal_moves_axial(viewer):
    sagittal = viewer.views["sagittal"]
    target = (3, 20, sagittal.slice_index)
    press(sagittal, sagittal.viewport_pos(*target))
    assert viewer.views["axial"].slice_index == 3
    assert viewer.views["coronal"].slice_index == 20


def test_scrolling_one_view_moves_its_line_in_the_others(viewer, qtbot):
    axial = viewer.views["axial"]
    with qtbot.waitSignal(viewer.sliceChanged) as changed:
        axial.step_slice(+2)
    assert changed.args == ["axial", axial.slice_index]
    assert viewer.crosshair_position[0] == axial.slice_index
    assert viewer.views["coronal"].crosshair_position[0] == axial.slice_index


def test_go_to_slice_and_go_to(viewer):
    viewer.go_to_slice(5)
    assert viewer.views["axial"].slice_index == 5
    viewer.go_to(100, -4, 30)  # clamped into the volume
    assert viewer.crosshair_position == (SHAPE[0] - 1, 0, 30)
    assert viewer.views["sagittal"].slice_index == 30


# ------------------------------------------------------------------------------------ status text
def test_status_text_has_index_mm_and_hu(viewer, grid, qtbot):
    axial = viewer.views["axial"]
    target = (4, 20, 30)
    viewer.go_to(*target)
    with qtbot.waitSignal(viewer.statusChanged) as status:
        event = QtGui.QMouseEvent(
            QtCore.QEvent.Type.MouseMove,
            QtCore.QPointF(axial.viewport_pos(*target)),
            QtCore.QPointF(0, 0),
            Qt.MouseButton.NoButton,
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
        )
        QtWidgets.QApplication.sendEvent(axial.graphics.viewport(), event)
    x_mm, y_mm, z_mm = grid.index_to_mm(target)
    value = int(phantom()[0][target])
    text = status.args[0]
    assert text.startswith(
        f"slice 5 / {SHAPE[0]} (S {z_mm:.1f} mm) | x 30 y 20 z 4 | ({x_mm:.1f}, {y_mm:.1f}, {z_mm:.1f}) mm"
        f" | {value} HU"
    )
    assert format_value(12.0, "MR") == "12" and format_value(0.123456, "") == "0.12346"


def test_status_shows_label_and_no_hu_for_mr(qtbot, grid):
    widget = OrthoViewer()
    qtbot.addWidget(widget)
    volume, labels = phantom()
    widget.set_volume(volume.astype(np.float32) + 0.5, grid, modality="MR")
    widget.set_labels(labels)
    z, y, x = np.argwhere(labels == 1)[0]
    text = widget.status_text(int(z), int(y), int(x))
    assert "HU" not in text and text.endswith("| label 1")


# ------------------------------------------------------------------------------ shared window, labels
def test_window_is_shared_between_views(viewer, qtbot):
    coronal = viewer.views["coronal"]
    start = coronal.graphics.viewport().rect().center()
    viewport = coronal.graphics.viewport()
    for kind, pos, button, buttons in (
        (QtCore.QEvent.Type.MouseButtonPress, start, Qt.MouseButton.RightButton, Qt.MouseButton.RightButton),
        (
            QtCore.QEvent.Type.MouseMove,
            start + QtCore.QPoint(40, 10),
            Qt.MouseButton.NoButton,
            Qt.MouseButton.RightButton,
        ),
        (
            QtCore.QEvent.Type.MouseButtonRelease,
            start + QtCore.QPoint(40, 10),
            Qt.MouseButton.RightButton,
            Qt.MouseButton.NoButton,
        ),
    ):
        event = QtGui.QMouseEvent(
            kind, QtCore.QPointF(pos), QtCore.QPointF(pos), button, buttons, Qt.KeyboardModifier.NoModifier
        )
        QtWidgets.QApplication.sendEvent(viewport, event)
    window = viewer.current_window
    assert window.width > CT_PRESETS["CT abdomen"].width
    for view in viewer.views.values():
        assert tuple(view.image_item.getLevels()) == pytest.approx(window.levels())


def test_presets(viewer, qtbot):
    assert viewer.current_window == CT_PRESETS["CT abdomen"]  # CT without DICOM tags
    with qtbot.waitSignal(viewer.windowChanged) as changed:
        viewer.apply_preset("lung")
    assert changed.args == [-600.0, 1500.0]
    assert tuple(viewer.views["sagittal"].image_item.getLevels()) == pytest.approx((-1350.0, 150.0))
    assert viewer.apply_preset("Bone") == Window(300.0, 1500.0)
    assert resolve_preset("soft-tissue") == Window(40.0, 350.0)
    assert resolve_preset("BRAIN") == Window(40.0, 80.0)
    with pytest.raises(ValueError, match="no window"):
        viewer.apply_preset(FROM_DICOM)
    with pytest.raises(ValueError, match="unknown"):
        viewer.apply_preset("liver-ish")
    assert viewer.preset_names() == [*CT_PRESETS, AUTO]


def test_dicom_and_auto_windows(qtbot, grid):
    widget = OrthoViewer()
    qtbot.addWidget(widget)
    volume = np.random.default_rng(0).normal(300.0, 50.0, SHAPE).astype(np.float32)
    volume[0, 0, 0] = 1e6  # a hot voxel the auto window ignores
    widget.set_volume(volume, grid, modality="MR", window=(250.0, 500.0))
    assert widget.current_window == Window(250.0, 500.0)
    assert widget.preset_names() == [FROM_DICOM, AUTO]
    auto = widget.apply_preset("auto")
    assert auto == auto_window(volume)
    assert 100 < auto.levels()[0] < 200 and 400 < auto.levels()[1] < 500
    assert preset_names("CT") == [*CT_PRESETS, AUTO]
    assert drag_window(Window(0.0, 10.0), -1e9, 0.0, 1000.0).width > 0


def test_label_array_is_shared_and_refreshed(viewer):
    labels = viewer.views["axial"].labels  # overlay object of the axial view
    shared = [view.plane_of(viewer._labels) for view in viewer.views.values()]
    assert all(np.shares_memory(plane, viewer._labels) for plane in shared)
    z, y, x = viewer.crosshair_position
    viewer._labels[z, y, x] = 3  # paint the crosshair voxel: every view shows it after a refresh
    region = (slice(z, z + 1), slice(y, y + 1), slice(x, x + 1))
    viewer.refresh_overlay(region)
    assert labels.buffer[y, x] == 3
    assert viewer.views["coronal"].labels.buffer[z, x] == 3
    assert viewer.views["sagittal"].labels.buffer[z, y] == 3
    viewer.set_label_style(opacity=0.2)
    assert all(view.labels.lut[1, 3] == 51 for view in viewer.views.values())


def test_paint_is_relayed_with_the_plane_axis(viewer, qtbot):
    viewer.set_tool(PAINT)
    coronal = viewer.views["coronal"]
    target = (2, coronal.slice_index, 9)
    with qtbot.waitSignal(viewer.paintPressed) as pressed:
        press(coronal, coronal.viewport_pos(*target))
    assert pressed.args[:4] == [1, *target]


def test_confusion_shown_in_all_views(viewer):
    confusion = np.zeros(SHAPE, np.uint8)
    confusion[:, :, :4] = 2
    viewer.set_confusion(confusion)
    assert all(view.confusion.item.isVisible() for view in viewer.views.values())
    viewer.set_confusion(None)
    assert not any(view.confusion.item.isVisible() for view in viewer.views.values())


# ------------------------------------------------------------------------------------------- layouts
def test_layouts_and_main_view(viewer, qtbot):
    axial, coronal = viewer.views["axial"], viewer.views["coronal"]
    QtWidgets.QApplication.processEvents()
    assert axial.width() > coronal.width()
    with qtbot.waitSignal(viewer.mainViewChanged):
        qtbot.mouseClick(coronal.maximize_button, Qt.MouseButton.LeftButton)
    QtWidgets.QApplication.processEvents()
    assert viewer.main_view == "coronal" and coronal.width() > axial.width()
    qtbot.mouseClick(coronal.maximize_button, Qt.MouseButton.LeftButton)  # the large one: single view
    assert viewer.layout_mode == "single"
    assert coronal.isVisible() and not axial.isVisible()
    viewer.set_layout("row")
    QtWidgets.QApplication.processEvents()
    assert all(view.isVisible() for view in viewer.views.values())
    assert abs(axial.width() - coronal.width()) <= 2
    viewer.cycle_layout()
    assert viewer.layout_mode == "single"
    viewer.set_layout("main")
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
    assert viewer.main_view == "sagittal"
    with pytest.raises(ValueError):
        viewer.set_layout("grid")


# ---------------------------------------------------------------------------------------- screenshot
def test_screenshot_writes_a_png_atomically(viewer, tmp_path):
    path = viewer.screenshot(tmp_path / "shots" / "viewer.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = QtGui.QImage(str(path))
    assert (image.width(), image.height()) == (viewer.width(), viewer.height())
    assert [p.name for p in path.parent.iterdir()] == ["viewer.png"]  # no temporary file left
