"""The main window with real files: open NIfTI and multi-series DICOM folders, paint/erase/fill/undo through
the viewer, labels and masks, save, DICOM-SEG, autosave and crash recovery, and a screenshot to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # tests may; the ui code may not
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.session.autosave import folder_state
from sd_fsmis.core.session.state import Session
from sd_fsmis.ui.application import make_application, offer_restore
from sd_fsmis.ui.dialogs.help import SHORTCUTS
from sd_fsmis.ui.dialogs.series import SeriesDialog
from sd_fsmis.ui.panels.status_bar import device_text, start_device_probe
from sd_fsmis.ui.settings import AppSettings
from sd_fsmis.ui.window.main_window import MainWindow

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LEFT = Qt.MouseButton.LeftButton
NO_MODS = Qt.KeyboardModifier.NoModifier


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def demo_window(make_window, demo_cache) -> MainWindow:
    window = make_window()
    window.open_demo()
    assert window.wait_idle(60_000)
    assert window.session.active_study is not None
    QtWidgets.QApplication.processEvents()
    return window


def write_series(
    folder: Path,
    values: np.ndarray,
    uid: str,
    description: str,
    spacing_z: float = 2.0,
    positions: list[float] | None = None,
) -> None:
    """One DICOM file per slice (SimpleITK), CT, axial; ``positions`` (mm) default to even spacing."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, plane in enumerate(values):
        image = sitk.GetImageFromArray(np.ascontiguousarray(plane))
        image.SetSpacing((0.8, 0.8))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{i + 1}",
            "0008|0060": "CT",
            "0008|103e": description,
            "0010|0010": "Test^Patient",
            "0010|0020": "TEST-001",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": uid,
            "0020|0052": "1.2.826.0.1.3680043.8.498.2",
            "0018|0050": f"{spacing_z:g}",
            "0020|0013": str(i + 1),
            "0020|0032": f"-20\\-30\\{10 + (positions[i] if positions else i * spacing_z):.3f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|1050": "40",
            "0028|1051": "400",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{uid.rsplit('.', 1)[-1]}_{i:03d}.dcm"))
        writer.Execute(image)


def phantom_ct(shape=(6, 40, 48), seed=0) -> np.ndarray:
    """A CT-like volume: air around a body ellipse with an organ, in HU."""
    nz, ny, nx = shape
    _, y, x = np.ogrid[:nz, :ny, :nx]
    body = ((x - nx / 2) / (nx * 0.42)) ** 2 + ((y - ny / 2) / (ny * 0.4)) ** 2 <= 1
    organ = ((x - nx * 0.4) / (nx * 0.15)) ** 2 + ((y - ny * 0.45) / (ny * 0.15)) ** 2 <= 1
    noise = np.random.default_rng(seed).integers(-10, 10, size=shape)
    volume = np.where(body, 40, -1000) + noise
    volume = np.where(organ & body, 120 + noise, volume)
    return np.broadcast_to(volume, shape).astype(np.int16)


@pytest.fixture
def dicom_two_series(tmp_path) -> Path:
    folder = tmp_path / "dicom"
    write_series(folder, phantom_ct((6, 40, 48), 1), "1.2.826.0.1.3680043.8.498.21", "axial 2 mm")
    write_series(folder, phantom_ct((4, 40, 48), 2), "1.2.826.0.1.3680043.8.498.22", "axial 3 mm", 3.0)
    return folder


def mouse(view, kind: QtCore.QEvent.Type, zyx, button=LEFT, buttons=LEFT, modifiers=NO_MODS) -> None:
    """Send a mouse event at voxel ``zyx`` of a slice view's viewport."""
    viewport = view.graphics.viewport()
    pos = QtCore.QPointF(view.viewport_pos(*zyx))
    event = QtGui.QMouseEvent(
        kind, pos, QtCore.QPointF(viewport.mapToGlobal(pos)), button, buttons, modifiers
    )
    QtWidgets.QApplication.sendEvent(viewport, event)


def drag(view, points) -> None:
    """Press at the first voxel, move through the others, release at the last."""
    mouse(view, QtCore.QEvent.Type.MouseButtonPress, points[0])
    for p in points[1:]:
        mouse(view, QtCore.QEvent.Type.MouseMove, p, button=Qt.MouseButton.NoButton)
    mouse(view, QtCore.QEvent.Type.MouseButtonRelease, points[-1], buttons=Qt.MouseButton.NoButton)


