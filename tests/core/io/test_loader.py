"""Study I/O on real files: pydicom's and nibabel's test files, the CHAOS volumes, and DICOM series written
here with SimpleITK (multi-series folders, missing slices, uneven spacing, mixed sizes, CT rescale)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut

from sd_fsmis.core.errors import (
    JobCancelled,
    MultipleSeriesError,
    SeriesNotFoundError,
    StudyReadError,
    UserError,
)
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.listing import SeriesInfo, list_series
from sd_fsmis.core.io.loader import load_series, load_volume
from sd_fsmis.core.jobs import CancelToken

# ------------------------------------------------------------------------------------------- helpers

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_series(
    folder: Path,
    values: np.ndarray,
    *,
    uid: str = "1.2.826.0.1.3680043.8.498.100",
    positions: list[float] | None = None,
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-20.0, -30.0, 10.0),
    spacing: tuple[float, float] = (0.8, 0.9),
    description: str = "test series",
    modality: str = "CT",
    intercept: float = 0.0,
    slope: float = 1.0,
    start: int = 1,
    extra: dict | None = None,
    offsets: list[tuple[float, float, float]] | None = None,
) -> list[Path]:
    """Write ``values`` [z, y, x] (modality units) as one DICOM file per slice, as SimpleITK's
    DicomSeriesFromArray example does: the writer stores (value - intercept) / slope."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    positions = list(range(len(values))) if positions is None else positions
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for i, (slice_values, z) in enumerate(zip(values, positions)):
        image = sitk.GetImageFromArray(np.ascontiguousarray(slice_values))
        image.SetSpacing(spacing)
        position = np.asarray(origin) + z * normal + (np.asarray(offsets[i]) if offsets else 0.0)
        tags = {
            "0008|0016": CT_STORAGE,
            "0008|0018": f"{uid}.{start + i}",
            "0008|0060": modality,
            "0008|103e": description,
            "0010|0010": "Test^Patient",
            "0010|0020": "TEST-001",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": uid,
            "0020|0013": str(start + i),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation),
            "0028|1050": "40",
            "0028|1051": "400",
            "0028|1052": f"{intercept:g}",
            "0028|1053": f"{slope:g}",
        }
        tags.update((extra or {}).get(i, {}))
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / f"{uid.rsplit('.', 1)[-1]}_{start + i:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        paths.append(path)
    return paths


def random_hu(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.int16)


