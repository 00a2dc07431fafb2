"""``sd-fsmis train`` through its module (register + run): flags, a JSON config, resume, errors."""

from __future__ import annotations

import argparse
import json

import pytest

from sd_fsmis.commands import train as train_command
from sd_fsmis.core.io.datasets import DatasetError
from sd_fsmis.core.model.config import ModelConfig
from sd_fsmis.core.model.create import create_preset_model
from sd_fsmis.core.training.config import TrainingConfigError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sd-fsmis")
    train_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": "m", "data": "d", "out": "o", "steps": 100, "lr_unet": 2e-5}))
    args = parse(
        [
            "--config",
            str(path),
            "--steps",
            "7",
            "--setting",
            "2",
            "--exclusion",
            "all",
            "--test-classes",
            "1,4",
            "--lora",
            "--gradient-checkpointing",
            "--precision",
            "bf16",
            "--no-validation",
            "--resume",
        ]
    )
    config = train_command.build_config(args)
    assert (config.steps, config.lr_unet, config.setting, config.exclusion) == (7, 2e-5, 2, "all")
    assert config.test_classes == [1, 4] and config.lora and config.gradient_checkpointing
    assert config.precision == "bf16" and not config.dice_validation and config.resume
    assert config.accumulation == 4 and config.seed == 42  # the reference's defaults
    # ours by default; the reference's training on request
    assert (config.episode_minimum, config.augmentation, config.validation_volumes) == ("every", "ours", 0)
    flags = ["--model", "m", "--data", "d", "--out", "o", "--setting", "2", "--exclusion", "reference"]
    flags += ["--episode-minimum", "largest", "--augmentation", "reference", "--validation-volumes", "2"]
    reference = train_command.build_config(parse(flags))
    assert (reference.exclusion, reference.episode_minimum, reference.augmentation) == (
        "reference",
        "largest",
        "reference",
    )
    assert reference.validation_volumes == 2
    with pytest.raises(TrainingConfigError, match="not both"):
        train_command.build_config(parse([*flags, "--validation-ids", "3"]))
    with pytest.raises(TrainingConfigError, match="model"):
        train_command.build_config(parse(["--data", "d", "--out", "o"]))


def test_train_command_writes_a_model_and_resumes(chaos_dir, tmp_path, capsys):
    base = create_preset_model("tiny", out=tmp_path / "base", seed=0)
    argv = ["--model", str(base), "--data", str(chaos_dir), "--out", str(tmp_path / "run"), "--device", "cpu"]
    argv += ["--fold", "1", "--accumulation", "1", "--checkpoint-every", "2", "--heldout-episodes", "2"]
    argv += ["--validate-every", "0", "--no-validation", "--validation-volumes", "1"]
    assert train_command.run(parse([*argv, "--steps", "3"])) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "last model:" in out and "held-out loss" in out
    config = ModelConfig.load(tmp_path / "run" / "model")
    assert config.training.steps == 3 and config.training.extra["training_config"]["fold"] == 1
    assert train_command.run(parse([*argv, "--steps", "5", "--resume"])) == 0
    assert ModelConfig.load(tmp_path / "run" / "model").training.steps == 5
    saved = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert saved["steps"] == 5 and saved["resume"] is True


def test_validation_volumes_classes_and_validate_before(chaos_dir, tmp_path, capsys):
    with pytest.raises(TrainingConfigError, match="--validation-ids"):
        train_command.build_config(
            parse(["--model", "m", "--data", "d", "--out", "o", "--validation-ids", "x"])
        )
    base = create_preset_model("tiny", out=tmp_path / "base", seed=0)
    path = tmp_path / "run.json"
    run = {"model": str(base), "data": str(chaos_dir), "out": str(tmp_path / "run"), "train_ids": [2, 15]}
    path.write_text(json.dumps(run))  # few training volumes: a fast run
    argv = ["--config", str(path), "--device", "cpu", "--steps", "2", "--accumulation", "1"]
    argv += ["--heldout-episodes", "2", "--validate-every", "0"]
    argv += ["--classes", "1", "--validation-ids", "5", "--validate-before"]
    config = train_command.build_config(parse(argv))
    assert (config.classes, config.validation_ids, config.validate_before) == ([1], [5], True)
    assert train_command.run(parse(argv)) == 0
    out = capsys.readouterr().out
    assert "validation Dice (study protocol, volumes 5) at step 0:" in out and "(liver " in out
    assert "at step 2:" in out
    saved = ModelConfig.load(tmp_path / "run" / "model")
    assert saved.classes == ["liver"] and set(saved.training.extra["class_validation"]) == {"0", "2"}
    assert json.loads((tmp_path / "run" / "finished.json").read_text())["step"] == 2