# ---------------------------------------------------------------------------------------------- opening
def test_opening_a_nifti_gives_a_study_ready_to_paint(make_window, demo_cache):
    window = make_window()
    assert window.central.currentWidget() is window.welcome
    window.open_paths([demo_cache])
    assert window.wait_idle(60_000)
    study = window.session.active_study
    assert study is not None and study.volume.shape == (48, 256, 256)
    assert window.central.currentWidget() is window.viewer
    layer = study.active_layer
    assert layer is not None and layer.name == "Segmentation" and layer.kind == "manual"
    assert list(layer.labels) == [1] and layer.selected_label == 1
    assert window.paint.tool == "brush"  # one click and the user paints
    assert str(demo_cache) in window.settings.recent_files
    assert window.studies_panel.list.count() == 1
    assert "256×256×48" in window.studies_panel.list.item(0).text()
    assert window.viewer.views["axial"].slice_count == 48
    # export DICOM-SEG is for DICOM studies only, and says why
    assert not window.actions_.file["export_seg"].isEnabled()
    assert "DICOM" in window.actions_.file["export_seg"].toolTip()


def test_opening_a_missing_path_is_one_message(make_window, tmp_path):
    window = make_window()
    window.open_paths([tmp_path / "nothing.nii.gz"])
    assert window.errors and "no such file" in window.errors[-1]
    assert window.session.active_study is None


def test_dicom_folder_with_two_series_asks_which_to_open(make_window, dicom_two_series, qtbot):
    window = make_window()
    shown: list[SeriesDialog] = []

    def choose(series, path):
        dialog = SeriesDialog(series, path, window)
        shown.append(dialog)
        assert dialog.table.rowCount() == 2
        # the largest series is preselected; the user picks the other one
        assert [s.description for s in dialog.selected_series()] == ["axial 2 mm"]
        row = next(i for i, s in enumerate(series) if s.description == "axial 3 mm")
        dialog.select_rows([row])
        return dialog.selected_series()

    window.opener.choose = choose
    window.open_paths([dicom_two_series])
    assert window.wait_idle(60_000)
    assert shown, "the series chooser was not shown"
    texts = [shown[0].table.item(r, c).text() for r in range(2) for c in range(7)]
    assert "CT" in texts and any("48×40×" in t for t in texts) and "axial 3 mm" in texts
    study = window.session.active_study
    assert study is not None and study.volume.shape == (4, 40, 48)
    assert study.series_uid == "1.2.826.0.1.3680043.8.498.22"
    assert window.actions_.file["export_seg"].isEnabled()  # a DICOM study


def test_a_folder_with_a_file_gdcm_cannot_parse_offers_its_series(make_window, tmp_path, pydicom_file):
    """Data safety (issue 13, item 11): the chooser offers every readable series and names the damaged file;
    a series without a Frame of Reference UID opens, its DICOM-SEG export disabled with the reason."""
    import shutil

    import pydicom

    folder = tmp_path / "dicom"
    write_series(folder, phantom_ct((4, 40, 48), 1), "1.2.826.0.1.3680043.8.498.31", "axial")
    shutil.copy(pydicom_file("rtdose_1frame.dcm"), folder / "dose.dcm")
    first = sorted(folder.glob("31_*.dcm"))[0]
    (folder / "broken.dcm").write_bytes(first.read_bytes()[:300])
    for f in folder.glob("31_*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    window = make_window()
    offered: list[list[str]] = []

    def choose(series, path):
        dialog = SeriesDialog(series, path, window)
        offered.extend([dialog.table.item(r, c).text() for c in range(7)] for r in range(len(series)))
        return [s for s in series if s.description == "axial"]

    window.opener.choose = choose
    window.open_paths([folder])
    assert window.wait_idle(60_000)
    ct = next(row for row in offered if row[1] == "axial")
    assert "broken.dcm" in ct[6] and "could not be read" in ct[6]
    assert window.session.active_study.volume.shape == (4, 40, 48)
    export = window.actions_.file["export_seg"]
    assert not export.isEnabled() and "Frame of Reference UID" in export.toolTip()


def test_series_dialog_selects_several_and_greys_out_broken_series(qtbot):
    from sd_fsmis.core.io.listing import SeriesInfo

    def info(uid, description, size, error=""):
        return SeriesInfo(
            uid,
            description,
            "MR",
            size,
            (1.0, 1.0, 3.0),
            (0, 0, 0),
            (1, 0, 0, 0, 1, 0, 0, 0, 1),
            size[2],
            ["non-uniform spacing"] if uid == "b" else [],
            "/data",
            "dicom",
            error=error,
        )

    series = [
        info("a", "T1", (64, 64, 20)),
        info("b", "T2", (128, 128, 30)),
        info("c", "bad", (8, 8, 2), "damaged"),
    ]
    dialog = SeriesDialog(series, "/data")
    qtbot.addWidget(dialog)
    assert [s.uid for s in dialog.selected_series()] == ["b"]  # the largest loadable
    assert "non-uniform spacing" in dialog.table.item(1, 6).text()
    assert "damaged" in dialog.table.item(2, 6).text()
    assert not dialog.table.item(2, 0).flags() & Qt.ItemFlag.ItemIsEnabled
    dialog.select_rows([0, 1, 2])
    assert [s.uid for s in dialog.selected_series()] == ["a", "b"]
    dialog.table.clearSelection()
    assert not dialog.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Open).isEnabled()


