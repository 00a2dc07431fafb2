"""``sd-fsmis segment`` end to end on CHAOS volumes: tiny SD-FSMIS model and the classical engine."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sd_fsmis.core.model.create import create_preset_model

    folder = tmp_path_factory.mktemp("models") / "tiny"
    create_preset_model("tiny", out=folder, seed=0)
    return folder


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["segment", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tiny_model_writes_a_mask_with_the_query_geometry(capsys, tmp_path, tiny_model, chaos_dir):
    query = chaos_dir / "images/image_5.nii.gz"
    out = tmp_path / "spleen.nii.gz"
    code, stdout, err = _run(
        capsys,
        "--model", tiny_model, "--query", query,
        "--support", chaos_dir / "images/image_8.nii.gz",
        "--support-mask", chaos_dir / "labels/label_8.nii.gz",
        "--label", 4, "--support-slices", "10,13", "--device", "cpu", "--json", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["shots"] == 2 and summary["support_slices"] == [10, 13]
    written, reference = sitk.ReadImage(str(out)), sitk.ReadImage(str(query))
    assert written.GetSize() == reference.GetSize()
    assert np.allclose(written.GetSpacing(), reference.GetSpacing())
    assert np.allclose(written.GetOrigin(), reference.GetOrigin())
    assert np.allclose(written.GetDirection(), reference.GetDirection())
    values = set(np.unique(sitk.GetArrayViewFromImage(written)).tolist())
    assert values <= {0, 4} and summary["voxels"] == int((sitk.GetArrayViewFromImage(written) == 4).sum())
    assert (tmp_path / "spleen.labels.json").is_file()


def test_classical_within_the_query_and_a_slice_range(capsys, tmp_path, chaos_dir):
    image, labels = chaos_dir / "images/image_2.nii.gz", chaos_dir / "labels/label_2.nii.gz"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(labels))) == 4
    z = [int(i) for i in np.flatnonzero(truth.any(axis=(1, 2)))]
    middle = z[len(z) // 2]
    out = tmp_path / "spleen.nii.gz"
    code, _, err = _run(
        capsys,
        "--model", "classical", "--query", image, "--support-mask", labels, "--label", 4,
        "--slices", f"{middle - 2}:{middle + 2}", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) == 4
    touched = [int(i) for i in np.flatnonzero(pred.any(axis=(1, 2)))]
    assert touched and set(touched) <= set(range(middle - 2, middle + 3))
    window = slice(middle - 2, middle + 3)
    inter = (pred[window] & truth[window]).sum()
    assert 2 * inter / (pred[window].sum() + truth[window].sum()) > 0.8


def _assert_user_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sd-fsmis: error:"), err
    assert fragment in lines[0], lines[0]


def test_support_slice_without_the_label(capsys, tmp_path, tiny_model, chaos_dir):
    code, _, err = _run(
        capsys, "--model", tiny_model, "--query", chaos_dir / "images/image_5.nii.gz",
        "--support-mask", chaos_dir / "labels/label_5.nii.gz", "--label", 1, "--support-slices", 0,
        "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "does not contain")
    assert not (tmp_path / "x.nii.gz").exists()


def test_label_absent_from_the_support_mask(capsys, tmp_path, chaos_dir):
    code, _, err = _run(
        capsys, "--model", "classical", "--query", chaos_dir / "images/image_5.nii.gz",
        "--support-mask", chaos_dir / "labels/label_5.nii.gz", "--label", 9, "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "does not contain label 9")


def test_support_mask_on_another_grid(capsys, tmp_path, tiny_model, chaos_dir):
    code, _, err = _run(
        capsys, "--model", tiny_model, "--query", chaos_dir / "images/image_5.nii.gz",
        "--support-mask", chaos_dir / "labels/label_8.nii.gz", "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "does not match the support image's geometry")


def test_incomplete_model_folder(capsys, tmp_path, tiny_model, chaos_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "unet")
    code, _, err = _run(
        capsys, "--model", broken, "--query", chaos_dir / "images/image_5.nii.gz",
        "--support-mask", chaos_dir / "labels/label_5.nii.gz", "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "unet")


def test_model_of_another_format_version(capsys, tmp_path, tiny_model, chaos_dir):
    other = tmp_path / "future"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    config["format_version"] = 99
    (other / "config.json").write_text(json.dumps(config))
    code, _, err = _run(
        capsys, "--model", other, "--query", chaos_dir / "images/image_5.nii.gz",
        "--support-mask", chaos_dir / "labels/label_5.nii.gz", "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "version")


def test_cuda_asked_for_and_absent(capsys, tmp_path, tiny_model, chaos_dir):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = _run(
        capsys, "--model", tiny_model, "--device", "cuda", "--query", chaos_dir / "images/image_5.nii.gz",
        "--support-mask", chaos_dir / "labels/label_5.nii.gz", "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "cuda")


def test_output_must_be_nifti_and_query_must_exist(capsys, tmp_path, chaos_dir):
    code, _, err = _run(
        capsys, "--query", chaos_dir / "images/image_5.nii.gz",
        "--support-mask", chaos_dir / "labels/label_5.nii.gz", "--out", tmp_path / "x.png",
    )  # fmt: skip
    _assert_user_error(code, err, "NIfTI")
    code, _, err = _run(
        capsys, "--query", tmp_path / "missing.nii.gz",
        "--support-mask", chaos_dir / "labels/label_5.nii.gz", "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "no such file")


# ------------------------------------------------------------------ data safety (issue 13): small inputs


def _small_study(folder, name: str = "ct") -> tuple:
    """An 8 x 32 x 32 CT-like NIfTI with a bright box, and its mask (label 1 on the box)."""
    folder.mkdir(parents=True, exist_ok=True)
    values = np.full((8, 32, 32), -100, np.int16)
    values[1:7, 8:24, 10:22] = 60
    mask = (values == 60).astype(np.uint8)
    image_path, mask_path = folder / f"{name}.nii.gz", folder / f"{name}_mask.nii.gz"
    for array, path in ((values, image_path), (mask, mask_path)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8, 2.5))
        sitk.WriteImage(image, str(path))
    return image_path, mask_path


def _segment_small(capsys, image, mask, out, *extra):
    return _run(
        capsys, "--model", "classical", "--query", image, "--support-mask", mask, "--label", 1,
        "--support-slices", 4, "--out", out, *extra,
    )  # fmt: skip


@pytest.mark.parametrize("how", ["same path", "symbolic link", "hard link", "dotted path"])
def test_out_never_overwrites_the_query(capsys, tmp_path, how):
    image, mask = _small_study(tmp_path / "study")
    before = image.read_bytes()
    out = {
        "same path": image,
        "symbolic link": tmp_path / "link.nii.gz",
        "hard link": tmp_path / "hard.nii.gz",
        "dotted path": tmp_path / "study" / ".." / "study" / image.name,
    }[how]
    if how == "symbolic link":
        out.symlink_to(image)
    elif how == "hard link":
        os.link(image, out)
    code, stdout, err = _segment_small(capsys, image, mask, out)
    _assert_user_error(code, err, "refusing to write over an input")
    assert "the query study" in err and not stdout
    assert image.read_bytes() == before


def test_out_never_overwrites_the_support_mask_or_its_label_table(capsys, tmp_path):
    image, mask = _small_study(tmp_path)
    code, _, err = _segment_small(capsys, image, mask, mask)
    _assert_user_error(code, err, "the support mask")
    (tmp_path / "ct_mask.labels.json").write_text('{"format": "sd-fsmis label map", "labels": []}')
    code, _, err = _segment_small(capsys, image, mask, tmp_path / "ct_mask.nii")  # same sidecar
    _assert_user_error(code, err, "label table of the support mask")


def test_destination_is_checked_before_the_work(capsys, tmp_path, monkeypatch):
    image, mask = _small_study(tmp_path)
    import sd_fsmis.core.engines.segmentation as segmentation

    def must_not_run(*args, **kwargs):
        raise AssertionError("the segmentation ran before the destination was checked")

    monkeypatch.setattr(segmentation, "segment_volume", must_not_run)
    code, _, err = _segment_small(capsys, image, mask, tmp_path / "missing" / "out.nii.gz")
    _assert_user_error(code, err, f"the folder {tmp_path / 'missing'} does not exist")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m, **kw: False if str(p) == str(tmp_path) else real_access(p, m, **kw)
    )
    code, _, err = _segment_small(capsys, image, mask, tmp_path / "out.nii.gz")
    _assert_user_error(code, err, "not writable")
    assert not (tmp_path / "missing").exists()


def test_a_full_disk_while_writing_is_one_line_with_the_users_path(capsys, tmp_path, monkeypatch):
    image, mask = _small_study(tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).startswith(str(out_dir)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    out = out_dir / "mask.nii.gz"
    code, _, err = _segment_small(capsys, image, mask, out)
    _assert_user_error(code, err, f"{out}: cannot be written (no space left on the disk)")
    assert ".tmp" not in err
    assert list(out_dir.iterdir()) == []


def test_the_image_is_refused_as_its_own_mask(capsys, tmp_path):
    image, _ = _small_study(tmp_path)
    code, _, err = _segment_small(capsys, image, image, tmp_path / "out.nii.gz")
    _assert_user_error(code, err, "is the image itself")
    # another file holding the image's own values (a few whole numbers >= 0: they pass as labels)
    values = np.zeros((8, 32, 32), np.int16)
    values[:, 8:24, 10:22] = 60
    values[:, 12:20, 12:20] = 100
    values[:, 14:16, 14:16] = 200
    support = tmp_path / "support.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(support))
    copy = tmp_path / "support_copy.nii.gz"
    shutil.copy(support, copy)
    code, _, err = _run(
        capsys, "--model", "classical", "--query", image, "--support", support, "--support-mask", copy,
        "--label", 60, "--out", tmp_path / "out.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "holds the image's own voxel values")


def test_an_intensity_image_is_refused_as_support_mask(capsys, tmp_path, chaos_dir):
    image = chaos_dir / "images/image_2.nii.gz"  # MR intensities: whole numbers 0..~1000
    code, _, err = _run(
        capsys, "--model", "classical", "--query", chaos_dir / "images/image_5.nii.gz",
        "--support", image, "--support-mask", image, "--label", 1, "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "is the image itself")
    copy = tmp_path / "not_a_mask.nii.gz"
    shutil.copy(image, copy)
    code, _, err = _run(
        capsys, "--model", "classical", "--query", image, "--support-mask", copy, "--label", 1,
        "--out", tmp_path / "x.nii.gz",
    )  # fmt: skip
    _assert_user_error(code, err, "not a label map")
    assert str(copy) in err


def test_a_2d_nifti_is_segmented_as_one_slice_with_its_direction_and_itk_stays_quiet(capfd, tmp_path):
    """ITK's own messages ('WARNING: In /tmp/SimpleITK-build/...') go to the log file, not the terminal."""
    nibabel = pytest.importorskip("nibabel")
    theta = np.deg2rad(25)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    ) @ np.diag([0.5, 0.7, 3.0])
    plane = np.zeros((40, 32), np.int16)
    plane[10:30, 8:24] = 100
    nibabel.save(nibabel.Nifti1Image(plane, affine), tmp_path / "slice.nii.gz")
    nibabel.save(nibabel.Nifti1Image((plane > 0).astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    out = tmp_path / "out.nii.gz"
    query, mask = str(tmp_path / "slice.nii.gz"), str(tmp_path / "mask.nii.gz")
    code = main(
        ["segment", "--model", "classical", "--query", query, "--support-mask", mask, "--out", str(out)]
    )
    err = capfd.readouterr().err
    assert code == 0, err
    assert "WARNING" not in err and "SimpleITK-build" not in err
    written = sitk.ReadImage(str(out))
    reference = sitk.ReadImage(str(tmp_path / "slice.nii.gz"))  # ITK's own 2-D reading, for the rotation
    direction = np.asarray(written.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert written.GetSize() == (40, 32, 1) and reference.GetDimension() == 2
    assert abs(direction[1, 1]) < 0.99  # the 25 degree rotation kept


def test_itk_messages_go_to_the_log_not_the_terminal(capfd, caplog):
    import logging

    from sd_fsmis.core.quiet import route_itk_messages_to_log

    assert route_itk_messages_to_log()
    assert sitk.ProcessObject.GetGlobalWarningDisplay()
    with caplog.at_level(logging.DEBUG, logger="sd_fsmis.itk"):
        sitk.ImageSeriesReader.GetGDCMSeriesFileNames("/nonexistent-folder-for-itk")  # ITK warns
    assert "WARNING" not in capfd.readouterr().err
    assert any("ITK" in r.getMessage() for r in caplog.records)
