"""Irregular DICOM geometry (issue 13, item 2): a series with a missing slice, uneven spacing or a gantry
tilt is resampled to a regular grid on which every acquired slice lies at its true position; masks made on
it are written there (NIfTI), mapped back onto the acquired images (DICOM-SEG), and measured in true ml."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sd_fsmis.cli import main
from sd_fsmis.core.io.dicom.regularize import acquired_slices, plan_regular_grid
from sd_fsmis.core.io.dicom.seg import DicomSegExportError, export_dicom_seg, export_notes, export_problem
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.io.listing import list_series
from sd_fsmis.core.io.loader import load_volume

ROWS, COLS = 12, 10
SPACING = (0.8, 0.9)  # x (columns), y (rows) in mm

#: name -> (positions along the normal in mm, in-plane offsets of each slice in mm)
IRREGULAR = {
    "missing slice": ([0, 2.5, 5, 7.5, 12.5, 15, 17.5], None),
    "uneven spacing": ([0, 1, 2, 3.5, 4.5, 6, 7], None),
    # 0.9 mm along y per 2 mm: a 24 degree tilt whose shifts are whole pixels (values comparable exactly)
    "gantry tilt": ([0, 2, 4, 6, 8], [(0.0, 0.9 * i, 0.0) for i in range(5)]),
    "tilt and a missing slice": ([0, 2, 4, 8, 10], [(0.0, -0.45 * p, 0.0) for p in (0, 2, 4, 8, 10)]),
}


def _write(folder: Path, writer, name: str, values: np.ndarray | None = None, **extra) -> np.ndarray:
    positions, offsets = IRREGULAR[name]
    if values is None:
        values = np.random.default_rng(0).integers(-1000, 2000, size=(len(positions), ROWS, COLS))
    writer(folder, values.astype(np.int16), positions=positions, offsets=offsets, spacing=SPACING, **extra)
    return values


def _positions(folder: Path) -> list[np.ndarray]:
    """ImagePositionPatient of each file, in slice order."""
    files = sorted(folder.glob("*.dcm"))
    return [np.array([float(v) for v in pydicom.dcmread(f).ImagePositionPatient]) for f in files]


def _continuous_index(image: sitk.Image, point: np.ndarray) -> np.ndarray:
    return np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))


@pytest.mark.parametrize("name", list(IRREGULAR))
def test_every_acquired_slice_lies_on_a_grid_plane_with_its_own_values(name, tmp_path, dicom_series_writer):
    values = _write(tmp_path, dicom_series_writer, name)
    volume = load_volume(tmp_path)
    image = volume.to_sitk()
    for i, position in enumerate(_positions(tmp_path)):
        x, y, z = _continuous_index(image, position)
        assert abs(z - round(z)) < 1e-6 and abs(x - round(x)) < 1e-6 and abs(y - round(y)) < 1e-6
        z, y, x = round(z), round(y), round(x)
        np.testing.assert_array_equal(volume.array[z, y : y + ROWS, x : x + COLS], values[i])
    assert volume.metadata.regularization.exact
    notes = [w for w in volume.warnings if "regular grid" in w]
    assert len(notes) == 1 and "every acquired slice lies at its true position" in notes[0]
    assert list_series(tmp_path)[0].geometry == volume.geometry  # info says what loading gives


def test_a_tilt_off_the_pixel_lattice_is_interpolated_linearly(tmp_path, dicom_series_writer):
    """A ramp along y survives linear interpolation exactly: the values at each acquired slice's pixel
    centres, read back from the regular grid, are those of the slice."""
    positions = [0, 1.5, 3, 4.5]
    offsets = [(0.0, 0.4 * i, 0.0) for i in range(4)]  # 0.4 mm per slice: not whole 0.9 mm pixels
    ramp = np.broadcast_to((np.arange(ROWS) * 50)[None, :, None], (4, ROWS, COLS)).astype(np.int16)
    dicom_series_writer(tmp_path, ramp, positions=positions, offsets=offsets, spacing=SPACING)
    volume = load_volume(tmp_path)
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    for i, position in enumerate(_positions(tmp_path)):
        for row in range(1, ROWS - 1):  # the edge rows blend with the grid's border
            point = position + np.array([3 * SPACING[0], row * SPACING[1], 0.0])
            index = _continuous_index(image, point)
            assert abs(index[2] - round(index[2])) < 1e-6  # on a grid plane
            sampled = sitk.Resample(image, [1, 1, 1], sitk.Transform(), sitk.sitkLinear, point.tolist())
            assert sitk.GetArrayFromImage(sampled)[0, 0, 0] == pytest.approx(ramp[i, row, 3], abs=1.0)


def test_the_grid_step_fits_every_slice_or_says_how_far_it_is(tmp_path):
    axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def plan(distances):
        return plan_regular_grid(acquired_slices([(0, 0, d) for d in distances], axial, (1, 1), (4, 4)))

    assert plan([0, 3, 6, 12]).grid.spacing[2] == pytest.approx(3.0)
    assert plan([0, 2, 5]).grid.spacing[2] == pytest.approx(1.0)  # gaps 2 and 3: a 1 mm grid
    jitter = plan([0, 2.501, 4.999, 10.0])  # printed positions round: still on the grid
    assert jitter.exact and jitter.planes == (0, 1, 2, 4)
    odd = plan([0, 1.0, 2.3, 3.15, 4.71])  # no step within 4x the slices fits: said, with the distance
    assert not odd.exact and f"within {odd.max_error_mm:.2g} mm" in odd.note and odd.grid.size[2] <= 20


def _segment(capsys, query: Path, mask: Path, out: Path) -> tuple[int, dict, str]:
    args = ["--model", "classical", "--query", str(query), "--support-mask", str(mask), "--label", "1"]
    code = main(["segment", *args, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else {}), captured.err


@pytest.mark.parametrize("name", ["missing slice", "uneven spacing", "gantry tilt"])
def test_segment_writes_the_mask_where_the_slices_were_acquired(name, tmp_path, capsys, dicom_series_writer):
    """The test of item 2: the NIfTI mask's slice planes hold every DICOM slice position, and the volume in
    ml is that of the true voxels."""
    folder = tmp_path / "dicom"
    positions, _ = IRREGULAR[name]
    body = np.full((len(positions), ROWS, COLS), -50)
    body[:, 3:9, 2:8] = 80  # an 'organ' through every slice
    _write(folder, dicom_series_writer, name, values=body)
    volume = load_volume(folder)
    support = (volume.array == 80).astype(np.uint8)
    mask_path = tmp_path / "support.nii.gz"
    LabelMap.from_array(support, volume.geometry).save(mask_path)
    out = tmp_path / "pred.nii.gz"

    code, summary, err = _segment(capsys, folder, mask_path, out)

    assert code == 0, err
    assert err.count("regular grid") == 1  # said once, on stderr
    assert "every acquired slice lies at its true position" in summary["grid"]
    written = sitk.ReadImage(str(out))
    for position in _positions(folder):
        z = _continuous_index(written, position)[2]
        assert abs(z - round(z)) < 1e-6, (name, position, z)
    voxel_ml = np.prod(written.GetSpacing()) / 1000
    assert summary["volume_ml"] == pytest.approx(summary["voxels"] * voxel_ml)
    assert written.GetSpacing()[2] == pytest.approx(volume.geometry.spacing[2])


def test_dicom_seg_of_a_regularised_series_references_the_acquired_images(tmp_path, dicom_series_writer):
    folder = tmp_path / "dicom"
    _write(folder, dicom_series_writer, "tilt and a missing slice")
    volume = load_volume(folder)
    plan = volume.metadata.regularization
    assert volume.shape[0] == 6 and plan.planes == (0, 1, 2, 4, 5)
    array = np.zeros(volume.shape, np.uint8)
    array[:, 4:9, 3:7] = 1  # on every grid plane, the interpolated one (3) included
    label_map = LabelMap.from_array(array, volume.geometry, {1: "liver"})

    out = export_dicom_seg(label_map, volume, tmp_path / "seg.dcm")

    seg = hd.seg.segread(out)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.metadata.files]
    uids = [ds.SOPInstanceUID for ds in sources]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], ignore_spatial_locations=True)
    assert pixels.shape == (5, ROWS, COLS, 1)
    image = label_map.to_sitk()
    for i, ds in enumerate(sources):  # each acquired image's frame is the mask sampled where it lies
        for row in range(ROWS):
            for col in range(COLS):
                point = np.array([float(v) for v in ds.ImagePositionPatient])
                point += np.array([col * SPACING[0], row * SPACING[1], 0.0])
                x, y, z = (round(v) for v in _continuous_index(image, point))
                inside = 0 <= x < volume.shape[2] and 0 <= y < volume.shape[1]
                assert pixels[i, row, col, 0] == (array[z, y, x] if inside else 0)
    positions = sorted(
        tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
        for f in seg.PerFrameFunctionalGroupsSequence
    )
    assert positions == sorted(tuple(float(v) for v in ds.ImagePositionPatient) for ds in sources)
    notes = export_notes(label_map, volume)
    assert len(notes) == 1 and f"{int(array[3].sum())} mask voxel(s)" in notes[0]
    only_between = np.zeros(volume.shape, np.uint8)
    only_between[3, 4:9, 3:7] = 1
    with pytest.raises(Exception, match="only between the acquired images"):
        export_dicom_seg(LabelMap.from_array(only_between, volume.geometry), volume, tmp_path / "x.dcm")


def test_dicom_seg_without_a_frame_of_reference_is_refused_up_front(tmp_path, dicom_series_writer):
    """Item 12: said before any work, with what to do instead."""
    values = np.zeros((3, ROWS, COLS), np.int16)
    dicom_series_writer(tmp_path, values, extra={i: {"0020|0052": None} for i in range(3)})
    for f in tmp_path.glob("*.dcm"):  # the writer may add one: take it out with pydicom
        ds = pydicom.dcmread(f)
        if "FrameOfReferenceUID" in ds:
            del ds.FrameOfReferenceUID
            ds.save_as(f)
    volume = load_volume(tmp_path)
    problem = export_problem(volume)
    assert "no Frame of Reference UID" in problem and "NIfTI" in problem
    array = np.zeros(volume.shape, np.uint8)
    array[1, 2:5, 2:5] = 1
    with pytest.raises(DicomSegExportError, match="no Frame of Reference UID"):
        export_dicom_seg(LabelMap.from_array(array, volume.geometry), volume, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