def sitk_series(folder: Path) -> sitk.Image:
    """The series read directly with SimpleITK, as a reference."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text


# ---------------------------------------------------------------------------------- single DICOM files


def test_ct_small_is_in_hounsfield_units_rescaled_once(pydicom_file):
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) != 0 or float(ds.RescaleSlope) != 1
    expected = apply_modality_lut(ds.pixel_array, ds)
    expected_manual = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    volume = load_volume(path)

    assert volume.shape == (1, 128, 128)
    np.testing.assert_array_equal(volume.array[0], expected)
    np.testing.assert_array_equal(volume.array[0], expected_manual)
    assert not np.array_equal(volume.array[0], ds.pixel_array)  # the intercept was applied ...
    twice = ds.pixel_array * float(ds.RescaleSlope) + 2 * float(ds.RescaleIntercept)
    assert not np.array_equal(volume.array[0], twice)  # ... exactly once
    meta = volume.metadata
    assert meta.modality == "CT"
    assert meta.series_instance_uid == ds.SeriesInstanceUID
    assert meta.study_instance_uid == ds.StudyInstanceUID
    assert meta.patient_id == ds.PatientID
    assert meta.source_format == "dicom"
    assert meta.files == [str(path)]
    reference = sitk.ReadImage(str(path))
    assert volume.geometry.matches(Geometry.from_image(reference))
    assert volume.geometry.spacing[2] == pytest.approx(float(ds.SliceThickness))


def test_window_centre_and_width_come_from_the_tags(tmp_path):
    write_series(
        tmp_path, random_hu((2, 8, 8)), extra={0: {"0028|1050": "40\\300", "0028|1051": "400\\1500"}}
    )
    volume = load_volume(tmp_path)
    assert volume.metadata.window_center == 40.0  # the first of several values
    assert volume.metadata.window_width == 400.0


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_lossless_and_other_encodings_give_the_same_pixels(pydicom_file, name):
    reference = load_volume(pydicom_file("MR_small.dcm"))
    volume = load_volume(pydicom_file(name))
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.geometry.matches(reference.geometry)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "JPEG-lossy.dcm", "693_J2KI.dcm"])
def test_lossy_compressed_files_load(pydicom_file, name):
    path = pydicom_file(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    volume = load_volume(path)
    assert volume.shape == (1, ds.Rows, ds.Columns)
    assert np.isfinite(volume.array).all()
    assert volume.array.std() > 0
    assert volume.geometry.matches(Geometry.from_image(sitk.ReadImage(str(path))))


def test_jpeg2000_pixels_agree_with_pydicom(pydicom_file):
    path = pydicom_file("JPEG2000.dcm")
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(load_volume(path).array[0], apply_modality_lut(ds.pixel_array, ds))


@pytest.mark.parametrize(
    "name", ["SC_rgb_rle.dcm", "SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm"]
)
def test_colour_becomes_luminance_with_a_warning(pydicom_file, name):
    path = pydicom_file(name)
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)  # pydicom converts YBR to RGB
    expected = rgb @ np.array([0.299, 0.587, 0.114])

    info = list_series(path)[0]
    volume = load_volume(path)

    assert volume.array.dtype == np.float32
    assert volume.shape == (1, *rgb.shape[:2])
    np.testing.assert_allclose(volume.array[0], expected, atol=1.0)  # YBR->RGB rounding differs by 1
    assert any("colour" in w for w in volume.warnings)
    assert any("colour" in w for w in info.warnings)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "examples_palette.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_compressed_and_palette_colour_images_load(pydicom_file, name):
    volume = load_volume(pydicom_file(name))
    assert volume.array.dtype == np.float32 and volume.array.std() > 0
    assert any("colour" in w for w in volume.warnings)


def test_multi_frame_colour_ultrasound(pydicom_file):
    volume = load_volume(pydicom_file("examples_ybr_color.dcm"))
    assert volume.shape == (30, 240, 320)


def test_multi_frame_dicom(pydicom_file):
    path = pydicom_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    volume = load_volume(path)
    assert volume.shape == (15, 10, 10)
    np.testing.assert_array_equal(volume.array, ds.pixel_array)
    reference = sitk.ReadImage(str(path))
    assert volume.geometry.matches(Geometry.from_image(reference))
    assert list_series(path)[0].size == (10, 10, 15)


def test_pydicom_decodes_what_gdcm_cannot(pydicom_file):
    path = pydicom_file("rtdose_1frame.dcm")
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array[0], pydicom.dcmread(path).pixel_array)
    assert any("pydicom" in w for w in volume.warnings)
    assert volume.geometry.matches(list_series(path)[0].geometry)


def test_loaded_array_is_a_writable_numpy_array(pydicom_file):
    volume = load_volume(pydicom_file("CT_small.dcm"))
    volume.array[0, 0, 0] = 123
    assert volume.array[0, 0, 0] == 123
    assert volume.to_sitk().GetSize() == (128, 128, 1)


# ---------------------------------------------------------------------------------------- DICOMDIR


def test_dicomdir_lists_the_same_series_as_its_folder(pydicom_file):
    dicomdir = pydicom_file("DICOMDIR")
    from_dicomdir = {s.uid: s for s in list_series(dicomdir)}
    from_folder = {s.uid: s for s in list_series(dicomdir.parent) if not s.files[0].count("TINY_ALPHA")}
    assert set(from_dicomdir) == set(from_folder)
    assert len(from_dicomdir) == 24  # 13 series records, three of them split by orientation
    for uid, info in from_dicomdir.items():
        assert info.format == "dicomdir"
        assert info.geometry.matches(from_folder[uid].geometry), uid
        assert info.n_files == from_folder[uid].n_files


def test_dicomdir_series_loads_like_a_direct_read(pydicom_file):
    dicomdir = pydicom_file("DICOMDIR")
    info = next(s for s in list_series(dicomdir) if s.description == "SmartScore - Gated 0.5 sec")
    volume = load_series(info)
    reference = sitk_series(dicomdir.parent / "98892001" / "CT5N")
    assert volume.shape == (5, 16, 16)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))
    assert volume.geometry.matches(Geometry.from_image(reference))
    assert volume.metadata.source_format == "dicomdir"
    assert not volume.warnings


def test_dicomdir_without_images_is_refused(pydicom_file):
    tiny = pydicom_file("DICOMDIR").parent / "TINY_ALPHA" / "DICOMDIR"
    with pytest.raises(StudyReadError, match="no readable images") as exc:
        list_series(tiny)
    assert_one_line(exc.value)


def test_damaged_dicomdir_is_one_line(pydicom_file):
    with pytest.raises(StudyReadError, match="DICOMDIR") as exc:
        list_series(pydicom_file("DICOMDIR").parent / "DICOMDIR-nopatient")
    assert_one_line(exc.value)


def test_mixed_orientations_are_split(pydicom_file):
    """The tri-planar localizer of pydicom's test set: one series uid, three orientations."""
    folder = pydicom_file("DICOMDIR").parent / "98892003" / "MR2"
    series = list_series(folder)
    parts = [s for s in series if s.uid.startswith("1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136.")]
    assert [s.uid.rsplit(".", 1)[1] for s in parts] == ["1", "2", "3"]
    directions = {tuple(np.round(s.direction, 3)) for s in parts}
    assert len(directions) == 3
    assert all("orientations" in s.warnings[0] for s in parts)
    # the original uid names all three parts: the user has to choose
    with pytest.raises(MultipleSeriesError) as exc:
        load_volume(folder, "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136")
    assert len(exc.value.series) == 3
    volume = load_volume(folder, parts[1].uid)
    assert volume.geometry.matches(parts[1].geometry)