def test_loading_warnings_are_shown_in_the_studies_panel(make_window, tmp_path):
    folder = tmp_path / "uneven"
    write_series(
        folder, phantom_ct((5, 40, 48)), "1.2.826.0.1.3680043.8.498.31", "uneven", positions=[0, 2, 4, 7, 9]
    )
    window = make_window()
    window.open_paths([folder])
    assert window.wait_idle(60_000)
    study = window.session.active_study
    assert study is not None and any("non-uniform" in w for w in study.volume.warnings)
    panel = window.studies_panel
    assert panel.warnings.isVisibleTo(panel) and "non-uniform" in panel.warnings.text()
    assert panel.list.item(0).text().startswith("⚠")


def test_drop_opens_the_dropped_file(make_window, demo_cache):
    window = make_window()
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(demo_cache))])
    drop = QtGui.QDropEvent(QtCore.QPointF(200, 200), Qt.DropAction.CopyAction, mime, LEFT, NO_MODS)
    window.dropEvent(drop)
    assert window.wait_idle(60_000)
    assert window.session.active_study is not None


def test_several_studies_switch_and_close(demo_window, dicom_two_series):
    window = demo_window
    window.opener.choose = lambda series, path: series[:1]
    window.open_paths([dicom_two_series])
    assert window.wait_idle(60_000)
    demo, ct = window.session.studies
    assert (
        window.session.active_study is ct and window.viewer.views["axial"].slice_count == ct.volume.shape[0]
    )
    window.studies_panel.list.setCurrentRow(0)
    assert window.session.active_study is demo
    assert window.viewer.views["axial"].slice_count == 48
    assert window.labels_panel.layer_list.count() == 2
    window.studies_panel.close_current()
    assert window.session.studies == (ct,)
    assert window.viewer.views["axial"].slice_count == ct.volume.shape[0]


# --------------------------------------------------------------------------------------------- painting
def test_paint_erase_fill_undo_redo_with_the_mouse(demo_window):
    window = demo_window
    layer = window.active_layer
    axial = window.viewer.views["axial"]
    z = axial.slice_index
    window.paint.set_radius(3)
    window.paint.set_tool("brush")
    # a closed square outline, then fill its inside
    corners = [(z, 100, 100), (z, 100, 140), (z, 140, 140), (z, 140, 100), (z, 100, 100)]
    drag(axial, corners)
    painted = layer.array[z].copy()
    assert painted[100, 120] == 1 and painted[120, 100] == 1 and painted[120, 120] == 0
    assert layer.array.sum() == painted.sum()  # only this slice
    assert window.actions_.edit["undo"].isEnabled()

    window.paint.set_tool("fill")
    mouse(axial, QtCore.QEvent.Type.MouseButtonPress, (z, 120, 120))
    mouse(axial, QtCore.QEvent.Type.MouseButtonRelease, (z, 120, 120), buttons=Qt.MouseButton.NoButton)
    assert layer.array[z, 120, 120] == 1 and layer.array[z, 5, 5] == 0
    filled = layer.array[z].copy()

    window.paint.set_tool("eraser")
    drag(axial, [(z, 120, 110), (z, 120, 130)])
    assert layer.array[z, 120, 120] == 0 and layer.array[z, 110, 110] == 1

    window.undo()
    np.testing.assert_array_equal(layer.array[z], filled)
    window.undo()
    np.testing.assert_array_equal(layer.array[z], painted)
    window.redo()
    np.testing.assert_array_equal(layer.array[z], filled)
    # the overlay on screen follows the array
    buffer = axial.labels.buffer
    row, col = axial.to_plane(z, 120, 120)
    assert buffer is not None and buffer[row, col] == 1


def test_paint_on_the_coronal_view_and_shift_erases(demo_window):
    window = demo_window
    layer = window.active_layer
    viewer = window.viewer
    y = viewer.crosshair_position[1]
    window.paint.set_tool("brush")
    window.paint.set_radius(2)
    viewer.paintPressed.emit(1, 20, y, 100, LEFT, NO_MODS)
    viewer.paintMoved.emit(1, 22, y, 110, LEFT, NO_MODS)
    viewer.paintReleased.emit(1, 22, y, 110, LEFT, NO_MODS)
    assert layer.array[20, y, 100] == 1 and layer.array[22, y, 110] == 1
    shift = Qt.KeyboardModifier.ShiftModifier
    viewer.paintPressed.emit(1, 20, y, 100, LEFT, shift)
    viewer.paintReleased.emit(1, 20, y, 100, LEFT, shift)
    assert layer.array[20, y, 100] == 0 and layer.array[22, y, 110] == 1
    assert layer.history.undo_count == 2


