"""``sd-fsmis evaluate`` through the real command line parser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.cli import main
from sd_fsmis.core.io.labelmap import LabelMap


def _write_case(root: Path, case_id: int, rng: np.random.Generator, depth: int = 8, size: int = 40) -> None:
    """A small volume: a body ellipse holding a bright 'organ' (label 1) that tapers along z."""
    zz, yy, xx = np.mgrid[:depth, :size, :size].astype(np.float32)
    shift = rng.uniform(-2, 2, 2)
    body = ((yy - size / 2) / (0.45 * size)) ** 2 + ((xx - size / 2) / (0.42 * size)) ** 2 <= 1
    taper = np.clip(1 - np.abs(zz - depth / 2) / (depth / 2 - 1), 0, 1)
    organ = ((yy - 18 - shift[0]) / (8 * taper + 1e-3)) ** 2 + (
        (xx - 20 - shift[1]) / (7 * taper + 1e-3)
    ) ** 2
    organ = (organ <= 1) & (taper > 0.2)
    image = 200 * body + 300 * organ + rng.normal(0, 5, body.shape)
    for folder, name, array in (
        ("images", "image", image.astype(np.float32)),
        ("labels", "label", organ.astype(np.uint8)),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((1.5, 1.5, 5.0))
        sitk.WriteImage(itk, str(root / folder / f"{name}_{case_id}.nii.gz"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-eval-data")
    rng = np.random.default_rng(1)
    for case_id in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20):
        _write_case(root, case_id, rng)
    return root


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_missing_data_folder(tmp_path, capsys):
    code = main(["evaluate", "--model", "classical", "--data", str(tmp_path / "nowhere"), "--fold", "0"])
    assert code == 2
    assert "no such data folder" in _error_line(capsys)


def test_bad_fold(data_dir, capsys):
    assert main(["evaluate", "--model", "classical", "--data", str(data_dir), "--fold", "7"]) == 2
    assert "fold" in _error_line(capsys)


def test_unknown_label(data_dir, capsys):
    code = main(["evaluate", "--model", "classical", "--data", str(data_dir), "--fold", "0", "--labels", "9"])
    assert code == 2
    assert "9" in _error_line(capsys)


def test_unknown_model_is_one_line(data_dir, tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "no-model"), "--data", str(data_dir), "--fold", "0"])
    assert code == 2
    _error_line(capsys)


def test_ep1_json_out_and_predictions(data_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    preds = tmp_path / "preds"
    code = main(
        [
            "evaluate",
            "--model",
            "classical",
            "--data",
            str(data_dir),
            "--fold",
            "2",
            "--protocol",
            "EP1",
            "--labels",
            "1",
            "--json",
            "--pooled",
            "--out",
            str(out),
            "--save-predictions",
            str(preds),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["protocol"] == "ep1" and printed["folds"] == [2] and printed["model"] == "classical"
    # fold 2 of 10 volumes: sorted positions 4, 5, 6 -> ids 10, 12, 14; support 14
    assert printed["splits"][0]["ids"] == [10, 12, 14] and printed["splits"][0]["support_ids"] == [14]
    assert [q["query_id"] for q in printed["queries"]] == [10, 12]
    assert set(printed["summary"]) >= {"dice", "mean_dice", "hd95_mm", "assd_mm", "pooled_dice"}
    for row in printed["queries"]:
        reference = LabelMap.load(data_dir / "labels" / f"label_{row['query_id']}.nii.gz")
        pred = LabelMap.load(preds / row["prediction"], like=reference.geometry)
        p, r = pred.binary(1), reference.binary(1)
        assert row["dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
        assert row["dice"] > 0.3  # tiny synthetic volumes (measured 0.41-0.49; copying the masks: 0.48-0.53)
    mean = np.mean([row["dice"] for row in printed["queries"]])
    assert printed["summary"]["dice"]["1"] == pytest.approx(mean)


def test_markdown_table(data_dir, capsys):
    code = main(["evaluate", "--model", "classical", "--data", str(data_dir), "--fold", "0", "--labels", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| method | Liver | Mean | s/volume |" in out
    assert "| classical (EP1, 1-shot) |" in out
    assert "HD95" in out and "ASSD" in out


def test_study_protocol_takes_the_supports_from_each_volume(data_dir, capsys):
    args = ["--model", "classical", "--data", str(data_dir), "--protocol", "study", "--ids", "4,8"]
    code = main(["evaluate", *args, "--labels", "1", "--no-distances", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["protocol"] == "study"
    assert [q["query_id"] for q in printed["queries"]] == [4, 8]
    for row in printed["queries"]:
        assert [sid for sid, _ in row["support_slices"]] == [row["query_id"]]  # its own slice
        assert row["support_slices"][0][1] not in row["slices"]  # the support slice is not scored
        assert 0 < row["dice"] <= 1


def test_ids_need_the_study_protocol(data_dir, capsys):
    assert main(["evaluate", "--model", "classical", "--data", str(data_dir), "--ids", "4"]) == 2
    assert "--protocol study" in _error_line(capsys)


def test_clinical_protocol_scores_the_whole_volume(data_dir, capsys):
    """The application's workflow measured over the whole volume, with the default built-in engine."""
    args = ["--model", "propagation", "--data", str(data_dir), "--protocol", "clinical", "--ids", "4,8"]
    code = main(["evaluate", *args, "--shots", "3", "--labels", "1", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["protocol"] == "clinical" and printed["shots"] == 3
    assert printed["engine"]["name"] == "propagation"
    for row in printed["queries"]:
        painted = [z for _, z in row["support_slices"]]
        assert len(painted) == 3 and all(sid == row["query_id"] for sid, _ in row["support_slices"])
        assert row["slices"] == [z for z in range(8) if z not in painted]  # every other slice is scored
        assert 0 < row["dice"] <= 1
    assert main(["evaluate", *args, "--no-distances", "--threads", "1"]) == 0
    assert "| propagation (CLINICAL, 1-shot) |" in capsys.readouterr().out


# ------------------------------------------------------------------ data safety (issue 13)


def _evaluate(data_dir, *extra: str) -> int:
    args = ["evaluate", "--model", "classical", "--data", str(data_dir), "--protocol", "study"]
    return main([*args, "--ids", "4", "--labels", "1", "--no-distances", *extra])


def test_destinations_are_checked_before_the_work(data_dir, tmp_path, capsys, monkeypatch):
    import sd_fsmis.core.evaluation.protocols as protocols

    def must_not_run(*args, **kwargs):
        raise AssertionError("the evaluation ran before its destinations were checked")

    monkeypatch.setattr(protocols, "_evaluate_query", must_not_run)
    assert _evaluate(data_dir, "--out", str(tmp_path / "missing" / "report.json")) == 2
    assert f"the folder {tmp_path / 'missing'} does not exist" in _error_line(capsys)
    assert _evaluate(data_dir, "--save-predictions", str(tmp_path / "a" / "b")) == 2
    assert "--save-predictions" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_save_predictions_never_writes_over_the_data(data_dir, tmp_path, capsys, monkeypatch):
    """A manifest whose label map sits where a prediction would be written: refused before the work."""
    import shutil

    (tmp_path / "fold0").mkdir()
    shutil.copy(data_dir / "images" / "image_4.nii.gz", tmp_path / "image_4.nii.gz")
    label = tmp_path / "fold0" / "pred_4_label1.nii.gz"
    shutil.copy(data_dir / "labels" / "label_4.nii.gz", label)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"cases": [{"id": 4, "image": "image_4.nii.gz", "label": str(label)}]}))
    before = label.read_bytes()
    assert _evaluate(manifest, "--save-predictions", str(tmp_path)) == 2
    line = _error_line(capsys)
    assert "the label map of case 4" in line and "refusing to write over an input" in line
    assert label.read_bytes() == before
    assert _evaluate(manifest, "--out", str(manifest.with_suffix(".json"))) == 2
    assert "the manifest" in _error_line(capsys)