# ----------------------------------------------------------------------------- series written here


def test_multi_series_folder_lists_every_series_and_asks_to_choose(tmp_path):
    a = random_hu((6, 12, 10), seed=1)
    b = random_hu((4, 12, 10), seed=2)
    c = random_hu((5, 8, 8), seed=3)
    write_series(tmp_path, a, uid="1.2.826.0.1.3680043.8.498.11", description="axial A")
    write_series(
        tmp_path, b, uid="1.2.826.0.1.3680043.8.498.12", description="axial B", positions=[0, 2, 4, 6]
    )
    write_series(tmp_path / "sub" / "deeper", c, uid="1.2.826.0.1.3680043.8.498.13", description="C")

    series = {s.uid: s for s in list_series(tmp_path)}

    assert set(series) == {
        "1.2.826.0.1.3680043.8.498.11",
        "1.2.826.0.1.3680043.8.498.12",
        "1.2.826.0.1.3680043.8.498.13",
    }
    assert series["1.2.826.0.1.3680043.8.498.11"].size == (10, 12, 6)
    assert series["1.2.826.0.1.3680043.8.498.12"].spacing == pytest.approx((0.8, 0.9, 2.0))
    assert series["1.2.826.0.1.3680043.8.498.13"].n_files == 5
    assert all(s.modality == "CT" and not s.warnings and not s.error for s in series.values())
    with pytest.raises(MultipleSeriesError) as exc:
        load_volume(tmp_path)
    message = str(exc.value)
    assert_one_line(exc.value)
    for uid, description in [
        ("1.2.826.0.1.3680043.8.498.11", "axial A"),
        ("1.2.826.0.1.3680043.8.498.12", "axial B"),
    ]:
        assert uid in message and description in message
    assert {s.uid for s in exc.value.series} == set(series)
    for uid, values in [("1.2.826.0.1.3680043.8.498.11", a), ("1.2.826.0.1.3680043.8.498.12", b)]:
        volume = load_volume(tmp_path, uid)
        np.testing.assert_array_equal(volume.array, values)
        assert volume.geometry.matches(series[uid].geometry)
    c_volume = load_volume(tmp_path / "sub")
    np.testing.assert_array_equal(c_volume.array, c)
    assert c_volume.geometry.matches(Geometry.from_image(sitk_series(tmp_path / "sub" / "deeper")))
    with pytest.raises(SeriesNotFoundError, match="axial A") as exc:
        load_volume(tmp_path, "1.2.3.4.5")
    assert_one_line(exc.value)


def test_geometry_matches_simpleitk_for_an_oblique_series(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0.0, 0.0, 0.0, -1.0)  # coronal-ish, rotated about z
    values = random_hu((5, 9, 7))
    write_series(tmp_path, values, orientation=orientation, positions=[0, 1.5, 3, 4.5, 6])
    info = list_series(tmp_path)[0]
    volume = load_volume(tmp_path)
    reference = Geometry.from_image(sitk_series(tmp_path))
    assert volume.geometry.matches(reference)
    assert info.geometry.matches(reference)
    assert volume.geometry.spacing[2] == pytest.approx(1.5)
    np.testing.assert_array_equal(volume.array, values)


def test_ct_with_rescale_intercept_is_loaded_in_hu_exactly_once(tmp_path):
    hu = random_hu((4, 16, 16))
    paths = write_series(tmp_path, hu, intercept=-1024)
    ds = pydicom.dcmread(paths[0])
    assert float(ds.RescaleIntercept) == -1024
    np.testing.assert_array_equal(ds.pixel_array, hu[0].astype(np.int32) + 1024)  # stored = HU + 1024
    np.testing.assert_array_equal(apply_modality_lut(ds.pixel_array, ds), hu[0])

    volume = load_volume(tmp_path)

    np.testing.assert_array_equal(volume.array, hu)
    assert np.issubdtype(volume.array.dtype, np.integer)