def test_keyboard_tools_radius_labels_and_undo(demo_window, qtbot):
    window = demo_window
    layer = window.active_layer
    layer.add_label("spleen")
    window.activateWindow()
    focus = window.viewer.views["axial"].graphics
    focus.setFocus()
    for key, tool in (
        (Qt.Key.Key_E, "eraser"),
        (Qt.Key.Key_F, "fill"),
        (Qt.Key.Key_N, "navigate"),
        (Qt.Key.Key_B, "brush"),
    ):
        qtbot.keyClick(focus, key)
        assert window.paint.tool == tool
        assert window.tools_panel.buttons[tool].isChecked()
    radius = window.paint.radius
    qtbot.keyClick(focus, Qt.Key.Key_BracketRight)
    assert window.paint.radius > radius
    qtbot.keyClick(focus, Qt.Key.Key_BracketLeft)
    assert window.paint.radius == radius
    qtbot.keyClick(focus, Qt.Key.Key_1)
    assert layer.selected_label == 1
    qtbot.keyClick(focus, Qt.Key.Key_2)
    assert layer.selected_label == 2
    z = window.viewer.crosshair_position[0]
    layer.paint_line(0, z, [(50, 50)], radius=4)
    ctrl, shift = Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(focus, Qt.Key.Key_Z, ctrl)
    assert not layer.array.any()
    qtbot.keyClick(focus, Qt.Key.Key_Y, ctrl)
    assert layer.array[z, 50, 50] == 2
    qtbot.keyClick(focus, Qt.Key.Key_Z, ctrl)
    qtbot.keyClick(focus, Qt.Key.Key_Z, ctrl | shift)
    assert layer.array[z, 50, 50] == 2
    qtbot.keyClick(focus, Qt.Key.Key_H)
    assert not window.layer_display.labels_visible
    qtbot.keyClick(focus, Qt.Key.Key_H)
    assert window.layer_display.labels_visible
    qtbot.keyClick(focus, Qt.Key.Key_Up)  # the view itself: next slice
    assert window.viewer.crosshair_position[0] != z
    # typing a label name does not trigger the one-letter shortcuts
    window.labels_panel.name_box.setFocus()
    qtbot.keyClicks(window.labels_panel.name_box.lineEdit(), "bef")
    assert window.labels_panel.name_box.currentText() == "bef" and window.paint.tool == "brush"


def test_clear_label_on_slice_leaves_other_slices_and_labels(demo_window):
    window = demo_window
    layer = window.active_layer
    second = layer.add_label("spleen")
    z = window.viewer.views["axial"].slice_index
    layer.paint_line(0, z, [(60, 60)], radius=3, label=1)
    layer.paint_line(0, z, [(90, 90)], radius=3, label=second.value)
    layer.paint_line(0, z + 1, [(60, 60)], radius=3, label=second.value)
    layer.selected_label = second.value
    assert window.clear_label_on_slice()
    assert layer.array[z, 60, 60] == 1 and layer.array[z, 90, 90] == 0 and layer.array[z + 1, 60, 60] == 2


# -------------------------------------------------------------------------------------- labels, masks
def test_labels_add_rename_colour_hide_and_number_keys(demo_window):
    window = demo_window
    panel = window.labels_panel
    layer = window.active_layer
    panel.name_box.setCurrentText("spleen")
    label = panel.add_label()
    assert label is not None and label.name == "spleen" and layer.selected_label == label.value == 2
    assert panel.label_list.topLevelItemCount() == 2
    # rename by editing the item, as a double-click would
    item = panel.label_list.topLevelItem(1)
    item.setText(0, "left kidney")
    assert layer.labels[2].name == "left kidney"
    panel.choose_colour(2, QtGui.QColor(10, 20, 30))
    assert layer.labels[2].colour == (10, 20, 30)
    assert window.viewer.views["axial"].labels.lut[2][:3].tolist() == [10, 20, 30]
    panel.label_list.topLevelItem(1).setCheckState(0, Qt.CheckState.Unchecked)
    assert layer.labels[2].visible is False
    assert window.viewer.views["axial"].labels.lut[2][3] == 0
    panel.select_label_number(1)
    assert layer.selected_label == 1
    panel.select_label_number(9)  # no ninth label: nothing changes
    assert layer.selected_label == 1
    # remove a painted label: its voxels are erased (undoable)
    layer.paint_line(0, 20, [(40, 40)], radius=2, label=2)
    panel.label_list.setCurrentItem(panel.label_list.topLevelItem(1))
    panel.remove_label()
    assert 2 not in layer.labels and not (layer.array == 2).any()


