"""SliceView: slices shown, orientation and aspect, navigation, window/level, painting signals, overlays."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.geometry import Geometry
from sd_fsmis.ui.colors import FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE
from sd_fsmis.ui.pyside_fixes import binding_leaks_singletons, protect_singletons
from sd_fsmis.ui.viewer.orientation import plane_layout
from sd_fsmis.ui.viewer.overlays import label_lut, outline_mask
from sd_fsmis.ui.viewer.slice_view import PAINT, SliceView
from sd_fsmis.ui.viewer.window_level import DRAG_FRACTION_PER_PIXEL

SHAPE = (12, 40, 48)  # (z, y, x)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: NIfTI-like storage (RAS index order): index x grows towards the patient's right, y towards anterior.
RAS_STORED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
#: A DICOM series stacked head to feet: index z grows towards inferior.
HEAD_FIRST = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def geometry(direction=IDENTITY, spacing=(1.25, 1.25, 7.7), shape=SHAPE) -> Geometry:
    z, y, x = shape
    return Geometry(size=(x, y, z), spacing=spacing, origin=(0.0, 0.0, 0.0), direction=direction)


def ramp_volume(shape=SHAPE) -> np.ndarray:
    """Every voxel distinct: value = z * 10000 + y * 100 + x."""
    z, y, x = np.indices(shape)
    return (z * 10000 + y * 100 + x).astype(np.float32)


def make_view(qtbot, view: str = "axial", array=None, geo=None, size=(400, 400)) -> SliceView:
    widget = SliceView(view)
    qtbot.addWidget(widget)
    widget.resize(*size)
    widget.show()
    qtbot.waitExposed(widget)
    widget.set_volume(ramp_volume() if array is None else array, geo or geometry())
    QtWidgets.QApplication.processEvents()
    return widget


def mouse(
    widget: SliceView, kind, pos: QtCore.QPoint, button=Qt.MouseButton.LeftButton, buttons=None, mods=None
):
    """Send a mouse event to the view's image area at viewport position ``pos``."""
    viewport = widget.graphics.viewport()
    local = QtCore.QPointF(pos)
    event = QtGui.QMouseEvent(
        kind,
        local,
        QtCore.QPointF(viewport.mapToGlobal(pos)),
        button,
        button if buttons is None else buttons,
        Qt.KeyboardModifier.NoModifier if mods is None else mods,
    )
    QtWidgets.QApplication.sendEvent(viewport, event)