def test_slices_with_different_rescale_are_each_rescaled(tmp_path):
    values = np.stack([np.full((6, 6), v, np.int16) for v in (100, 250, -70)])
    paths = write_series(tmp_path, values)
    # give each file its own rescale (GDCM's writer only writes integer slopes): 2.5 x, then -1024
    for path, (slope, intercept) in zip(paths[1:], [(2.5, 0), (1, -1024)]):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(path)
    expected = [apply_modality_lut(pydicom.dcmread(p).pixel_array, pydicom.dcmread(p)) for p in paths]
    assert [float(e[0, 0]) for e in expected] == [100.0, 625.0, -1094.0]
    volume = load_volume(tmp_path)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, np.stack(expected))


def test_a_missing_slice_is_put_back_on_a_regular_grid_with_a_warning(tmp_path):
    values = random_hu((10, 8, 8))
    write_series(tmp_path, values, positions=[i * 2.5 for i in range(10)])
    (tmp_path / "100_0005.dcm").unlink()  # slice 5 of 10 (index 4)

    info = list_series(tmp_path)[0]
    volume = load_volume(tmp_path)

    assert volume.shape == (10, 8, 8)  # the acquired slices where they were, the missing one interpolated
    kept = [0, 1, 2, 3, 5, 6, 7, 8, 9]
    np.testing.assert_array_equal(volume.array[kept], values[kept])
    expected = np.rint((values[3].astype(float) + values[5]) / 2)
    np.testing.assert_allclose(volume.array[4], expected, atol=1)
    assert volume.geometry.spacing[2] == pytest.approx(2.5)
    assert any("1 missing slice" in w for w in volume.warnings), volume.warnings
    assert any("regular grid of 10 slices 2.5 mm apart" in w for w in volume.warnings)
    assert info.warnings == volume.warnings and info.size == (8, 8, 10)
    assert volume.metadata.regularization.planes == (0, 1, 2, 3, 5, 6, 7, 8, 9)
    as_stacked = load_volume(tmp_path, regularize=False)  # the slices stacked as they come
    np.testing.assert_array_equal(as_stacked.array, np.delete(values, 4, axis=0))
    assert any("approximate" in w for w in as_stacked.warnings)


def test_non_uniform_spacing_is_resampled_with_a_warning_giving_the_range(tmp_path):
    positions = [0, 1, 2, 3.7, 4.7, 5.7, 7.0, 8.0]  # on a 0.1 mm lattice: finer than 4x the slices
    write_series(tmp_path, random_hu((8, 8, 8)), positions=positions)
    info = list_series(tmp_path)[0]
    volume = load_volume(tmp_path)
    warning = next(w for w in volume.warnings if "non-uniform" in w)
    assert "1 to 1.7 mm" in warning
    assert info.warnings == volume.warnings
    plan = volume.metadata.regularization
    assert volume.shape[0] <= 4 * 8 and not plan.exact
    assert any(f"within {plan.max_error_mm:.2g} mm of its true position" in w for w in volume.warnings)
    grid = np.arange(volume.shape[0]) * volume.geometry.spacing[2]
    assert max(min(abs(grid - p)) for p in positions) == pytest.approx(plan.max_error_mm)