def test_mask_list_visibility_opacity_and_new_mask(demo_window):
    window = demo_window
    panel = window.labels_panel
    study = window.session.active_study
    reference = window.session.reference
    assert panel.layer_list.count() == 2
    # the reference is drawn as a dashed contour in every view, beneath the painted (filled) mask
    overlays = window.layer_display.extra_overlays(reference)
    assert set(overlays) == {"axial", "coronal", "sagittal"}
    assert overlays["axial"].mode == "dashed" and overlays["axial"].item.isVisible()
    assert window.viewer.views["axial"].labels.mode == "fill"
    panel.layer_list.item(0).setCheckState(Qt.CheckState.Unchecked)
    assert reference.visible is False and not overlays["axial"].item.isVisible()
    panel.opacity.setValue(80)
    assert window.active_layer.opacity == pytest.approx(0.8)
    window.toggle_labels()  # H
    assert not window.viewer.views["axial"].labels.item.isVisible()
    window.toggle_labels()
    assert window.viewer.views["axial"].labels.item.isVisible()
    panel.name_box.setCurrentText("aorta")
    new = panel.new_layer()
    assert new is study.active_layer and new.name == "Segmentation (2)"
    assert [label.name for label in new.labels.values()] == ["aorta"]
    panel.layer_list.setCurrentRow(1)
    assert study.active_layer.name == "Segmentation"
    assert window.viewer.views["axial"].labels.item is not None


# ----------------------------------------------------------------------------------------------- files
def test_save_label_map_keeps_the_study_geometry(demo_window, tmp_path):
    window = demo_window
    layer = window.active_layer
    layer.paint_line(0, 24, [(100, 100), (120, 110)], radius=5)
    out = window.files.save(tmp_path / "liver_mask")
    assert out == tmp_path / "liver_mask.nii.gz" and out.is_file()
    assert not layer.modified
    study = window.session.active_study
    saved = LabelMap.load(out)
    assert saved.geometry.matches(study.geometry)
    np.testing.assert_array_equal(saved.array, layer.array)
    image = sitk.ReadImage(str(out))
    assert image.GetSpacing() == pytest.approx(study.geometry.spacing)
    assert image.GetOrigin() == pytest.approx(study.geometry.origin)
    assert saved.labels[1].name == "liver"


def test_load_label_map_as_mask_and_as_reference(demo_window, tmp_path):
    window = demo_window
    study = window.session.active_study
    window.active_layer.paint_line(0, 24, [(100, 100)], radius=5)
    path = window.files.save(tmp_path / "mine.nii.gz")
    window.files.load(path)
    assert window.wait_idle(30_000)
    assert study.active_layer.name == "mine" and study.active_layer.array[24, 100, 100] == 1
    window.files.load(path, reference=True)
    assert window.wait_idle(30_000)
    assert window.session.reference.name == "mine (2)" and window.session.reference.kind == "reference"


def test_load_label_map_on_another_grid_offers_to_resample(demo_window, dicom_two_series, tmp_path):
    window = demo_window
    window.opener.choose = lambda series, path: series[:1]
    window.open_paths([dicom_two_series])
    assert window.wait_idle(60_000)
    ct = window.session.active_study
    ct.active_layer.paint_line(0, 2, [(20, 20)], radius=4)
    path = window.files.save(tmp_path / "ct_mask.nii.gz")
    demo = window.session.studies[0]
    window.session.set_active_study(demo)
    asked = []
    window.confirm = lambda title, text: asked.append(text) or True
    window.files.load(path)
    assert window.wait_idle(30_000)
    assert asked and "Resample" in asked[0]
    assert demo.active_layer.name == "ct_mask" and demo.active_layer.array.shape == demo.volume.shape


def test_export_dicom_seg_of_a_dicom_study(make_window, dicom_two_series, tmp_path):
    import pydicom

    window = make_window()
    window.opener.choose = lambda series, path: series[:1]
    window.open_paths([dicom_two_series])
    assert window.wait_idle(60_000)
    layer = window.active_layer
    layer.paint_line(0, 2, [(20, 20), (25, 22)], radius=4)
    window.files.export_dicom_seg(tmp_path / "seg.dcm")
    assert window.wait_idle(60_000), window.errors
    assert not window.errors
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "Label 1"


