"""DICOM-SEG export: a label map on a DICOM series (written here with pydicom) round-trips through
highdicom; NIfTI studies and empty masks are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from sd_fsmis.core.errors import MaskError, UserError
from sd_fsmis.core.io.dicom.seg import DicomSegExportError, export_dicom_seg
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.io.loader import load_volume
from sd_fsmis.core.volume import Volume

N_SLICES, ROWS, COLS = 5, 24, 20


def write_mr_series(folder: Path) -> None:
    """A 5-slice MR series, files named out of slice order (the order must come from the positions)."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for i in range(N_SLICES):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Seg", "SEG1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "MR", 1, i + 1, "test"
        ds.ImagePositionPatient = [-10.0, -12.0, 3.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.5], 3.0
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = rng.integers(0, 1000, (ROWS, COLS), dtype=np.uint16).tobytes()
        ds.save_as(folder / f"im{(i * 3) % N_SLICES:03d}.dcm", enforce_file_format=True)


@pytest.fixture
def dicom_study(tmp_path) -> Volume:
    write_mr_series(tmp_path / "series")
    return load_volume(tmp_path / "series")


def _label_map(volume: Volume) -> LabelMap:
    array = np.zeros(volume.shape, np.uint8)
    array[1, 2:6, 3:8] = 1
    array[3, 10:14, 4:9] = 4
    array[2, 5, 5] = 4
    return LabelMap.from_array(array, volume.geometry, {1: "liver", 4: "right kidney"})


def test_round_trip_segments_labels_and_frames(dicom_study, tmp_path):
    label_map = _label_map(dicom_study)
    out = export_dicom_seg(
        label_map, dicom_study, tmp_path / "out" / "seg.dcm", algorithm=("SD-FSMIS", "0.1.0")
    )
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY" and seg.number_of_segments == 2
    descriptions = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert [d.segment_label for d in descriptions] == ["liver", "right kidney"]
    assert all(d.algorithm_type.value == "AUTOMATIC" for d in descriptions)
    assert descriptions[0].algorithm_identification[0].AlgorithmName == "SD-FSMIS"
    assert descriptions[0].algorithm_identification[0].AlgorithmVersion == "0.1.0"
    kidney_type = seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.CodeMeaning == "Kidney"
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    # frames sit on the slices that hold the labels, at the source images' positions
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_study.metadata.files]
    positions = sorted(
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in seg.PerFrameFunctionalGroupsSequence
    )
    assert positions == [3.0, 6.0, 9.0]
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    # the pixels of each segment, per source instance in slice order, equal the mask
    uids = [ds.SOPInstanceUID for ds in sources]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], ignore_spatial_locations=True)
    assert pixels.shape == (N_SLICES, ROWS, COLS, 2)
    assert np.array_equal(pixels[..., 0].astype(bool), label_map.array == 1)
    assert np.array_equal(pixels[..., 1].astype(bool), label_map.array == 4)


def test_manual_mask_and_chosen_labels(dicom_study, tmp_path):
    label_map = _label_map(dicom_study)
    out = export_dicom_seg(
        label_map, dicom_study, tmp_path / "manual.dcm", labels=[4], series_description="kidney"
    )
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 1 and seg.SeriesDescription == "kidney"
    description = seg.get_segment_description(1)
    assert description.segment_label == "right kidney" and description.algorithm_type.value == "MANUAL"


def test_refusals(dicom_study, tmp_path, nibabel_file):
    empty = LabelMap.empty(dicom_study.geometry)
    with pytest.raises(MaskError, match="empty"):
        export_dicom_seg(empty, dicom_study, tmp_path / "x.dcm")
    with pytest.raises(MaskError, match="nothing is painted"):
        export_dicom_seg(_label_map(dicom_study), dicom_study, tmp_path / "x.dcm", labels=[2])
    nifti = load_volume(nibabel_file("anatomical.nii"))
    array = np.zeros(nifti.shape, np.uint8)
    array[0, 0, 0] = 1
    with pytest.raises(DicomSegExportError, match="NIfTI") as info:
        export_dicom_seg(LabelMap.from_array(array, nifti.geometry), nifti, tmp_path / "x.dcm")
    assert isinstance(info.value, UserError)
    assert not (tmp_path / "x.dcm").exists()


#: the SNOMED CT values of DICOM PS3.16 (CID 7151 and its subsets, CID 7150, CID 244), written out here so
#: that the export is checked against the standard, not against the table it is built from
EXPECTED_CODES = {
    "Liver": ("10200004", None, "91723000"),
    "Left kidney": ("64033007", "7771000", "91723000"),
    "kidney_right": ("64033007", "24028007", "91723000"),
    "spleen": ("78961009", None, "91723000"),
    "pancreas": ("15776009", None, "91723000"),
    "left ventricle": ("87878005", None, "91723000"),
    "right ventricle": ("53085002", None, "91723000"),
    "left atrium": ("82471001", None, "91723000"),
    "right atrium": ("73829009", None, "91723000"),
    "myocardium": ("49848007", None, "91723000"),
    "aorta": ("15825003", None, "91723000"),
    "right lung": ("39607008", "24028007", "91723000"),
    "urinary bladder": ("89837001", None, "91723000"),
    "prostate": ("41216001", None, "91723000"),
    "brain": ("12738006", None, "91723000"),
    "tumour": ("108369006", None, "49755003"),
    "my region": ("85756007", None, "85756007"),  # no standard code: Tissue, as 3D Slicer's default
}


def test_segments_carry_snomed_codes_category_and_laterality(dicom_study, tmp_path):
    array = np.zeros(dicom_study.shape, np.uint8)
    names = list(EXPECTED_CODES)
    for value, _name in enumerate(names, start=1):
        array[value % N_SLICES, value, 2:6] = value
    label_map = LabelMap.from_array(array, dicom_study.geometry, dict(enumerate(names, start=1)))
    out = export_dicom_seg(label_map, dicom_study, tmp_path / "coded.dcm")
    seg = pydicom.dcmread(out)  # read back plainly, as a PACS would
    assert len(seg.SegmentSequence) == len(names)
    for item in seg.SegmentSequence:
        type_value, side, category = EXPECTED_CODES[item.SegmentLabel]
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodingSchemeDesignator, prop.CodeValue) == ("SCT", type_value), item.SegmentLabel
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == category, item.SegmentLabel
        modifiers = prop.get("SegmentedPropertyTypeModifierCodeSequence") or []
        assert [m.CodeValue for m in modifiers] == ([side] if side else []), item.SegmentLabel
    # and highdicom reads the same concepts back
    described = hd.seg.segread(out).get_segment_description(2)
    assert described.segmented_property_type.value == "64033007"
    assert described.segmented_property_category.meaning == "Anatomical Structure"