def test_mixed_image_sizes_are_split_never_mixed(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.50"
    big = random_hu((5, 16, 20), seed=4)
    small = random_hu((3, 12, 12), seed=5)
    write_series(tmp_path, big, uid=uid)
    write_series(tmp_path, small, uid=uid, positions=[10, 11, 12], start=100)
    series = list_series(tmp_path)
    assert [s.uid for s in series] == [f"{uid}.1", f"{uid}.2"]
    assert {s.size for s in series} == {(20, 16, 5), (12, 12, 3)}
    assert all("different sizes" in s.warnings[0] for s in series)
    by_size = {s.size: s for s in series}
    np.testing.assert_array_equal(load_series(by_size[(20, 16, 5)]).array, big)
    np.testing.assert_array_equal(load_volume(tmp_path, by_size[(12, 12, 3)].uid).array, small)
    with pytest.raises(MultipleSeriesError):
        load_volume(tmp_path, uid)


def test_interleaved_echoes_are_separate_volumes(tmp_path):
    values = random_hu((6, 8, 8))
    extra = {i: {"0018|0086": str(1 + i % 2)} for i in range(6)}  # echo 1, 2, 1, 2, ...
    write_series(tmp_path, values, positions=[0, 0, 3, 3, 6, 6], extra=extra)
    series = list_series(tmp_path)
    assert len(series) == 2 and all("echoes" in s.warnings[0] for s in series)
    first = load_series(series[0])
    np.testing.assert_array_equal(first.array, values[0::2])
    assert first.geometry.spacing[2] == pytest.approx(3.0)


def test_slices_at_the_same_positions_with_nothing_to_tell_them_apart_are_refused(tmp_path):
    write_series(tmp_path, random_hu((4, 8, 8)), positions=[0, 0, 1, 1])
    info = list_series(tmp_path)[0]
    assert "distinct slice positions" in info.error
    with pytest.raises(StudyReadError, match="distinct slice positions") as exc:
        load_volume(tmp_path)
    assert_one_line(exc.value)


def test_gantry_tilt_is_reported_and_resampled(tmp_path):
    offsets = [(0.0, i * 0.5, 0.0) for i in range(5)]  # the stack leans along y: about 27 degrees
    write_series(tmp_path, random_hu((5, 8, 8)), offsets=offsets)
    volume = load_volume(tmp_path)
    assert any("sheared by 26.6 degrees" in w for w in volume.warnings), volume.warnings
    assert any("widened for the tilt" in w for w in volume.warnings)
    assert volume.shape == (5, 11, 8)  # 2 mm of shift at 0.8 mm pixels: 3 more rows


def test_series_spread_over_two_folders_is_one_series(tmp_path):
    values = random_hu((6, 8, 8))
    uid = "1.2.826.0.1.3680043.8.498.60"
    write_series(tmp_path / "part2", values[3:], uid=uid, positions=[3, 4, 5], start=4)
    write_series(tmp_path / "part1", values[:3], uid=uid, positions=[0, 1, 2])
    series = list_series(tmp_path)
    assert len(series) == 1 and series[0].n_files == 6
    np.testing.assert_array_equal(load_volume(tmp_path).array, values)


def test_unreadable_and_non_image_files_in_a_folder_are_skipped(tmp_path, pydicom_file):
    values = random_hu((3, 8, 8))
    write_series(tmp_path, values)
    shutil.copy(pydicom_file("rtplan.dcm"), tmp_path / "plan.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "DICOMDIR").write_bytes(os.urandom(100))
    series = list_series(tmp_path)
    assert len(series) == 1
    np.testing.assert_array_equal(load_volume(tmp_path).array, values)


@pytest.mark.parametrize("kind", ["plain", "missing slice", "uneven", "rescaled", "oblique", "mixed rescale"])
def test_quick_path_for_one_series_gives_what_the_careful_path_gives(kind, tmp_path, monkeypatch):
    """load_volume(folder) takes the slice headers from GDCM's pass when a folder holds one plain series."""
    values = random_hu((8, 10, 12))
    options = {
        "plain": {},
        "missing slice": {"positions": [0, 1, 2, 4, 5, 6, 7, 8]},
        "uneven": {"positions": [0, 1, 2, 3.5, 4.5, 5.5, 6.5, 7.5]},
        "rescaled": {"intercept": -1024},
        "oblique": {"orientation": (0.0, 0.8, 0.6, 0.0, -0.6, 0.8)},
        "mixed rescale": {"extra": {3: {"0028|1052": "-1000"}}},  # float32 needed: the careful path
    }[kind]
    write_series(tmp_path, values, **options)
    careful = load_series(list_series(tmp_path)[0])
    import sd_fsmis.core.io.dicom.headers as dicom_headers

    calls = []
    real = dicom_headers.read_headers
    monkeypatch.setattr(dicom_headers, "read_headers", lambda *a, **k: calls.append(1) or real(*a, **k))
    quick = load_volume(tmp_path)

    np.testing.assert_array_equal(quick.array, careful.array)
    assert quick.geometry == careful.geometry
    assert quick.warnings == careful.warnings
    assert quick.metadata.to_dict() == careful.metadata.to_dict()
    assert quick.metadata.files == careful.metadata.files
    assert bool(calls) == (kind == "mixed rescale")
    plan = quick.metadata.regularization  # missing slice, uneven: on a regular grid, acquired slices kept
    planes = list(plan.planes) if plan is not None else list(range(len(values)))
    assert (plan is not None) == (kind in ("missing slice", "uneven"))
    np.testing.assert_array_equal(quick.array[planes], values)


def test_series_info_is_json_able(tmp_path):
    write_series(tmp_path, random_hu((3, 8, 8)))
    info = list_series(tmp_path)[0]
    d = json.loads(json.dumps(info.to_dict()))
    for key in (
        "uid",
        "description",
        "modality",
        "size",
        "spacing",
        "origin",
        "direction",
        "n_files",
        "warnings",
    ):
        assert key in d
    assert d["path"] == str(tmp_path) and d["format"] == "dicom" and d["n_files"] == 3
    assert isinstance(info, SeriesInfo) and "files" not in d


def test_progress_and_cancellation(tmp_path):
    write_series(tmp_path, random_hu((12, 16, 16)))
    reports = []
    volume = load_volume(tmp_path, progress=reports.append)
    assert volume.shape == (12, 16, 16)
    assert reports and reports[-1].done == reports[-1].total == 12
    reports.clear()
    load_series(list_series(tmp_path, progress=reports.append)[0], progress=reports.append)
    assert [r.message for r in reports if r.done == r.total] == ["reading DICOM headers", "reading pixels"]

    token = CancelToken()
    token.cancel()
    with pytest.raises(JobCancelled):
        load_volume(tmp_path, cancel=token)

    token = CancelToken()

    def cancel_while_reading_pixels(report):
        if report.message == "reading pixels":
            token.cancel()

    with pytest.raises(JobCancelled):
        load_volume(tmp_path, progress=cancel_while_reading_pixels, cancel=token)


# ------------------------------------------------------------------------------------------- NIfTI


def test_nifti_loads_like_simpleitk(nibabel_file):
    path = nibabel_file("anatomical.nii")  # big-endian NIfTI-1
    reference = sitk.ReadImage(str(path))
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))
    assert volume.geometry.matches(Geometry.from_image(reference))
    info = list_series(path)[0]
    assert (info.uid, info.format, info.n_files) == ("anatomical.nii", "nifti", 1)
    assert info.geometry.matches(volume.geometry)
    assert volume.metadata.source_format == "nifti"