def test_no_save_or_export_writes_over_an_opened_study(make_window, dicom_two_series, tmp_path):
    """Data safety (issue 13): the study's own files are inputs, whatever the file dialog was given."""
    window = make_window()
    window.opener.choose = lambda series, path: series[:1]
    window.open_paths([dicom_two_series])
    assert window.wait_idle(60_000)
    window.active_layer.paint_line(0, 2, [(20, 20)], radius=4)
    slice_file = Path(window.session.active_study.volume.metadata.files[0])
    before = slice_file.read_bytes()
    window.files.export_dicom_seg(slice_file)
    assert window.wait_idle(60_000)
    assert window.errors and "refusing to write over an input" in window.errors[-1]
    nifti = tmp_path / "ct.nii.gz"
    nifti.write_bytes(b"not really an image, but an input")
    window.session.active_study.path = str(nifti)
    assert window.files.save(nifti) is None
    assert "refusing to write over an input" in window.errors[-1]
    assert slice_file.read_bytes() == before and nifti.read_bytes() == b"not really an image, but an input"
    out = window.files.save(tmp_path / "mask.nii.gz")  # anywhere else: fine
    assert out is not None and out.is_file()
    assert window.files.save(out) == out  # and the mask may be saved over its own file again


def test_the_study_itself_is_refused_as_a_mask(demo_window):
    window = demo_window
    study = window.session.active_study
    layers = len(study.layers)
    window.files.load(study.path)
    assert window.wait_idle(30_000)
    assert window.errors and "is the image itself" in window.errors[-1]
    assert len(study.layers) == layers


def test_screenshot_writes_a_png(demo_window, tmp_path):
    out = demo_window.viewer.screenshot(tmp_path / "views.png")
    image = QtGui.QImage(str(out))
    assert not image.isNull() and image.width() > 300


# --------------------------------------------------------------------------------------- support, help
def test_s_adds_the_axial_slice_as_support(demo_window):
    window = demo_window
    if window.support_panel is None:
        pytest.skip("the support panel is not installed")
    layer = window.active_layer
    z = window.viewer.crosshair_position[0]
    layer.paint_line(0, z, [(120, 80)], radius=6)
    entry = window.add_support_slice()
    assert entry is not None and entry.slice_index == z and entry.label_name == "liver"
    assert len(window.session.support_set) == 1


def test_help_lists_every_shortcut_the_menus_use(demo_window):
    window = demo_window
    dialog = window.show_help()
    assert dialog.isVisible()
    listed = " ".join(dialog.keys())
    for action in window.findChildren(QtGui.QAction):
        for sequence in action.shortcuts():
            text = sequence.toString()
            if text and not text.isdigit():  # 1-9 are listed as "1 … 9"
                assert text in listed, f"{text} ({action.text()}) is missing from the help"
    assert sum(len(items) for _, items in SHORTCUTS) == dialog.table.rowCount() - len(SHORTCUTS)


def test_status_bar_shows_position_and_device(demo_window):
    window = demo_window
    window.viewer.go_to(10, 100, 120)
    numbering = window.session.active_study.volume.slice_numbering()
    assert window.status.position.text().startswith(
        f"slice {numbering.number(10)} / {numbering.count} ({numbering.position_text(10)}) "
        "| x 120 y 100 z 10 |"
    )
    assert " mm " in window.status.position.text()
    window.status.set_device("CPU")
    assert window.status.device.text() == "Device: CPU only"
    window.status.set_device("NVIDIA H200 (139.8 GiB)")
    assert window.status.device.text() == "Device: NVIDIA H200 (139.8 GiB)"


def test_close_asks_when_a_segmentation_runs(demo_window, monkeypatch):
    window = demo_window
    if window.segment_panel is None:
        pytest.skip("the segment panel is not installed")
    monkeypatch.setattr(window.segment_panel, "is_running", lambda: True)
    cancelled = []
    monkeypatch.setattr(window.segment_panel, "cancel", lambda: cancelled.append(True))
    window.confirm = lambda *_: False
    assert not window.close() and window.isVisible() and not cancelled
    window.confirm = lambda *_: True
    monkeypatch.setattr(window.segment_panel, "shutdown", lambda *a: True)
    assert window.close() and cancelled


