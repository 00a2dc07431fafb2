"""``sd-fsmis segment`` end to end on CHAOS volumes: tiny SD-FSMIS model and the classical engine."""

from __future__ import annotations

import json
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