def test_a_failed_save_leaves_no_empty_prediction_folders(data_dir, tmp_path, capsys, monkeypatch):
    import errno
    import os

    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if "preds" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    preds = tmp_path / "preds"
    assert _evaluate(data_dir, "--save-predictions", str(preds)) == 2
    line = _error_line(capsys)
    assert str(preds / "fold0" / "pred_4_label1.nii.gz") in line and "no space left" in line
    assert not preds.exists()


def _dataset_with_a_second_class(data_dir: Path, root: Path, without: int) -> Path:
    """A manifest over ``data_dir``'s volumes whose label maps get class 2 (a small block) except volume
    ``without``, and whose classes list a class 5 (pancreas) that no label map holds."""
    cases = []
    for image in sorted((data_dir / "images").glob("image_*.nii.gz")):
        case_id = int(image.name.split("_")[1].split(".")[0])
        label = sitk.ReadImage(str(data_dir / "labels" / f"label_{case_id}.nii.gz"))
        array = sitk.GetArrayFromImage(label)
        if case_id != without:
            array[2:6, 26:32, 24:30] = 2
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(label)
        sitk.WriteImage(out, str(root / f"label_{case_id}.nii.gz"))
        cases.append({"id": case_id, "image": str(image), "label": f"label_{case_id}.nii.gz"})
    manifest = root / "manifest.json"
    classes = {"1": "liver", "2": "right kidney", "5": "pancreas"}
    manifest.write_text(json.dumps({"classes": classes, "cases": cases}))
    return manifest