# ------------------------------------------------------------------------------------- autosave, crash
def test_autosave_then_crash_restores_the_same_masks(make_window, demo_cache, tmp_path):
    folder = tmp_path / "autosave"
    window = make_window(autosave_folder=folder)
    window.open_demo()
    assert window.wait_idle(60_000)
    layer = window.active_layer
    layer.paint_line(0, 30, [(100, 60), (110, 90)], radius=6)
    layer.add_label("spleen")
    layer.paint_line(0, 31, [(140, 180)], radius=4)
    window.autosave.scheduler.interval_s = 0.0
    window.paint.set_tool("brush")
    window.viewer.paintPressed.emit(0, 32, 120, 100, LEFT, NO_MODS)  # a stroke in progress: no snapshot
    window.autosave.tick()
    assert window.autosave.scheduler.last_report is None and window.autosave.scheduler.pending
    window.viewer.paintReleased.emit(0, 32, 120, 104, LEFT, NO_MODS)
    window.autosave.tick()  # the timer's tick: snapshot here, write in the worker
    window.autosave._collect(wait=True)
    assert window.autosave.scheduler.last_report is not None
    expected = {(lyr.name, lyr.kind): lyr.array.copy() for lyr in window.session.active_study.layers}
    # a crash: the process dies without the clean-exit marker
    window.autosave._timer.stop()
    window.autosave = None
    state = folder_state(folder)
    assert state.offer_restore and state.studies == 1

    restored = offer_restore(folder, ask=lambda _state: True)
    assert restored is not None
    second = make_window(restored, autosave_folder=folder)
    study = second.session.active_study
    assert study is not None and second.viewer.views["axial"].slice_count == 48
    got = {(lyr.name, lyr.kind): lyr.array for lyr in study.layers}
    assert set(got) == set(expected)
    for key, array in expected.items():
        np.testing.assert_array_equal(got[key], array)
    assert [label.name for label in study.layer("Segmentation").labels.values()] == ["liver", "spleen"]
    assert second.session.reference is not None
    second.close()
    assert not folder_state(folder).offer_restore  # a clean exit


def test_no_restore_offer_after_a_clean_exit(make_window, tmp_path):
    folder = tmp_path / "autosave"
    window = make_window(autosave_folder=folder)
    assert folder_state(folder).running_pid is None  # our own pid does not count as another instance
    window.close()
    asked = []
    assert offer_restore(folder, ask=lambda s: asked.append(s) or True) is None and not asked


# ----------------------------------------------------------------------------------------- the artefact
def test_screenshot_of_the_main_window_for_review(demo_window, qtbot):
    """artifacts/main_window.png: the demo study, a liver painted with the mouse, the reference contours."""
    window = demo_window
    reference = window.session.reference
    axial = window.viewer.views["axial"]
    liver = reference.array == 1
    z = int(np.argmax(liver.sum(axis=(1, 2))))
    window.viewer.go_to(z, *np.argwhere(liver[z]).mean(axis=0).astype(int))
    window.paint.set_tool("brush")
    window.paint.set_radius(4)
    # trace inside the liver: rows of its interior, left to right
    ys, xs = np.nonzero(liver[z])
    for row in range(int(ys.min()) + 8, int(ys.max()) - 8, 6):
        cols = xs[ys == row]
        if cols.size > 20:
            drag(axial, [(z, row, int(cols.min()) + 5), (z, row, int(cols.max()) - 5)])
    layer = window.active_layer
    painted = layer.array[z] == 1
    assert painted.sum() > 0.5 * liver[z].sum()
    assert (painted & ~liver[z]).sum() < 0.1 * painted.sum()
    start_device_probe()  # the status bar shows the real device (imports torch in a thread: a few seconds)
    qtbot.waitUntil(lambda: device_text() is not None, timeout=120_000)
    window.status.set_device(device_text())
    assert window.status.device.text() in ("Device: CPU only",) or "GiB" in window.status.device.text()
    QtWidgets.QApplication.processEvents()
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "main_window.png"
    assert window.grab().save(str(path))
    image = QtGui.QImage(str(path))
    assert image.width() >= 1400 and image.height() >= 900


def test_dicomdir_opens_through_the_series_chooser(make_window, pydicom_file):
    """pydicom's DICOMDIR test tree: several patients and series, the chooser lists them all."""
    dicomdir = pydicom_file("DICOMDIR")
    window = make_window()
    listed: list[int] = []

    def choose(series, path):
        listed.append(len(series))
        usable = [s for s in series if not s.error]
        return [max(usable, key=lambda s: s.size[2])]  # the user picks the series with the most slices

    window.opener.choose = choose
    window.open_paths([dicomdir])
    assert window.wait_idle(60_000)
    assert listed and listed[0] > 1
    study = window.session.active_study
    assert study is not None and study.volume.shape[0] > 1
    assert study.volume.metadata.source_format.startswith("dicom")


def test_an_action_lists_each_key_once():
    """A platform's standard key equal to the explicit one (Quit is Ctrl+Q under X11) must not be listed
    twice: Qt then calls the shortcut ambiguous and does nothing (Ctrl+Q did not quit)."""
    from sd_fsmis.ui.window.actions import _action

    make_application()
    parent = QtWidgets.QWidget()
    standard = QtGui.QKeySequence.keyBindings(QtGui.QKeySequence.StandardKey.Copy)[0].toString()
    action = _action(parent, "Copy", lambda: None, (QtGui.QKeySequence.StandardKey.Copy, standard, standard))
    texts = [s.toString() for s in action.shortcuts()]
    assert texts.count(standard) == 1 and len(texts) == len(set(texts))
    parent.deleteLater()