def test_4d_nifti_is_refused_unless_its_first_volume_is_asked_for(nibabel_file):
    path = nibabel_file("example4d.nii.gz")
    info = list_series(path)[0]
    assert info.n_volumes == 2 and info.size == (128, 96, 24)
    with pytest.raises(StudyReadError, match="4-D image with 2 volumes") as exc:
        load_volume(path)
    assert_one_line(exc.value)
    volume = load_volume(path, first_volume_of_4d=True)
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # [t, z, y, x]
    np.testing.assert_array_equal(volume.array, full[0])
    assert volume.geometry.matches(info.geometry)
    assert any("first volume" in w for w in volume.warnings)


def test_nifti2_is_read(nibabel_file, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    path = nibabel_file("example_nifti2.nii.gz")
    image = nibabel.load(path)
    assert image.header["sizeof_hdr"] == 540
    # the same image as NIfTI-1 (same affine and codes), read by SimpleITK, is the reference
    nifti1 = nibabel.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine)
    nifti1.header.set_qform(image.header.get_qform(), int(image.header["qform_code"]))
    nifti1.header.set_sform(image.header.get_sform(), int(image.header["sform_code"]))
    nibabel.save(nifti1, tmp_path / "as_nifti1.nii.gz")
    reference = sitk.ReadImage(str(tmp_path / "as_nifti1.nii.gz"))

    info = list_series(path)[0]
    volume = load_volume(path, first_volume_of_4d=True)

    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))
    assert volume.geometry.matches(Geometry.from_image(reference))
    assert info.geometry.matches(volume.geometry) and info.n_volumes == 2


def test_2d_nifti_is_a_one_slice_volume(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    data = np.arange(20, dtype=np.int16).reshape(5, 4)  # (x, y)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.5, 0.7, 1.0, 1.0])), tmp_path / "slice.nii.gz")
    volume = load_volume(tmp_path / "slice.nii.gz")
    assert volume.shape == (1, 4, 5)
    np.testing.assert_array_equal(volume.array[0], data.T)
    assert volume.geometry.spacing[:2] == pytest.approx((0.5, 0.7))
    assert list_series(tmp_path / "slice.nii.gz")[0].size == (5, 4, 1)


def test_single_2d_dicom_is_a_one_slice_volume(pydicom_file):
    volume = load_volume(pydicom_file("MR_small.dcm"))
    assert volume.shape == (1, 64, 64)


def test_folder_of_nifti_files_lists_each(chaos_dir):
    images = chaos_dir / "images"
    series = list_series(images)
    names = sorted(p.name for p in images.glob("*.nii.gz"))
    assert sorted(s.uid for s in series) == names
    info = next(s for s in series if s.uid == "image_1.nii.gz")
    volume = load_volume(images, "image_1.nii.gz")
    reference = sitk.ReadImage(str(images / "image_1.nii.gz"))
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))
    assert volume.geometry.matches(Geometry.from_image(reference))
    assert info.geometry.matches(volume.geometry)


