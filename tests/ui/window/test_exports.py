"""Issue 14, item 9: DICOM-SEG goes to a folder chosen once (remembered, never the study's DICOM folder), a
finished export says where (and opens the folder), and a label map loaded without names asks for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # tests may; the ui code may not
from PySide6 import QtWidgets

from sd_fsmis.ui.settings import AppSettings

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def ct_series(tmp_path, dicom_series_writer) -> Path:
    folder = tmp_path / "patient" / "ct"
    values = np.full((4, 32, 40), -1000, np.int16)
    values[:, 8:24, 10:30] = 40
    dicom_series_writer(folder, values)
    return folder


def test_dicom_seg_goes_to_the_folder_chosen_once_and_says_where(
    make_window, ct_series, tmp_path, monkeypatch
):
    window = make_window(save_settings=True)  # the settings file lives in the test's own home
    window.open_paths([ct_series])
    assert window.wait_idle(60_000) and window.active_study is not None
    layer = window.active_layer
    layer.set_label(layer.labels[1].__class__(1, "right kidney", (255, 0, 0)))
    layer.paint_line(0, 1, [(16, 20), (18, 24)], radius=3)
    exports = tmp_path / "exports"
    exports.mkdir()
    asked: list[str] = []
    answers = iter([str(ct_series), str(exports)])

    def choose_folder(parent, title, start):
        asked.append(start)
        return next(answers)

    saved_at: list[str] = []

    def save_file(parent, title, suggested, filters):
        saved_at.append(suggested)
        return suggested, filters

    monkeypatch.setattr(QtWidgets.QFileDialog, "getExistingDirectory", choose_folder)
    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", save_file)
    # the study's own folder is refused as the export folder; nothing is written
    window.files.export_dicom_seg_dialog()
    assert "holds an open study's images" in window.errors[-1] and not saved_at
    assert asked == [str(Path.home())]  # the chooser starts in the home folder, not next to the images
    window.files.export_dicom_seg_dialog()  # a folder of its own: remembered
    assert window.wait_idle(60_000), window.errors
    assert Path(saved_at[-1]).parent == exports
    out = Path(saved_at[-1])
    assert out.is_file() and not any(p.name.endswith("_seg.dcm") for p in ct_series.iterdir())
    assert AppSettings.load().export_folder == str(exports)  # saved at once, for the next run
    # the confirmation names the file and opens its folder
    box = window.files.export_box
    assert box is not None and box.isVisible() and str(out) in box.text()
    assert "1 segment as DICOM-SEG" in box.text()
    ARTIFACTS.mkdir(exist_ok=True)
    assert box.grab().save(str(ARTIFACTS / "dicom_seg_exported.png"))
    opened: list[Path] = []
    window.files.open_folder = opened.append
    open_button = next(b for b in box.buttons() if b.text() == "Open folder")
    open_button.click()
    assert opened == [exports]
    # the SEG carries the code of the structure, with its side
    seg = pydicom.dcmread(out)
    prop = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (prop.CodeValue, prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning) == (
        "64033007",
        "Right",
    )
    # the next export does not ask again
    window.files.export_dicom_seg_dialog()
    assert window.wait_idle(60_000)
    assert len(asked) == 2 and Path(saved_at[-1]).parent == exports


def test_a_label_map_without_names_asks_for_them(make_window, ct_series, tmp_path):
    window = make_window()
    window.open_paths([ct_series])
    assert window.wait_idle(60_000)
    study = window.active_study
    array = np.zeros(study.volume.shape, np.uint8)
    array[1, 8:14, 10:16] = 1
    array[2, 16:22, 20:28] = 2
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(study.geometry.image_from_array(array), str(path))
    window.files.load(path)
    assert window.wait_idle(60_000), window.errors
    layer = study.active_layer
    dialog = window.files.names_dialog
    assert dialog is not None and dialog.isVisible() and dialog.values == [1, 2]
    assert dialog.combos[1].findText("liver") >= 0 and dialog.combos[1].findText("right kidney") >= 0
    dialog.set_name(1, "liver")
    dialog.set_name(2, "Kidney_Left")  # free text, recognised with its side
    assert dialog.table.item(1, 2).text() == "SNOMED CT 64033007 + Left"
    assert dialog.table.item(0, 2).text() == "SNOMED CT 10200004"
    ARTIFACTS.mkdir(exist_ok=True)
    assert dialog.grab().save(str(ARTIFACTS / "label_names_dialog.png"))
    dialog.accept()
    assert layer.label_map.label_name(1) == "liver" and layer.label_map.label_name(2) == "Kidney_Left"
    # a mask whose labels have names asks nothing
    window.files.names_dialog = None
    assert window.files.ask_label_names(layer) is None


def test_supervoxels_open_as_a_mask_without_asking_for_names(make_window, ct_series, tmp_path):
    """`sd-fsmis supervoxels` output: hundreds of numbered regions, opened as a mask, nothing to name."""
    from sd_fsmis.core.training.supervoxels import SupervoxelParameters, Supervoxels, save_supervoxels

    window = make_window()
    window.open_paths([ct_series])
    assert window.wait_idle(60_000)
    study = window.active_study
    z, h, w = study.volume.shape
    blocks = np.arange(z * (h // 2) * (w // 2), dtype=np.int32).reshape(z, h // 2, w // 2) + 1
    labels = np.kron(blocks, np.ones((1, 2, 2), np.int32))  # 2 x 2 pixel regions: hundreds of labels
    result = Supervoxels(labels, labels > 0, SupervoxelParameters())
    assert result.count > 255
    path = save_supervoxels(result, study.geometry, tmp_path / "sv.nii.gz")
    window.files.load(path)
    assert window.wait_idle(60_000), window.errors
    assert np.array_equal(study.active_layer.label_map.array, result.labels)
    assert window.files.names_dialog is None and not window.errors