def test_ctrl_q_quits_with_the_window_focused(make_window, qtbot):
    """Ctrl+Q (File > Quit's key) closes the window whatever widget of it has the focus."""
    window = make_window()
    quit_action = window.actions_.file["quit"]
    window.windowHandle().requestActivate()  # shortcuts need the active window (offscreen: made so here)
    QtWidgets.QApplication.setActiveWindow(window)
    view = window.viewer.views["axial"].graphics
    view.setFocus()
    with qtbot.waitSignal(quit_action.triggered, timeout=2000):
        qtbot.keyClick(view, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    assert not window.isVisible()


def test_tool_and_brush_radius_are_remembered_as_they_change(make_window, qtbot):
    """Stored within a second of a change (a crash, unlike a clean exit, stores nothing afterwards), and
    the next window starts with them."""
    settings = AppSettings()
    window = make_window(settings=settings)
    window.paint.set_tool("eraser")
    window.paint.set_radius(11)
    qtbot.waitUntil(lambda: settings.tool == "eraser" and settings.brush_radius == 11, timeout=3000)
    again = make_window(settings=settings)
    assert again.paint.tool == "eraser" and again.paint.radius == 11


def test_the_segment_menu_segments_all_open_studies(make_window, qtbot):
    from sd_fsmis.core.io.demo import make_demo_phantom
    from sd_fsmis.core.session.study import Study
    from sd_fsmis.core.volume import Volume

    volume, labels = make_demo_phantom()
    session = Session()
    for k in range(2):
        session.add_study(
            Study(Volume(volume.array.copy(), volume.geometry), path=f"p{k}.nii.gz", name=f"P{k}")
        )
    first = session.studies[0]
    layer = first.add_layer("liver", labels={1: "liver"})
    z = int(np.flatnonzero((labels.array == 1).any(axis=(1, 2))).mean())
    layer.set_region(
        (slice(z, z + 1), slice(None), slice(None)), (labels.array[z : z + 1] == 1).astype(np.uint8)
    )
    session.add_support(first, layer, z)
    window = make_window(session)
    assert window.actions_.edit["segment_all"].text() == "Segment &all open studies…"
    window.actions_.edit["segment_all"].trigger()
    dialog = window.cohort_dialog
    assert dialog is not None and dialog.isVisible() and "2</b> open studies" in dialog.summary.text()
    assert dialog.start()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=120_000)
    assert [run.status for run in session.runs] == ["done", "done"]
    window.actions_.edit["segment_folder"].trigger()
    assert window.cohort_dialog is not dialog and window.cohort_dialog.mode == "folder"


def test_a_folder_study_opens_from_the_runs_table_with_its_mask(make_window, demo_cache, tmp_path):
    """A "Segment a folder of studies" result: double-click in the runs table opens the study with it."""
    from sd_fsmis.core.io.demo import demo_study_paths

    image, labels_path = demo_study_paths()
    labels = LabelMap.load(labels_path)
    mask = tmp_path / "masks" / "demo.nii.gz"
    mask.parent.mkdir()
    LabelMap.from_array((labels.array == 1).astype(np.uint8), labels.geometry, {1: "liver"}).save(mask)
    window = make_window()
    run = window.session.record_file_run(
        study_name="demo",
        image=str(image),
        series=None,
        mask=str(mask),
        engine="propagation",
        label_name="liver",
        k=3,
        device="CPU",
        seconds=2.0,
    )
    table = window.compare_panel.runs_table
    table.all_studies_check.setChecked(True)
    assert table.table.rowCount() == 1
    table.table.itemDoubleClicked.emit(table.table.item(0, 0))
    assert window.wait_idle(60_000), window.errors
    study = window.session.active_study
    assert study is not None and Path(study.path).name == image.name
    layer = study.active_layer
    assert layer.kind == "prediction" and np.array_equal(layer.array > 0, labels.array == 1)
    run = window.session.runs.get(run.id)
    assert run.query_study_id == study.id and run.result_layer_id == layer.id
    table.all_studies_check.setChecked(False)
    assert table.table.rowCount() == 1  # now a run of the open study
    # once more: already shown, it is shown again, nothing opened twice
    layers = len(study.layers)
    study.set_active_layer(study.layers[0])
    assert window.open_file_run(run.id) and window.wait_idle(60_000)
    assert len(window.session.studies) == 1 and len(study.layers) == layers and study.active_layer is layer