# ---------------------------------------------------------------------------------------- bad input


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    return path


def _truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


BAD_INPUTS = {
    "zero-byte file": lambda tmp, pd, nb: (tmp / "empty.dcm").write_bytes(b"") or tmp / "empty.dcm",
    "random bytes .dcm": lambda tmp, pd, nb: _random_bytes(tmp / "noise.dcm"),
    "random bytes .nii.gz": lambda tmp, pd, nb: _random_bytes(tmp / "noise.nii.gz"),
    "random bytes, no suffix": lambda tmp, pd, nb: _random_bytes(tmp / "IM0001"),
    "truncated .nii.gz": lambda tmp, pd, nb: _truncated_copy(nb("example4d.nii.gz"), tmp / "cut.nii.gz"),
    "truncated .nii": lambda tmp, pd, nb: _truncated_copy(nb("anatomical.nii"), tmp / "cut.nii"),
    "empty folder": lambda tmp, pd, nb: tmp,
    "folder without images": lambda tmp, pd, nb: (
        (
            shutil.copy(pd("rtplan.dcm"), tmp),
            shutil.copy(pd("test-SR.dcm"), tmp),
            (tmp / "readme.txt").write_text("x"),
        )
        and tmp
    ),
    "RT plan": lambda tmp, pd, nb: pd("rtplan.dcm"),
    "structured report": lambda tmp, pd, nb: pd("test-SR.dcm"),
    "RT structure set without meta": lambda tmp, pd, nb: pd("rtstruct.dcm"),
    "ECG waveform": lambda tmp, pd, nb: pd("waveform_ecg.dcm"),
    "truncated DICOM image": lambda tmp, pd, nb: pd("MR_truncated.dcm"),
    "truncated RT plan": lambda tmp, pd, nb: pd("rtplan_truncated.dcm"),
    "DICOM without meta and not an image": lambda tmp, pd, nb: pd("no_meta.dcm"),
    "gzipped DICOM": lambda tmp, pd, nb: pd("zipMR.gz"),
    "missing path": lambda tmp, pd, nb: tmp / "does-not-exist",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_study_read_error(case, tmp_path, pydicom_file, nibabel_file):
    path = BAD_INPUTS[case](tmp_path, pydicom_file, nibabel_file)
    with pytest.raises(StudyReadError) as exc:
        load_volume(path)
    assert_one_line(exc.value)
    assert str(path) in str(exc.value) or Path(str(exc.value).split(":")[0]).exists()


@pytest.mark.parametrize(
    "name",
    ["JPEG2000-embedded-sequence-delimiter.dcm", "MR_truncated.dcm"],
)
def test_undecodable_pixels_are_one_line(pydicom_file, name):
    with pytest.raises(StudyReadError) as exc:
        load_volume(pydicom_file(name))
    assert_one_line(exc.value)


def test_a_truncated_file_in_a_series_is_left_out_with_a_warning(tmp_path):
    values = random_hu((5, 16, 16))
    paths = write_series(tmp_path, values)
    _truncated_copy(paths[2], paths[2])
    info = list_series(tmp_path)[0]
    assert info.n_files == 4
    assert any("could not be read" in w and paths[2].name in w for w in info.warnings), info.warnings
    assert any("1 missing slice" in w for w in info.warnings)
    volume = load_volume(tmp_path)
    assert volume.shape == values.shape  # the left-out slice is interpolated between its neighbours
    np.testing.assert_array_equal(volume.array[[0, 1, 3, 4]], values[[0, 1, 3, 4]])


def test_a_series_gdcm_cannot_parse_is_listed_and_refused_in_one_line(tmp_path, pydicom_file):
    shutil.copy(pydicom_file("MR_truncated.dcm"), tmp_path / "mr.dcm")
    info = list_series(tmp_path)[0]
    assert "truncated" in info.error
    with pytest.raises(StudyReadError, match="truncated") as exc:
        load_volume(tmp_path)
    assert_one_line(exc.value)


def test_unreadable_file_and_folder(tmp_path, pydicom_file, monkeypatch):
    """Tests run as root, so a permission problem is simulated where the loader asks the OS."""
    ct = tmp_path / "ct.dcm"
    shutil.copy(pydicom_file("CT_small.dcm"), ct)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == ct else real_access(p, mode, **kw)
    )
    with pytest.raises(StudyReadError, match="permission denied") as exc:
        load_volume(ct)
    assert_one_line(exc.value)
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real_access(p, mode, **kw)
    )
    with pytest.raises(StudyReadError, match="permission denied"):
        list_series(tmp_path)


