"""``sd-fsmis supervoxels`` end to end on a CHAOS volume: the label map on the image's grid, the cache."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from sd_fsmis.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["supervoxels", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_writes_supervoxels_on_the_image_grid_and_uses_the_cache(
    capsys, tmp_path, chaos_dir, isolated_app_home
):
    image = chaos_dir / "images" / "image_2.nii.gz"
    out = tmp_path / "sv.nii.gz"
    code, stdout, err = _run(capsys, image, "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert not summary["from_cache"] and 100 <= summary["supervoxels"] <= 3000
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(image))
    assert written.GetSize() == source.GetSize() and np.allclose(written.GetSpacing(), source.GetSpacing())
    assert np.allclose(written.GetOrigin(), source.GetOrigin())
    assert np.allclose(written.GetDirection(), source.GetDirection())
    labels = sitk.GetArrayFromImage(written)
    assert len(np.unique(labels)) == summary["supervoxels"] + 1
    sidecar = json.loads((tmp_path / "sv.supervoxels.json").read_text())
    assert sidecar["parameters"]["sigma"] == 1.0 and sidecar["supervoxels"] == summary["supervoxels"]
    # the cache is the application's, never the data's folder
    cached = list((isolated_app_home / "cache" / "supervoxels").glob("*.npz"))
    assert len(cached) == 1 and summary["cache"] == str(cached[0])
    code, stdout, _ = _run(capsys, image, "--out", tmp_path / "again.nii.gz")
    assert code == 0 and "from the cache" in stdout
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "again.nii.gz"))), labels)


def test_bad_destinations_are_one_line_and_exit_2(capsys, tmp_path, chaos_dir):
    image = chaos_dir / "images" / "image_2.nii.gz"
    code, _, err = _run(capsys, image, "--out", image)
    assert code == 2 and "input" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, image, "--out", tmp_path / "sv.png")
    assert code == 2 and "NIfTI" in err
    code, _, err = _run(capsys, tmp_path / "missing.nii.gz", "--out", tmp_path / "sv.nii.gz")
    assert code == 2 and not (tmp_path / "sv.nii.gz").exists()