def test_classes_a_fold_cannot_score_are_shown_with_a_reason(data_dir, tmp_path, capsys):
    """Item 6: a class absent from a fold's support volume, and a listed class absent from the data, are
    columns with "—" and a warning, not dropped without a word."""
    manifest = _dataset_with_a_second_class(data_dir, tmp_path, without=6)  # 6: fold 0's support
    code = main(
        ["evaluate", "--model", "classical", "--data", str(manifest), "--fold", "0,1", "--no-distances"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = captured.out
    assert "| method | Liver | R.Kidney | Pancreas | Mean | s/volume |" in table
    fold_rows = [line for line in table.splitlines() if line.startswith(("| 0 |", "| 1 |"))][:2]
    assert "—*" in fold_rows[0].split("|")[3] and "—" not in fold_rows[1].split("|")[3]
    assert "\n* — R.Kidney: not in support volume 6\n** — Pancreas: in no label map" in table
    assert "—" in table.splitlines()[2].split("|")[4]  # pancreas: never scored
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert any(
        "class 2 (right kidney) cannot be segmented in fold 0 (not in support volume 6)" in w
        for w in warnings
    )
    assert any("class 5 (pancreas) is listed in manifest.json but is in no label map" in w for w in warnings)


def test_too_few_volumes_for_the_folds_says_how_many_are_needed(data_dir, tmp_path, capsys):
    """Item 7: with 6 volumes, say that the fold protocols need 10 and why, and what to use instead."""
    cases = [
        {"id": i, "image": str(data_dir / "images" / f"image_{i}.nii.gz"),
         "label": str(data_dir / "labels" / f"label_{i}.nii.gz")}
        for i in (2, 4, 6, 8, 10, 12)
    ]  # fmt: skip
    manifest = tmp_path / "six.json"
    manifest.write_text(json.dumps({"cases": cases}))
    assert main(["evaluate", "--model", "classical", "--data", str(manifest), "--fold", "0"]) == 2
    line = _error_line(capsys)
    assert "EP1 needs at least 10 volumes for 5 folds" in line and "the data has 6" in line
    assert "--protocol study or clinical" in line


def _run_folder(root: Path, *, best: bool, selection: bool = True) -> Path:
    """A training run folder holding tiny models: model/ (step 20) and, if ``best``, best/ (step 10)."""
    from sd_fsmis.core.model.config import ModelConfig
    from sd_fsmis.core.model.create import create_preset_model

    run = root / "run-7"
    run.mkdir()
    (run / "training_config.json").write_text(json.dumps({"fold": 0, "validation_ids": None}))
    for folder, step in (("model", 20), ("best", 10)) if best else (("model", 20),):
        path = create_preset_model("tiny", out=run / folder, seed=step)
        config = ModelConfig.load(path)
        config.training.steps = step
        config.training.extra = {"training_config": {"fold": 0, "validation_ids": None}}
        if selection:
            config.training.extra["model_selection"] = {"validation_volumes": [14, 18]}
        config.save(path)
    return run


def test_a_run_folder_is_evaluated_with_its_last_model_unless_told(data_dir, tmp_path, capsys):
    run = _run_folder(tmp_path, best=True)
    args = ["evaluate", "--model", str(run), "--data", str(data_dir), "--protocol", "study", "--ids", "2"]
    args.append("--no-distances")
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["model"] == "run-7 (last model, step 20)"
    assert f"evaluating the last model of the run: {run / 'model'}" in captured.err
    assert main([*args, "--run-model", "best"]) == 0
    captured = capsys.readouterr()
    assert "| run-7 (best model, step 10) (STUDY, 1-shot) |" in captured.out
    assert "warning" not in captured.err  # this best was chosen on held-out training volumes
    # a model folder is not a run folder
    assert (
        main(["evaluate", "--model", str(run / "model"), "--data", str(data_dir), "--run-model", "best"]) == 2
    )
    assert "--run-model goes with a training run folder" in _error_line(capsys)


def test_a_run_without_best_says_so_and_an_old_best_is_flagged(data_dir, tmp_path, capsys):
    args = [
        "--data",
        str(data_dir),
        "--protocol",
        "study",
        "--ids",
        "2",
        "--no-distances",
        "--run-model",
        "best",
    ]
    (tmp_path / "a").mkdir()
    run = _run_folder(tmp_path / "a", best=False)
    assert main(["evaluate", "--model", str(run), *args]) == 2
    assert "has no best/ model: it was trained without validation volumes" in _error_line(capsys)
    (tmp_path / "b").mkdir()
    old = _run_folder(tmp_path / "b", best=True, selection=False)  # "best" chosen on the test fold
    assert main(["evaluate", "--model", str(old), *args]) == 0
    err = capsys.readouterr().err
    assert "warning: the best model of run-7 was chosen by its Dice on the test fold 0" in err
