"""NIfTI reading: header checks, truncation, multi-member gzip, NIfTI-2, scaling, colour and 5-D files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.core.errors import StudyReadError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io import nifti
from sd_fsmis.core.io.listing import list_series
from sd_fsmis.core.io.loader import load_volume

nibabel = pytest.importorskip("nibabel")

AFFINE = np.array([[-0.8, 0, 0, 90.0], [0, 0.9, 0, -120.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])


def _data(shape=(6, 5, 4), dtype=np.int16) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def test_headers_of_nibabel_test_files(nibabel_file):
    anatomical = nifti.read_header(nibabel_file("anatomical.nii"))
    assert (anatomical.version, anatomical.endian, anatomical.shape) == (1, ">", (33, 41, 25))
    four_d = nifti.read_header(nibabel_file("example4d.nii.gz"))
    assert four_d.ndim == 4 and four_d.n_volumes == 2
    two = nifti.read_header(nibabel_file("example_nifti2.nii.gz"))
    assert (two.version, two.shape, two.vox_offset) == (2, (32, 20, 12, 2), 608)
    assert nifti._dtype(nifti._NIFTI1_FIELDS, "<").itemsize == nifti.NIFTI1_HEADER_SIZE
    assert nifti._dtype(nifti._NIFTI2_FIELDS, "<").itemsize == nifti.NIFTI2_HEADER_SIZE


def test_multi_member_gzip_is_complete_and_loads(tmp_path):
    """bgzip and parallel compressors write several gzip members: the trailer size is not the total."""
    nibabel.save(nibabel.Nifti1Image(_data(), AFFINE), tmp_path / "one.nii")
    raw = (tmp_path / "one.nii").read_bytes()
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:300]) + gzip.compress(raw[300:]))
    header = nifti.read_header(multi)
    nifti.check_complete(multi, header)
    np.testing.assert_array_equal(load_volume(multi).array, load_volume(tmp_path / "one.nii").array)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.2])
def test_truncated_files_are_refused(tmp_path, keep):
    nibabel.save(
        nibabel.Nifti1Image(np.random.default_rng(0).normal(size=(30, 30, 20)), AFFINE), tmp_path / "a.nii.gz"
    )
    for name in ("a.nii.gz", "a.nii"):
        if name == "a.nii":
            (tmp_path / name).write_bytes(gzip.decompress((tmp_path / "a.nii.gz").read_bytes()))
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(StudyReadError, match=r"truncated|damaged|shorter") as exc:
            list_series(cut)
        assert "\n" not in str(exc.value)


def test_not_nifti(tmp_path):
    (tmp_path / "text.nii").write_bytes(b"hello" * 100)
    with pytest.raises(StudyReadError, match="not a NIfTI file"):
        load_volume(tmp_path / "text.nii")
    nibabel.save(nibabel.Nifti1Image(_data(), AFFINE), tmp_path / "ok.nii")
    raw = bytearray((tmp_path / "ok.nii").read_bytes())
    raw[344:348] = b"xyz\x00"
    (tmp_path / "magic.nii").write_bytes(bytes(raw))
    with pytest.raises(StudyReadError, match="bad magic"):
        load_volume(tmp_path / "magic.nii")
    raw = bytearray((tmp_path / "ok.nii").read_bytes())
    raw[40:42] = np.int16(9).tobytes()  # dim[0] = 9
    (tmp_path / "dims.nii").write_bytes(bytes(raw))
    with pytest.raises(StudyReadError, match="corrupt NIfTI header"):
        load_volume(tmp_path / "dims.nii")


def test_nifti2_big_endian_written_by_nibabel(tmp_path):
    data = _data((7, 6, 5))
    header = nibabel.Nifti2Header(endianness=">")
    image = nibabel.Nifti2Image(data.astype(">i2"), AFFINE, header=header)
    nibabel.save(image, tmp_path / "big2.nii")
    nibabel.save(nibabel.Nifti1Image(data, AFFINE), tmp_path / "same1.nii")
    h = nifti.read_header(tmp_path / "big2.nii")
    assert (h.version, h.endian) == (2, ">")
    volume = load_volume(tmp_path / "big2.nii")
    reference = sitk.ReadImage(str(tmp_path / "same1.nii"))
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0))
    assert volume.geometry.matches(Geometry.from_image(reference))


def test_scaled_nifti_is_in_scaled_units(tmp_path):
    image = nibabel.Nifti1Image(_data(), AFFINE)
    image.header.set_slope_inter(2.0, -10.0)
    nibabel.save(image, tmp_path / "scaled.nii.gz")
    expected = nibabel.load(tmp_path / "scaled.nii.gz").get_fdata()
    volume = load_volume(tmp_path / "scaled.nii.gz")
    np.testing.assert_allclose(volume.array, expected.transpose(2, 1, 0))
    assert volume.array.dtype == np.float32


def test_rgb_nifti_becomes_luminance(tmp_path):
    rgb_dtype = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb = np.zeros((4, 3, 2), dtype=rgb_dtype)
    rgb["R"], rgb["G"], rgb["B"] = 200, 100, 50
    nibabel.save(nibabel.Nifti1Image(rgb, AFFINE), tmp_path / "rgb.nii")
    assert nifti.read_header(tmp_path / "rgb.nii").is_colour
    volume = load_volume(tmp_path / "rgb.nii")
    assert volume.shape == (2, 3, 4)
    np.testing.assert_allclose(volume.array, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-6)
    assert any("colour" in w for w in volume.warnings)


def test_5d_nifti_is_refused(tmp_path):
    nibabel.save(nibabel.Nifti1Image(np.zeros((3, 3, 3, 1, 3), np.float32), AFFINE), tmp_path / "vec.nii.gz")
    with pytest.raises(StudyReadError, match="5-D") as exc:
        list_series(tmp_path / "vec.nii.gz")
    assert "\n" not in str(exc.value)
    # in a folder it is listed with the reason, so that the other files stay usable
    nibabel.save(nibabel.Nifti1Image(_data(), AFFINE), tmp_path / "ok.nii.gz")
    listed = {s.uid: s for s in list_series(tmp_path)}
    assert "5-D" in listed["vec.nii.gz"].error and not listed["ok.nii.gz"].error
    with pytest.raises(StudyReadError, match="5-D"):
        load_volume(tmp_path, "vec.nii.gz")


def test_4d_with_one_volume_is_3d(tmp_path):
    data = _data((5, 4, 3, 1))
    nibabel.save(nibabel.Nifti1Image(data, AFFINE), tmp_path / "t1.nii.gz")
    volume = load_volume(tmp_path / "t1.nii.gz")
    np.testing.assert_array_equal(volume.array, data[..., 0].transpose(2, 1, 0))
    assert not volume.warnings


def test_nifti_header_only_pair_is_refused(tmp_path):
    nibabel.save(nibabel.Nifti1Pair(_data(), AFFINE), tmp_path / "pair.img")
    header_only = tmp_path / "pair.nii"
    header_only.write_bytes(Path(tmp_path / "pair.hdr").read_bytes() + b"\x00" * 1000)
    with pytest.raises(StudyReadError, match="without its data"):
        list_series(header_only)


# ---------------------------------------------------------------------- data safety (issue 13)


def test_nan_and_infinite_voxels_are_counted_and_said(tmp_path):
    data = np.arange(120, dtype=np.float32).reshape(6, 5, 4)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    data[3, 3, 3] = -np.inf
    nibabel.save(nibabel.Nifti1Image(data, AFFINE), tmp_path / "nan.nii.gz")
    header = nifti.read_header(tmp_path / "nan.nii.gz")
    assert nifti.count_non_finite(tmp_path / "nan.nii.gz", header) == {"NaN": 2, "+inf": 1, "-inf": 1}
    volume = load_volume(tmp_path / "nan.nii.gz")
    assert np.isfinite(volume.array).all()
    assert (
        "4 voxel(s) hold no number (2 NaN, 1 +inf, 1 -inf); they are shown and used as 0" in volume.warnings
    )
    integer = tmp_path / "int.nii.gz"
    nibabel.save(nibabel.Nifti1Image(_data(), AFFINE), integer)
    assert nifti.count_non_finite(integer, nifti.read_header(integer)) == {}
    assert load_volume(integer).warnings == []


def test_nan_in_other_float_formats_is_said_too(tmp_path):
    data = np.ones((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / "nan.mha"))
    volume = load_volume(tmp_path / "nan.mha")
    assert volume.array[1, 2, 3] == 0 and any("1 NaN" in w for w in volume.warnings)


def test_an_uncompressed_file_named_nii_gz_is_read_with_a_warning(tmp_path):
    nibabel.save(nibabel.Nifti1Image(_data(), AFFINE), tmp_path / "plain.nii")
    misnamed = tmp_path / "plain.nii.gz"
    misnamed.write_bytes((tmp_path / "plain.nii").read_bytes())
    volume = load_volume(misnamed)
    np.testing.assert_array_equal(volume.array, load_volume(tmp_path / "plain.nii").array)
    assert any("not compressed" in w for w in volume.warnings)
    assert any("not compressed" in w for w in list_series(misnamed)[0].warnings)
    cut = tmp_path / "cut.nii.gz"  # and a truncated one is still refused
    cut.write_bytes(misnamed.read_bytes()[:400])
    with pytest.raises(StudyReadError, match="truncated"):
        load_volume(cut)


@pytest.mark.parametrize(
    ("qform_code", "sform_code"), [(1, 1), (1, 2), (2, 1), (0, 1), (1, 0), (1, 4), (4, 1), (2, 2)]
)
def test_the_transform_in_use_is_the_one_itk_uses(tmp_path, qform_code, sform_code):
    image = nibabel.Nifti1Image(_data(), None)
    sform = np.diag([1.0, 1.0, 1.0, 1.0])
    sform[:3, 3] = [100.0, 0.0, 0.0]
    image.set_qform(np.eye(4), code=qform_code)
    image.set_sform(sform, code=sform_code)
    nibabel.save(image, tmp_path / "qs.nii")
    header = nifti.read_header(tmp_path / "qs.nii")
    itk = Geometry.from_image(sitk.ReadImage(str(tmp_path / "qs.nii")))
    origin, _, direction = nifti.header_geometry(header)
    assert np.allclose(itk.origin, origin) and np.allclose(itk.direction, direction)
    expected = "sform" if itk.origin[0] == pytest.approx(-100.0) else "qform"
    assert nifti.transform_in_use(header) == expected


def test_qform_and_sform_100_mm_apart_are_named_with_the_one_used(tmp_path):
    image = nibabel.Nifti1Image(_data(), None)
    sform = AFFINE.copy()
    sform[0, 3] += 100.0
    image.set_qform(AFFINE, code=1)
    image.set_sform(sform, code=1)
    nibabel.save(image, tmp_path / "apart.nii.gz")
    volume = load_volume(tmp_path / "apart.nii.gz")
    warning = next(w for w in volume.warnings if "disagree" in w)
    assert "100.0 mm" in warning and "qform (code 1)" in warning and "sform (code 1)" in warning
    assert "the sform is used" in warning
    assert warning in list_series(tmp_path / "apart.nii.gz")[0].warnings
    assert volume.geometry.origin[0] == pytest.approx(-(AFFINE[0, 3] + 100.0))  # LPS: x flips
    image.set_sform(AFFINE, code=1)  # the same place: nothing to say
    nibabel.save(image, tmp_path / "agree.nii.gz")
    assert not any("disagree" in w for w in load_volume(tmp_path / "agree.nii.gz").warnings)


def test_a_2d_image_keeps_its_place_and_rotation(tmp_path, capfd):
    """ITK's 2-D reading drops the slice's position along z and its rotation; the header gives both."""
    theta = np.deg2rad(25)
    rotation = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.5, 0.7, 3.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]
    plane = np.arange(40 * 32, dtype=np.int16).reshape(40, 32)  # (x, y)
    nibabel.save(nibabel.Nifti1Image(plane, affine), tmp_path / "slice.nii.gz")
    volume = load_volume(tmp_path / "slice.nii.gz")
    info = list_series(tmp_path / "slice.nii.gz")[0]
    direction = np.asarray(volume.geometry.direction).reshape(3, 3)
    expected = np.diag([-1.0, -1.0, 1.0]) @ rotation  # RAS -> LPS
    np.testing.assert_allclose(direction, expected, atol=1e-6)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)  # orthonormal
    assert volume.geometry.origin == pytest.approx((-10.0, -20.0, 30.0))
    assert volume.geometry.spacing == pytest.approx((0.5, 0.7, 3.0))
    assert info.geometry == volume.geometry
    np.testing.assert_array_equal(volume.array[0], plane.T)
    assert "WARNING" not in capfd.readouterr().err


def test_a_nifti_without_qform_and_sform_has_no_patient_orientation(tmp_path):
    nibabel.save(nibabel.Nifti1Image(_data(), None), tmp_path / "bare.nii.gz")  # both codes 0
    assert not load_volume(tmp_path / "bare.nii.gz").metadata.oriented
    nibabel.save(nibabel.Nifti1Image(_data(), AFFINE), tmp_path / "placed.nii.gz")
    assert load_volume(tmp_path / "placed.nii.gz").metadata.oriented
