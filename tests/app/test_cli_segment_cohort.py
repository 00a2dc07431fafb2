"""``sd-fsmis segment --queries ... --out-dir ...`` on CHAOS volumes (read in place, through links or a
manifest): a mask per study, a bad study recorded and skipped, exit 3, resume, several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.cli import main

CASES = (1, 2, 3)


def _run(capsys, *args: object) -> tuple[int, str, str]:
    code = main(["segment", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _manifest(tmp_path: Path, chaos_dir: Path) -> Path:
    """3 CHAOS studies, each painted on its middle liver slice (its own support), and a corrupt file."""
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really a NIfTI file" * 40)
    studies = [
        {
            "id": f"patient_{i}",
            "image": str(chaos_dir / f"images/image_{i}.nii.gz"),
            "support_mask": str(chaos_dir / f"labels/label_{i}.nii.gz"),
        }
        for i in CASES
    ]
    studies.insert(1, {"id": "damaged", "image": "broken.nii.gz", "support_mask": studies[0]["support_mask"]})
    path = tmp_path / "cohort.json"
    path.write_text(json.dumps({"studies": studies}))
    return path


def _records(out: Path) -> list[dict]:
    return [
        json.loads(line) for f in sorted(out.glob("run-record*.jsonl")) for line in f.read_text().splitlines()
    ]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_a_cohort_with_a_corrupt_study_gives_three_masks_one_error_and_exit_3(capsys, tmp_path, chaos_dir):
    manifest, out = _manifest(tmp_path, chaos_dir), tmp_path / "masks"
    code, stdout, err = _run(capsys, "--queries", manifest, "--out-dir", out, "--model", "propagation")
    assert code == 3, err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"patient_{i}.nii.gz" for i in CASES]
    records = _records(out)
    assert sorted(r["study"] for r in records) == ["damaged", "patient_1", "patient_2", "patient_3"]
    (bad,) = [r for r in records if r["status"] == "failed"]
    assert bad["study"] == "damaged" and "broken.nii.gz" in bad["error"] and bad["voxels"] is None
    assert "study damaged failed" in err and "| damaged | failed |" in stdout
    rows = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ")][1:]
    assert rows == ["patient_1", "damaged", "patient_2", "patient_3"]  # the manifest's order
    assert "3 segmented, 1 failed" in stdout
    for i in CASES:
        (record,) = [r for r in records if r["study"] == f"patient_{i}"]
        assert set(record) >= {"study", "engine", "device", "seconds", "voxels", "ml", "warnings", "error"}
        assert record["engine"] == "propagation" and record["error"] is None and record["seconds"] > 0
        written = sitk.ReadImage(str(out / f"patient_{i}.nii.gz"))
        image = sitk.ReadImage(str(chaos_dir / f"images/image_{i}.nii.gz"))
        assert written.GetSize() == image.GetSize()
        assert np.allclose(written.GetOrigin(), image.GetOrigin())
        assert np.allclose(written.GetDirection(), image.GetDirection())
        mask = sitk.GetArrayFromImage(written) == 1
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(chaos_dir / f"labels/label_{i}.nii.gz"))) == 1
        assert record["voxels"] == int(mask.sum())
        assert record["ml"] == pytest.approx(mask.sum() * np.prod(image.GetSpacing()) / 1000, rel=1e-3)
        assert _dice(mask, truth) > 0.6  # the liver, from one painted slice

    # a rerun: nothing new is segmented; the damaged study is tried again and fails again
    times = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    code, stdout, _ = _run(capsys, "--queries", manifest, "--out-dir", out, "--model", "propagation")
    assert code == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == times
    again = _records(out)[len(records) :]
    assert [r["study"] for r in again] == ["damaged"]
    assert "0 segmented, 1 failed, 3 done before (skipped)" in stdout

    # other settings: every study is segmented again
    code, stdout, _ = _run(
        capsys, "--queries", manifest, "--out-dir", out, "--model", "propagation", "--nearest-support"
    )
    assert code == 3 and "3 segmented, 1 failed, 0 done before" in stdout


def test_a_folder_with_one_support_for_all_in_parallel_processes(capsys, tmp_path, chaos_dir):
    folder = tmp_path / "studies"
    folder.mkdir()
    for i in (2, 5):  # read in place through links
        (folder / f"image_{i}.nii.gz").symlink_to(chaos_dir / f"images/image_{i}.nii.gz")
    out = folder / "masks"  # inside the studies' folder: never taken for a study
    args = [
        "--queries", folder, "--out-dir", out, "--model", "propagation", "--label", 1,
        "--support", folder / "image_5.nii.gz", "--support-mask", chaos_dir / "labels/label_5.nii.gz",
        "--workers", 2, "--json",
    ]  # fmt: skip
    code, stdout, err = _run(capsys, *args)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["segmented"] == 2 and summary["failed"] == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["image_2.nii.gz", "image_5.nii.gz"]
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(chaos_dir / "labels/label_5.nii.gz"))) == 1
    own = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "image_5.nii.gz"))) == 1
    assert _dice(own, truth) > 0.6  # the support study itself: propagated from its painted slice
    code, stdout, _ = _run(capsys, *args)
    assert code == 0 and json.loads(stdout)["skipped"] == 2


def test_two_processes_segment_every_study_exactly_once(tmp_path, chaos_dir):
    manifest, out = _manifest(tmp_path, chaos_dir), tmp_path / "masks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "sd_fsmis", "segment", "--queries", str(manifest), "--out-dir", str(out),
        "--model", "propagation", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert sorted(p.name for p in out.glob("run-record*.jsonl")) == [
        "run-record.0-of-2.jsonl",
        "run-record.1-of-2.jsonl",
    ], done.stderr[-2000:]
    records = _records(out)
    assert sorted(r["study"] for r in records) == sorted(["damaged"] + [f"patient_{i}" for i in CASES])
    assert {r["process"] for r in records} == {0, 1}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"patient_{i}.nii.gz" for i in CASES]
    assert "3 segmented, 1 failed" in done.stdout  # the main process's summary covers both


def test_cohort_mistakes_are_one_line_and_exit_2(capsys, tmp_path, chaos_dir):
    manifest = _manifest(tmp_path, chaos_dir)
    code, _, err = _run(capsys, "--queries", manifest, "--model", "propagation")
    assert code == 2 and "--out-dir" in err
    code, _, err = _run(
        capsys, "--queries", manifest, "--out-dir", tmp_path / "o", "--out", tmp_path / "x.nii.gz"
    )
    assert code == 2 and "--out is for one study" in err
    code, _, err = _run(capsys, "--queries", manifest, "--out-dir", manifest, "--model", "propagation")
    assert code == 2 and "is the manifest (--queries): refusing to write over an input" in err
    code, _, err = _run(capsys, "--queries", tmp_path / "nothing", "--out-dir", tmp_path / "o")
    assert code == 2 and "no such folder or manifest" in err
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "image_1.nii.gz").symlink_to(chaos_dir / "images/image_1.nii.gz")
    code, _, err = _run(capsys, "--queries", folder, "--out-dir", tmp_path / "o", "--model", "propagation")
    assert code == 2 and "no support" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before the work: no empty folder left
    code, _, err = _run(
        capsys, "--queries", folder, "--out-dir", folder, "--support", folder / "image_1.nii.gz",
        "--support-mask", chaos_dir / "labels/label_1.nii.gz",
    )  # fmt: skip
    assert code == 2 and "is the folder of the studies" in err
    assert sorted(p.name for p in folder.iterdir()) == ["image_1.nii.gz"]  # nothing written


def test_a_model_reads_the_next_studies_ahead_and_encodes_the_support_once(capsys, tmp_path, chaos_dir):
    from sd_fsmis.core.model.create import create_preset_model

    model = create_preset_model("tiny", out=tmp_path / "tiny", seed=0)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("id,image\n" + "".join(f"p{i},{chaos_dir}/images/image_{i}.nii.gz\n" for i in CASES))
    code, stdout, err = _run(
        capsys, "--queries", manifest, "--out-dir", tmp_path / "out", "--model", model, "--device", "cpu",
        "--support", chaos_dir / "images/image_8.nii.gz",
        "--support-mask", chaos_dir / "labels/label_8.nii.gz", "--support-slices", "10,13",
        "--label", 4, "--workers", 1, "--json",
    )  # fmt: skip
    assert code == 0, err
    records = json.loads(stdout)["records"]
    assert [r["study"] for r in records] == ["p1", "p2", "p3"]
    assert [r["support_sets_encoded"] for r in records] == [1, 0, 0]  # the bank and token: once
    assert all(r["shots"] == 2 and r["device"].startswith("CPU") for r in records)
    for i in CASES:
        written = sitk.ReadImage(str(tmp_path / "out" / f"p{i}.nii.gz"))
        assert written.GetSize() == sitk.ReadImage(str(chaos_dir / f"images/image_{i}.nii.gz")).GetSize()