def test_permission_error_while_reading_is_a_study_read_error(tmp_path, monkeypatch):
    write_series(tmp_path, random_hu((2, 8, 8)))
    import sd_fsmis.core.io.dicom.series as dicom_series

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.dcm"))

    monkeypatch.setattr(dicom_series, "find_series_files", refuse)
    with pytest.raises(StudyReadError, match="permission denied") as exc:
        list_series(tmp_path)
    assert_one_line(exc.value)


def test_every_pydicom_test_file_gives_a_volume_or_a_user_error(pydicom_file):
    """No crash and no hang on any of pydicom's test files, damaged ones included."""
    test_files = pydicom_file("CT_small.dcm").parent  # globbed here: get_testdata_files may try downloads
    skip = ("SC_rgb_jpeg.dcm",)  # GDCM takes seconds to decode this one file (it does load)
    for name in sorted(test_files.glob("*.dcm")):
        if name.name in skip:
            continue
        try:
            for info in list_series(name):
                volume = load_series(info, first_volume_of_4d=True)
                assert volume.array.ndim == 3
        except UserError as exc:
            assert_one_line(exc)


def test_other_formats_simpleitk_reads(tmp_path):
    """NRRD and MetaImage load like NIfTI; a 2-D RGB picture becomes a one-slice luminance volume."""
    values = random_hu((4, 6, 5))
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    for name in ("ct.nrrd", "ct.mha"):
        sitk.WriteImage(image, str(tmp_path / name))
        volume = load_volume(tmp_path / name)
        np.testing.assert_array_equal(volume.array, values)
        assert volume.geometry.matches(Geometry.from_image(image))
        assert list_series(tmp_path / name)[0].format in ("nrrd", "meta")
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "red.png"))
    picture = load_volume(tmp_path / "red.png")
    assert picture.shape == (1, 4, 5)
    np.testing.assert_allclose(picture.array, 0.299 * 255, rtol=1e-6)


# ------------------------------------------------------- data safety (issue 13): a bad file in a folder


def test_a_file_gdcm_cannot_parse_does_not_hide_the_folder(tmp_path, pydicom_file):
    """One file stops GDCM's scan of its whole folder (its raw text was the only answer): the folder's
    files are then read one by one, every readable series is offered, and the damaged file is named."""
    values = random_hu((4, 8, 8))
    paths = write_series(tmp_path, values)
    shutil.copy(pydicom_file("rtdose_1frame.dcm"), tmp_path / "dose.dcm")  # GDCM's scan throws on it
    (tmp_path / "broken.dcm").write_bytes(paths[0].read_bytes()[:300])  # a header that breaks off
    with pytest.raises(RuntimeError):  # what GDCM does with this folder
        sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path))

    series = list_series(tmp_path)

    ct = next(s for s in series if s.modality == "CT")
    assert ct.size == (8, 8, 4) and not ct.error
    assert any("1 DICOM file(s)" in w and "broken.dcm" in w for w in ct.warnings), ct.warnings
    np.testing.assert_array_equal(load_series(ct).array, values)
    np.testing.assert_array_equal(load_volume(tmp_path, ct.uid).array, values)


def test_pydicoms_own_test_folder_offers_every_readable_series(pydicom_file):
    folder = pydicom_file("CT_small.dcm").parent
    series = list_series(folder)
    assert len(series) > 40
    assert sum(1 for s in series if not s.error) > 40
    ct_small = next(s for s in series if Path(s.files[0]).name == "CT_small.dcm")
    assert load_series(ct_small).shape == (1, 128, 128)


def test_planar_images_have_no_patient_orientation(pydicom_file, tmp_path, capsys):
    """Item 13: JPEG-lossy.dcm (a whole-body NM scan without Image Orientation (Patient)) and a picture
    claim no orientation; a CT slice and a NIfTI with a qform do."""
    from sd_fsmis.cli import main

    planar = pydicom_file("JPEG-lossy.dcm")
    assert not list_series(planar)[0].oriented and not load_volume(planar).metadata.oriented
    assert load_volume(pydicom_file("CT_small.dcm")).metadata.oriented
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.uint8)), str(tmp_path / "picture.png"))
    assert not load_volume(tmp_path / "picture.png").metadata.oriented
    assert main(["info", str(planar)]) == 0
    out = capsys.readouterr().out
    assert "none" in out and "no patient orientation" in out and "LPS" not in out
