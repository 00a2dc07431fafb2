"""Label maps: values and types, names and colours, exact NIfTI round trip, geometry checks, atomic save."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.core.errors import GeometryMismatchError, MaskError, StudyReadError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io import labelmap as labelmap_module
from sd_fsmis.core.io.labelmap import (
    CHAOS_MR_ORGANS,
    DEFAULT_COLOURS,
    Label,
    LabelMap,
    default_colour,
    labels_sidecar_path,
    make_labels,
)

GRID = Geometry(
    size=(6, 5, 4),  # x, y, z -> numpy (4, 5, 6)
    spacing=(1.25, 1.25, 7.7),
    origin=(-10.0, 20.0, -30.0),
    direction=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
)


def _blocks() -> np.ndarray:
    a = np.zeros(GRID.shape, dtype=np.int64)
    a[1:3, 1:4, 1:3] = 1
    a[2, 0, 4:6] = 2
    return a


def _write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


# ------------------------------------------------------------------------------------------- labels
def test_default_colours_follow_itksnap_order():
    assert default_colour(1) == (255, 0, 0)
    assert default_colour(2) == (0, 255, 0)
    assert default_colour(3) == (0, 0, 255)
    assert default_colour(4) == (255, 255, 0)
    assert len(DEFAULT_COLOURS) == 130
    assert default_colour(131) == default_colour(1)
    assert default_colour(0) == (0, 0, 0)


def test_label_validation_and_defaults():
    assert Label.default(7).name == "Label 7"
    assert Label(3, "spleen").name == "spleen"
    with pytest.raises(MaskError):
        Label(0, "background")
    with pytest.raises(MaskError):
        Label(70000, "too big")
    with pytest.raises(MaskError):
        Label(1, "liver", colour=(256, 0, 0))
    table = make_labels(CHAOS_MR_ORGANS)
    assert [lb.name for lb in table.values()] == ["liver", "right kidney", "left kidney", "spleen"]
    anatomical = make_labels({1: "liver"}, anatomy_colours=True)
    assert anatomical[1].colour == (221, 130, 101)


# ------------------------------------------------------------------------------------- from_array
def test_from_array_picks_the_smallest_type_and_labels_every_value():
    lm = LabelMap.from_array(_blocks(), GRID, {1: "liver"})
    assert lm.array.dtype == np.uint8
    assert lm.present_labels() == [1, 2]
    assert lm.labels[1].name == "liver" and lm.labels[2].name == "Label 2"
    assert lm.labels[2].colour == (0, 255, 0)
    big = _blocks()
    big[0, 0, 0] = 300
    assert LabelMap.from_array(big, GRID).array.dtype == np.uint16
    assert LabelMap.from_array(_blocks() > 0, GRID).array.dtype == np.uint8  # bool
    floats = LabelMap.from_array(_blocks().astype(np.float32), GRID)  # float 0.0/1.0/2.0 masks
    np.testing.assert_array_equal(floats.array, _blocks())


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "negative"), (0.5, "fractional"), (np.nan, "NaN"), (70000, "65535")],
)
def test_from_array_refuses_values_that_are_not_labels(value, message):
    a = _blocks().astype(np.float64)
    a[0, 0, 0] = value
    with pytest.raises(MaskError, match=message):
        LabelMap.from_array(a, GRID)


def test_from_array_refuses_other_shapes():
    with pytest.raises(GeometryMismatchError, match="another size"):
        LabelMap.from_array(np.zeros((4, 5, 7), np.uint8), GRID)
    with pytest.raises(MaskError, match="3-D"):
        LabelMap.from_array(np.zeros((5, 6), np.uint8), GRID)
    with pytest.raises(MaskError):
        LabelMap.from_array(np.zeros(GRID.shape, dtype=complex), GRID)


def test_queries():
    lm = LabelMap.from_array(_blocks(), GRID)
    assert lm.slices_with(1) == [1, 2]
    assert lm.slices_with(2) == [2]
    assert lm.slices_with(9) == []
    assert lm.binary(1).dtype == bool and lm.binary(1).sum() == 12
    assert lm.voxel_counts() == {1: 12, 2: 2}
    empty = LabelMap.empty(GRID)
    assert empty.present_labels() == [] and empty.array.shape == GRID.shape
    assert empty.label(5).colour == DEFAULT_COLOURS[4]


# ----------------------------------------------------------------------------------------- file I/O
def test_round_trip_is_exact_for_a_chaos_label_map(chaos_label_path, tmp_path):
    source = chaos_label_path(1)
    original = sitk.ReadImage(str(source))  # float64 0..4 in the file
    lm = LabelMap.load(source, labels=CHAOS_MR_ORGANS)
    assert lm.array.dtype == np.uint8
    np.testing.assert_array_equal(lm.array, sitk.GetArrayFromImage(original))
    assert lm.geometry == Geometry.from_image(original)
    lm.set_label(Label(4, "spleen", colour=(10, 20, 30), visible=False))

    out = lm.save(tmp_path / "liver_etc.nii.gz")
    sidecar = labels_sidecar_path(out)
    assert sidecar == tmp_path / "liver_etc.labels.json"
    doc = json.loads(sidecar.read_text())
    assert [d["name"] for d in doc["labels"]] == ["liver", "right kidney", "left kidney", "spleen"]

    again = LabelMap.load(out)  # names come back from the sidecar, not from the caller
    np.testing.assert_array_equal(again.array, lm.array)
    assert again.array.dtype == lm.array.dtype
    assert again.geometry == lm.geometry  # exactly, not only within tolerance
    assert again.labels == lm.labels
    assert again.labels[4].colour == (10, 20, 30) and again.labels[4].visible is False
    assert sorted(os.listdir(tmp_path)) == ["liver_etc.labels.json", "liver_etc.nii.gz"]


def test_round_trip_uint16_and_uncompressed(tmp_path):
    a = _blocks()
    a[3, 4, 5] = 1000
    lm = LabelMap.from_array(a, GRID, [Label(1000, "lesion", (1, 2, 3))])
    again = LabelMap.load(lm.save(tmp_path / "m.nii"))
    assert again.array.dtype == np.uint16
    np.testing.assert_array_equal(again.array, a)
    assert again.geometry.matches(GRID)
    assert again.labels[1000] == Label(1000, "lesion", (1, 2, 3))


def test_save_refuses_other_formats(tmp_path):
    with pytest.raises(MaskError, match="NIfTI"):
        LabelMap.empty(GRID).save(tmp_path / "mask.png")


def test_float_mask_file_accepted_when_whole_numbers_only(tmp_path):
    image = GRID.image_from_array(_blocks().astype(np.float32))
    lm = LabelMap.load(_write(image, tmp_path / "float.nii.gz"))
    np.testing.assert_array_equal(lm.array, _blocks())
    fractional = _blocks().astype(np.float32) * 0.5
    path = _write(GRID.image_from_array(fractional), tmp_path / "prob.nii.gz")
    with pytest.raises(MaskError, match=r"prob\.nii\.gz.*fractional"):
        LabelMap.load(path)


def test_4d_and_vector_files_are_refused_2d_is_one_slice(tmp_path):
    volume = GRID.image_from_array(_blocks().astype(np.uint8))
    four_d = _write(sitk.JoinSeries([volume, volume]), tmp_path / "4d.nii.gz")
    with pytest.raises(MaskError, match="4-D"):
        LabelMap.load(four_d)
    vector = _write(sitk.Compose([volume, volume]), tmp_path / "vector.nii.gz")
    with pytest.raises(MaskError, match="one value per voxel"):
        LabelMap.load(vector)
    flat = _write(sitk.GetImageFromArray(np.ones((5, 6), np.uint8)), tmp_path / "2d.nii.gz")
    assert LabelMap.load(flat).shape == (1, 5, 6)


def test_broken_files_are_refused(tmp_path):
    good = LabelMap.from_array(_blocks(), GRID).save(tmp_path / "good.nii.gz")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    random = tmp_path / "random.nii.gz"
    random.write_bytes(np.random.default_rng(0).bytes(4000))
    raw = tmp_path / "raw.nii"
    raw.write_bytes(gzip.decompress(data)[:-10])  # an uncompressed NIfTI missing its last voxels
    for path in (truncated, random, raw, tmp_path / "missing.nii.gz"):
        with pytest.raises(StudyReadError):
            LabelMap.load(path)


def test_truncated_chaos_file_is_refused(chaos_label_path, tmp_path):
    data = chaos_label_path(2).read_bytes()
    truncated = tmp_path / "label_2.nii.gz"
    truncated.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(StudyReadError, match="truncated"):
        LabelMap.load(truncated)


def test_unreadable_sidecar_gives_default_names_and_a_warning(tmp_path):
    path = LabelMap.from_array(_blocks(), GRID, {1: "liver"}).save(tmp_path / "m.nii.gz")
    labels_sidecar_path(path).write_text("{not json")
    lm = LabelMap.load(path, labels={2: "kidney"})
    assert lm.labels[1].name == "Label 1" and lm.labels[2].name == "kidney"
    assert any("label names not read" in w for w in lm.warnings)


# ------------------------------------------------------------------------------------------ geometry
def test_other_grid_refused_or_resampled(tmp_path):
    a = _blocks()
    path = LabelMap.from_array(a, GRID).save(tmp_path / "m.nii.gz")
    # the volume's grid starts two columns further along x (direction x = +1)
    like = Geometry(GRID.size, GRID.spacing, (GRID.origin[0] + 2 * 1.25, *GRID.origin[1:]), GRID.direction)
    with pytest.raises(GeometryMismatchError, match="origin"):
        LabelMap.load(path, like=like)
    lm = LabelMap.load(path, like=like, resample=True)
    assert lm.geometry == like
    expected = np.zeros_like(a)
    expected[:, :, :-2] = a[:, :, 2:]  # nearest neighbour, outside = 0
    np.testing.assert_array_equal(lm.array, expected)
    assert any("resampled" in w for w in lm.warnings)
    assert LabelMap.load(path, like=GRID).warnings == []


def test_chaos_mask_on_another_volume_grid(chaos_label_path):
    other = Geometry.from_image(sitk.ReadImage(str(chaos_label_path(2))))
    with pytest.raises(GeometryMismatchError, match="size"):
        LabelMap.load(chaos_label_path(1), like=other)
    lm = LabelMap.load(chaos_label_path(1), like=other, resample=True)
    assert lm.array.shape == other.shape and lm.geometry == other
    assert set(lm.present_labels()) <= {1, 2, 3, 4}


# -------------------------------------------------------------------------------------- atomic save
def test_failed_save_keeps_the_old_files_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "mask.nii.gz"
    LabelMap.from_array(_blocks(), GRID, {1: "liver"}).save(target)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise RuntimeError("Description: disk full")

    monkeypatch.setattr(labelmap_module.sitk, "WriteImage", fail)
    with pytest.raises(OSError, match="disk full"):
        LabelMap.from_array(np.zeros(GRID.shape, np.uint8), GRID, {1: "other"}).save(target)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    with pytest.raises(OSError):
        LabelMap.empty(GRID).save(tmp_path / "new.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


# ------------------------------------------------------------ data safety (issue 13): what is not a label map


def _write_image(path, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_an_intensity_image_is_not_a_label_map(tmp_path, chaos_image_path):
    with pytest.raises(MaskError, match=r"not a label map: it holds \d+ different values") as exc:
        LabelMap.load(chaos_image_path(1))  # MR intensities: hundreds of whole numbers >= 0
    assert str(chaos_image_path(1)) in str(exc.value) and "\n" not in str(exc.value)
    # an 8-bit image: few enough values, but they change from voxel to voxel like an image's
    noise = np.random.default_rng(0).integers(1, 200, size=(4, 32, 32)).astype(np.uint8)
    with pytest.raises(MaskError, match="change from one voxel to the next"):
        LabelMap.load(_write_image(tmp_path / "noise.nii.gz", noise))


def test_many_labels_in_regions_are_still_a_label_map(tmp_path):
    """An atlas: 100 labels, each a region of one value, loads."""
    atlas = np.zeros((10, 40, 40), np.uint8)
    for k in range(100):
        z, y, x = k // 10, (k % 10) * 4, 0
        atlas[z, y : y + 4, x : x + 40] = k + 1
    loaded = LabelMap.load(_write_image(tmp_path / "atlas.nii.gz", atlas))
    assert len(loaded.present_labels()) == 100


def test_a_label_map_with_nan_is_refused(tmp_path):
    """ITK's NIfTI reader turns NaN into 0 without a word: the file itself is looked at."""
    nibabel = pytest.importorskip("nibabel")
    mask = np.zeros((4, 5, 6), np.float32)
    mask[1, 1:3, 1:3] = 1.0
    mask[2, 2, 2] = np.nan
    mask[3, 0, 0] = np.inf
    nibabel.save(nibabel.Nifti1Image(mask, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(MaskError, match=r"2 voxel\(s\) are NaN or infinite"):
        LabelMap.load(tmp_path / "nan.nii.gz")
    nrrd = tmp_path / "nan.nrrd"  # other formats keep the NaN: refused by the value check
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(nrrd))
    with pytest.raises(MaskError, match="NaN or infinite"):
        LabelMap.load(nrrd)


def test_an_uncompressed_file_named_nii_gz_loads(tmp_path):
    plain = _write_image(tmp_path / "mask.nii", _blocks().astype(np.uint8))
    renamed = tmp_path / "mask_plain.nii.gz"
    renamed.write_bytes(plain.read_bytes())
    np.testing.assert_array_equal(LabelMap.load(renamed).array, _blocks())