def test_the_run_folder_is_checked_before_the_work(chaos_dir, tmp_path):
    """Data safety (issue 13): a run folder that cannot be created is known before any model is loaded."""
    from sd_fsmis.core.io.destinations import OutputError

    argv = ["--model", str(tmp_path / "no-model"), "--data", str(chaos_dir), "--device", "cpu"]
    with pytest.raises(OutputError, match="does not exist"):
        train_command.run(parse([*argv, "--out", str(tmp_path / "missing" / "run"), "--steps", "1"]))
    image = chaos_dir / "images" / "image_1.nii.gz"
    with pytest.raises(OutputError, match="refusing to write over an input"):
        train_command.run(parse([*argv, "--out", str(image), "--steps", "1"]))
    assert not (tmp_path / "missing").exists()


def _unlabelled_folder(chaos_dir, tmp_path, ids):
    """A CHAOS-like folder of links to CHAOS images, without labels/ or supervoxels/ (read in place)."""
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for i in ids:
        (folder / "images" / f"image_{i}.nii.gz").symlink_to(chaos_dir / "images" / f"image_{i}.nii.gz")
    return folder


def test_source_supervoxels_computes_them_on_a_folder_without_supervoxel_files(
    chaos_dir, tmp_path, capsys, isolated_app_home
):
    base = create_preset_model("tiny", out=tmp_path / "base", seed=0)
    data = _unlabelled_folder(chaos_dir, tmp_path, [2, 5])
    argv = ["--model", str(base), "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]
    argv += ["--steps", "2", "--accumulation", "1", "--heldout-episodes", "2", "--validate-every", "0"]
    argv += ["--validation-ids", "5", "--source", "supervoxels"]
    assert train_command.run(parse(argv)) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "held-out loss" in out and "validation Dice" not in out
    assert len(list((isolated_app_home / "cache" / "supervoxels").glob("*.npz"))) == 2
    assert not any(p.name != "images" for p in data.iterdir())  # nothing written into the data folder
    saved = ModelConfig.load(tmp_path / "run" / "model")
    assert saved.training.extra["supervoxels"]["method"] == "felzenszwalb-2d-linked"
    assert saved.training.extra["training_config"]["source"] == "supervoxels"
    with pytest.raises(DatasetError, match="--source supervoxels"):  # labels asked for, none there
        train_command.run(parse([*argv[:-2], "--out", str(tmp_path / "run2")]))


def test_source_mixed_uses_labels_where_present_and_scores_them(chaos_dir, tmp_path, capsys):
    base = create_preset_model("tiny", out=tmp_path / "base", seed=0)
    manifest = tmp_path / "data.json"
    cases = [
        {"id": 1, "image": str(chaos_dir / "images" / "image_2.nii.gz")},
        {
            "id": 2,
            "image": str(chaos_dir / "images" / "image_5.nii.gz"),
            "label": str(chaos_dir / "labels" / "label_5.nii.gz"),
        },
    ]
    manifest.write_text(json.dumps({"classes": {"1": "liver"}, "cases": cases}))
    argv = ["--model", str(base), "--data", str(manifest), "--out", str(tmp_path / "run"), "--device", "cpu"]
    argv += ["--steps", "1", "--accumulation", "1", "--heldout-episodes", "1", "--validate-every", "0"]
    argv += ["--validation-ids", "2", "--classes", "1", "--source", "mixed"]
    assert train_command.run(parse(argv)) == 0
    out = capsys.readouterr().out
    assert "validation Dice (study protocol, volumes 2) at step 1:" in out and "(liver " in out