def wheel(widget: SliceView, notches: int, mods=Qt.KeyboardModifier.NoModifier, pos=None):
    viewport = widget.graphics.viewport()
    local = QtCore.QPointF(pos if pos is not None else viewport.rect().center())
    event = QtGui.QWheelEvent(
        local,
        QtCore.QPointF(viewport.mapToGlobal(local.toPoint())),
        QtCore.QPoint(0, 0),
        QtCore.QPoint(0, 120 * notches),
        Qt.MouseButton.NoButton,
        mods,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QtWidgets.QApplication.sendEvent(viewport, event)


def rendered(widget: SliceView) -> np.ndarray:
    """The image area as drawn on screen: (rows, cols, 3) uint8."""
    image = widget.graphics.viewport().grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    ptr = image.constBits()
    array = np.frombuffer(ptr, np.uint8, count=image.sizeInBytes()).reshape(
        image.height(), image.bytesPerLine()
    )
    return array[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


# ------------------------------------------------------------------------------------------ slices shown
@pytest.mark.parametrize(
    ("view", "take"),
    [
        ("axial", lambda a, i: a[i]),
        ("coronal", lambda a, i: a[:, i, :]),
        ("sagittal", lambda a, i: a[:, :, i]),
    ],
)
def test_displayed_slice_equals_array_slice(qtbot, view, take):
    array = ramp_volume()
    widget = make_view(qtbot, view, array)
    for index in (0, 3, widget.slice_count - 1):
        widget.set_slice(index)
        assert widget.slice_index == index
        np.testing.assert_array_equal(widget.image_item.image, take(array, index))


def test_wheel_and_slider_move_through_slices(qtbot):
    widget = make_view(qtbot, "axial")
    start = widget.slice_index
    with qtbot.waitSignal(widget.sliceChanged) as blocker:
        wheel(widget, +1)
    assert blocker.args == [start + 1]  # identity z: wheel up = superior = next index
    wheel(widget, -3)
    assert widget.slice_index == start - 2
    widget.slider.setValue(2)
    assert widget.slice_index == 2
    np.testing.assert_array_equal(widget.image_item.image, ramp_volume()[2])
    widget.set_slice(999)  # clamped
    assert widget.slice_index == SHAPE[0] - 1
    assert widget.index_label.text().startswith(f"{SHAPE[0]} / {SHAPE[0]} · S ")


def test_wheel_goes_superior_on_a_head_first_stack(qtbot):
    widget = make_view(qtbot, "axial", geo=geometry(HEAD_FIRST))
    start = widget.slice_index
    wheel(widget, +1)
    assert widget.slice_index == start - 1  # index z grows towards the feet
    # numbered from the feet up all the same: the last index is slice 1, Home shows it, the label says so
    qtbot.keyClick(widget.graphics, Qt.Key.Key_Home)
    assert widget.slice_index == widget.slice_count - 1
    assert widget.index_label.text().startswith(f"1 / {widget.slice_count} · S ")
    qtbot.keyClick(widget.graphics, Qt.Key.Key_End)
    assert widget.slice_index == 0


def test_keys_move_through_slices(qtbot):
    widget = make_view(qtbot, "axial")
    start = widget.slice_index
    qtbot.keyClick(widget.graphics, Qt.Key.Key_Up)
    assert widget.slice_index == start + 1
    qtbot.keyClick(widget.graphics, Qt.Key.Key_Home)
    assert widget.slice_index == 0


# ------------------------------------------------------------------------------- orientation, aspect
def marker_volume(x_index: int, y_index: int = 8) -> np.ndarray:
    array = np.zeros(SHAPE, np.float32)
    array[:, y_index - 2 : y_index + 3, x_index - 2 : x_index + 3] = 1000.0
    return array


def bright_centre(widget: SliceView) -> tuple[float, float]:
    """(x, y) of the bright marker on screen, as fractions of the image area."""
    pixels = rendered(widget).sum(axis=2)
    rows, cols = np.nonzero(pixels > 600)
    return cols.mean() / pixels.shape[1], rows.mean() / pixels.shape[0]


@pytest.mark.parametrize(("direction", "left_x"), [(IDENTITY, SHAPE[2] - 6), (RAS_STORED, 5)])
def test_patient_left_shows_on_the_screen_right_in_axial(qtbot, direction, left_x):
    """Radiological convention: a marker on the patient's left lies right of the centre, anterior up."""
    anterior_y = 8 if direction == IDENTITY else SHAPE[1] - 9  # RAS storage: y grows towards anterior
    widget = make_view(qtbot, "axial", marker_volume(left_x, anterior_y), geometry(direction))
    widget.crosshair.set_visible(False)
    widget.set_window(500.0, 1000.0)
    x, y = bright_centre(widget)
    assert x > 0.6
    assert y < 0.4


def test_superior_is_up_in_coronal_even_when_stacked_head_first(qtbot):
    array = np.zeros(SHAPE, np.float32)
    array[:2] = 1000.0  # index z 0..1: superior end of a head-first stack
    widget = make_view(qtbot, "coronal", array, geometry(HEAD_FIRST))
    widget.crosshair.set_visible(False)
    widget.set_window(500.0, 1000.0)
    _, y = bright_centre(widget)
    assert y < 0.4


def test_sagittal_shows_anterior_on_the_left(qtbot):
    array = np.zeros(SHAPE, np.float32)
    array[:, :4, :] = 1000.0  # low y = anterior (LPS)
    widget = make_view(qtbot, "sagittal", array)
    widget.crosshair.set_visible(False)
    widget.set_window(500.0, 1000.0)
    x, _ = bright_centre(widget)
    assert x < 0.4


@pytest.mark.parametrize("view", ["coronal", "sagittal"])
def test_anisotropic_voxels_keep_their_proportions(qtbot, view):
    """1.25 x 1.25 x 7.7 mm voxels: a slice step is drawn 7.7 / 1.25 times taller than a column step."""
    widget = make_view(qtbot, view)
    rect = widget.image_item.mapRectToScene(QtCore.QRectF(0, 0, 1, 1))  # one plane pixel on screen
    assert rect.height() / rect.width() == pytest.approx(7.7 / 1.25, rel=1e-3)
    array_aspect = (SHAPE[0] * 7.7) / (SHAPE[2 if view == "coronal" else 1] * 1.25)
    whole = widget.image_item.mapRectToScene(widget.image_item.boundingRect())
    assert whole.height() / whole.width() == pytest.approx(array_aspect, rel=1e-3)


def test_oblique_transposed_acquisition_maps_back_to_volume_indices():
    """A coronal acquisition (index y runs inferior, z posterior): the axial view slices along y."""
    layout = plane_layout("axial", SHAPE, (1.0, 1.0, 1.0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    assert layout.axis == 1
    assert layout.to_volume(5, 3, 7) == (3, 5, 7)
    assert layout.to_plane((3, 5, 7)) == (3, 7)


# -------------------------------------------------------------------------------------- mouse mapping
@pytest.mark.parametrize("direction", [IDENTITY, RAS_STORED, HEAD_FIRST])
@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_paint_signals_carry_volume_indices(qtbot, view, direction):
    widget = make_view(qtbot, view, geo=geometry(direction))
    widget.set_tool(PAINT)
    z0, y0, x0 = widget.crosshair_position
    targets = {"axial": [(z0, 5, 7), (z0, 30, 40)], "coronal": [(2, y0, 7), (10, y0, 40)]}
    targets["sagittal"] = [(2, 5, x0), (10, 30, x0)]
    first, second = targets[view]
    with qtbot.waitSignal(widget.paintPressed) as pressed:
        mouse(widget, QtCore.QEvent.Type.MouseButtonPress, widget.viewport_pos(*first))
    assert tuple(pressed.args[:3]) == first
    assert pressed.args[3] == Qt.MouseButton.LeftButton
    with qtbot.waitSignal(widget.paintMoved) as moved:
        mouse(
            widget,
            QtCore.QEvent.Type.MouseMove,
            widget.viewport_pos(*second),
            Qt.MouseButton.NoButton,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.ShiftModifier,
        )
    assert tuple(moved.args[:3]) == second
    assert moved.args[4] & Qt.KeyboardModifier.ShiftModifier
    with qtbot.waitSignal(widget.paintReleased) as released:
        mouse(
            widget,
            QtCore.QEvent.Type.MouseButtonRelease,
            widget.viewport_pos(*second),
            buttons=Qt.MouseButton.NoButton,
        )
    assert tuple(released.args[:3]) == second
    assert widget.voxel_at(widget.viewport_pos(*first)) == first


def test_navigate_click_emits_clicked_not_paint(qtbot):
    widget = make_view(qtbot, "axial")
    painted = []
    widget.paintPressed.connect(lambda *a: painted.append(a))
    target = (widget.slice_index, 11, 13)
    with qtbot.waitSignal(widget.clicked) as clicked:
        mouse(widget, QtCore.QEvent.Type.MouseButtonPress, widget.viewport_pos(*target))
    mouse(
        widget,
        QtCore.QEvent.Type.MouseButtonRelease,
        widget.viewport_pos(*target),
        buttons=Qt.MouseButton.NoButton,
    )
    assert tuple(clicked.args) == target
    assert painted == []


def test_hover_reports_voxel_and_places_the_brush_cursor(qtbot):
    widget = make_view(qtbot, "axial", geo=geometry(spacing=(1.0, 1.0, 1.0)))
    widget.set_tool(PAINT)
    widget.set_brush_radius(4)
    target = (widget.slice_index, 20, 20)
    with qtbot.waitSignal(widget.cursorMoved) as moved:
        mouse(widget, QtCore.QEvent.Type.MouseMove, widget.viewport_pos(*target), Qt.MouseButton.NoButton)
    assert tuple(moved.args) == target
    assert widget.brush_cursor.isVisible()
    rect = widget.brush_cursor.rect()
    assert rect.width() == pytest.approx(9.0) and rect.center().x() == pytest.approx(20.5)


def test_wheel_under_a_resting_mouse_reports_the_new_voxel(qtbot):
    """Scrolling with the wheel while the mouse rests on the view updates the voxel under it (the status
    bar's z went stale until the mouse moved)."""
    widget = make_view(qtbot, "axial", geo=geometry(spacing=(1.0, 1.0, 1.0)))
    z = widget.slice_index
    mouse(widget, QtCore.QEvent.Type.MouseMove, widget.viewport_pos(z, 20, 20), Qt.MouseButton.NoButton)
    with qtbot.waitSignal(widget.cursorMoved) as moved:
        wheel(widget, 1)
    assert moved.args[0] != z and moved.args[0] == widget.slice_index and tuple(moved.args[1:]) == (20, 20)


# ---------------------------------------------------------------------------- window/level, zoom, pan
def test_right_drag_changes_window_and_level(qtbot):
    widget = make_view(qtbot, "axial")
    widget.set_window(100.0, 200.0)
    value_range = widget._value_range
    start = widget.graphics.viewport().rect().center()
    mouse(widget, QtCore.QEvent.Type.MouseButtonPress, start, Qt.MouseButton.RightButton)
    with qtbot.waitSignal(widget.windowChanged) as changed:
        mouse(
            widget,
            QtCore.QEvent.Type.MouseMove,
            start + QtCore.QPoint(50, -20),
            Qt.MouseButton.NoButton,
            Qt.MouseButton.RightButton,
        )
    mouse(
        widget,
        QtCore.QEvent.Type.MouseButtonRelease,
        start + QtCore.QPoint(50, -20),
        Qt.MouseButton.RightButton,
        Qt.MouseButton.NoButton,
    )
    step = value_range * DRAG_FRACTION_PER_PIXEL
    center, width = changed.args
    assert width == pytest.approx(200.0 + 50 * step)  # right: wider
    assert center == pytest.approx(100.0 - 20 * step)  # up: lower level, brighter
    low, high = widget.image_item.getLevels()
    assert (low, high) == pytest.approx((center - width / 2, center + width / 2))


def test_ctrl_wheel_zooms_and_middle_drag_pans(qtbot):
    widget = make_view(qtbot, "axial")
    (x0, x1), _ = widget.view_box.viewRange()
    wheel(widget, +2, Qt.KeyboardModifier.ControlModifier)
    (z0, z1), _ = widget.view_box.viewRange()
    assert (z1 - z0) < (x1 - x0) * 0.9
    start = widget.graphics.viewport().rect().center()
    mouse(widget, QtCore.QEvent.Type.MouseButtonPress, start, Qt.MouseButton.MiddleButton)
    mouse(
        widget,
        QtCore.QEvent.Type.MouseMove,
        start + QtCore.QPoint(30, 0),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.MiddleButton,
    )
    mouse(
        widget,
        QtCore.QEvent.Type.MouseButtonRelease,
        start + QtCore.QPoint(30, 0),
        Qt.MouseButton.MiddleButton,
        Qt.MouseButton.NoButton,
    )
    (p0, p1), _ = widget.view_box.viewRange()
    assert p0 < z0 and p1 - p0 == pytest.approx(z1 - z0)  # the image followed the mouse to the right
    widget.reset_view()
    (r0, r1), _ = widget.view_box.viewRange()
    assert r1 - r0 == pytest.approx(x1 - x0, rel=1e-3)


# ------------------------------------------------------------------------------------------- overlays
def test_label_overlay_refreshes_only_the_given_region(qtbot):
    widget = make_view(qtbot, "axial")
    labels = np.zeros(SHAPE, np.uint8)
    widget.set_labels(labels, {1: (255, 0, 0)}, opacity=0.5)
    z = widget.slice_index
    labels[z, 5:9, 5:9] = 1
    labels[z, 30:32, 30:32] = 2  # outside the region given: not redrawn yet
    widget.refresh_overlay((slice(z, z + 1), slice(5, 9), slice(5, 9)))
    buffer = widget.labels.buffer
    assert buffer[6, 6] == 1 and buffer[31, 31] == 0
    widget.refresh_overlay(((0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[2])))
    assert buffer[31, 31] == 2
    other = (slice(z + 1, z + 2), slice(0, 10), slice(0, 10))  # another slice: nothing to do
    labels[z, 0, 0] = 1
    widget.refresh_overlay(other)
    assert buffer[0, 0] == 0
    np.testing.assert_array_equal(label_lut({1: (255, 0, 0)}, 0.5)[1], [255, 0, 0, 128])


def test_label_visibility_and_outline_mode(qtbot):
    widget = make_view(qtbot, "axial")
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 10:20, 10:20] = 1
    labels[:, 25:30, 25:30] = 2
    widget.set_labels(labels, {1: (255, 0, 0), 2: (0, 0, 255)}, opacity=0.4, visible={2: False})
    assert widget.labels.lut[1, 3] == 102 and widget.labels.lut[2, 3] == 0
    widget.set_label_style(mode="outline")
    buffer = widget.labels.buffer
    assert buffer[10, 15] == 1 and buffer[15, 15] == 0  # contour kept, inside cleared
    np.testing.assert_array_equal(buffer != 0, outline_mask(labels[widget.slice_index]))
    assert widget.labels.lut[1, 3] == 255  # contours are drawn opaque
    widget.set_labels_visible(False)
    assert not widget.labels.item.isVisible()


def test_confusion_overlay_colours_and_hatching(qtbot):
    """TP filled; FP and FN hatched in opposite directions (they read apart without colour), in colours
    away from the labels' (a missed region must not look like the demo's left kidney)."""
    widget = make_view(qtbot, "axial")
    confusion = np.zeros(SHAPE, np.uint8)
    z = widget.slice_index
    confusion[z, 0:6, 0:6], confusion[z, 0:6, 6:12], confusion[z, 0:6, 12:18] = 1, 2, 3
    widget.set_confusion(confusion, opacity=0.6)
    item = widget.confusion.item
    item.render()

    def drawn(x0: int, rgb) -> np.ndarray:
        on = np.zeros((6, 6), bool)
        for r in range(6):
            for c in range(6):
                colour = item.qimage.pixelColor(x0 + c, r)
                if colour.alpha():
                    assert (colour.red(), colour.green(), colour.blue()) == rgb and colour.alpha() == 153
                    on[r, c] = True
        return on

    assert drawn(0, TRUE_POSITIVE).all()
    fp, fn = drawn(6, FALSE_POSITIVE), drawn(12, FALSE_NEGATIVE)
    assert 0.3 < fp.mean() < 0.7 and 0.3 < fn.mean() < 0.7  # hatched: about half of the pixels
    assert not np.array_equal(fp, fn)  # opposite diagonals
    from sd_fsmis.core.io.demo import DEMO_LABELS
    from sd_fsmis.core.io.labelmap import default_colour

    label_colours = [label.colour for label in DEMO_LABELS.values()] + [
        default_colour(v) for v in range(1, 9)
    ]
    for rgb in (FALSE_POSITIVE, FALSE_NEGATIVE):
        assert min(np.linalg.norm(np.subtract(rgb, c)) for c in label_colours) > 90
    widget.set_confusion(None)
    assert not item.isVisible()


def test_dashed_contour_keeps_part_of_the_outline(qtbot):
    widget = make_view(qtbot, "axial")
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 4:28, 4:28] = 1
    widget.set_labels(labels, {1: (255, 0, 0)}, opacity=0.4)
    widget.set_label_style(mode="dashed")
    outline = outline_mask(labels[widget.slice_index])
    shown = widget.labels.buffer != 0
    assert not (shown & ~outline).any() and 0.3 < shown.sum() / outline.sum() < 0.7


def test_binding_reference_leak_is_neutralised(qtbot):
    """PySide6 6.12 on Python 3.11 drops a reference to None per void call: the view protects None/True."""
    make_view(qtbot, "axial")  # a view applies the protection
    slider = QtWidgets.QSlider()
    for i in range(20_000):  # without the protection None would be freed long before the end
        slider.setValue(i % 7)
    if binding_leaks_singletons():
        assert protect_singletons() and sys.getrefcount(None) > 1 << 30


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_an_image_without_patient_orientation_gets_no_anatomical_names(qtbot, view):
    """Data safety (issue 13, item 13): a planar image (no Image Orientation (Patient)) is shown as stored,
    its views not called axial/coronal/sagittal and its edges without R/L, A/P, S/I."""
    widget = make_view(qtbot, view)
    assert widget.title.text() == view.capitalize()
    assert all(m.text() for m in widget._markers)
    widget.set_volume(ramp_volume(), geometry(RAS_STORED), oriented=False)
    assert widget.title.text() not in ("Axial", "Coronal", "Sagittal") and "no patient orientation" in (
        widget.title.toolTip()
    )
    assert [m.text() for m in widget._markers] == ["", "", "", ""]
    if view == "axial":  # as stored: column x to the right, row y down, whatever the stand-in direction
        assert widget.layout_info.transform[0] > 0 and widget.layout_info.transform[3] > 0
