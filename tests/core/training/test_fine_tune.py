"""Fine-tuning on one's own volumes (the wizard's core): pair checks, the plan, before/after Dice, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.core.errors import GeometryMismatchError, JobCancelled, UserError
from sd_fsmis.core.io.datasets import FewShotDataset
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.io.loader import load_volume
from sd_fsmis.core.jobs import CancelToken
from sd_fsmis.core.model.config import ModelConfig
from sd_fsmis.core.model.create import create_preset_model
from sd_fsmis.core.training.fine_tune import (
    FineTuneError,
    FineTunePlan,
    dice_before_after,
    find_interrupted_runs,
    fine_tune,
    read_finished,
    runs_dir,
)
from sd_fsmis.core.training.pairs import TrainingPair, check_pair, save_study_pair
from sd_fsmis.core.training.run_folder import checkpoint_dirs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def pair(paths, case_id: int, label_id: int | None = None) -> TrainingPair:
    image, label = paths
    return TrainingPair(str(image(case_id)), str(label(label_id or case_id)), name=f"patient {case_id}")


# ------------------------------------------------------------------------------------------ checks
def test_a_mismatched_label_map_is_flagged(chaos_image_path, chaos_label_path, tmp_path):
    paths = (chaos_image_path, chaos_label_path)
    good = check_pair(pair(paths, 2))
    assert good.ok and not good.problems
    assert good.shape == (31, 256, 256) and good.spacing == pytest.approx((7.7, 1.25, 1.25))
    assert good.classes == {1: 22, 2: 14, 3: 14, 4: 11}  # slices holding each class
    # the label map of another patient (37 slices) on patient 2's image (31 slices)
    mismatched = check_pair(pair(paths, 2, label_id=1))
    assert not mismatched.ok and len(mismatched.problems) == 1
    assert "not on the image's grid" in mismatched.problems[0] and "size" in mismatched.problems[0]
    assert "\n" not in mismatched.problems[0]
    # a window of 12 slices of >= 200 pixels is more than the spleen has: usable, with a warning
    strict = check_pair(pair(paths, 2), shots=11)
    assert strict.ok and any("class 4" in w and "cannot be trained on" in w for w in strict.warnings)


def test_bad_label_maps_and_unreadable_files_are_problems_not_crashes(chaos_image_path, tmp_path):
    image = load_volume(chaos_image_path(2))

    def write(name: str, array: np.ndarray) -> str:
        itk = image.geometry.image_from_array(array)
        sitk.WriteImage(itk, str(tmp_path / name))
        return str(tmp_path / name)

    shape = image.shape
    fractional = write("fractional.nii.gz", np.full(shape, 0.5, np.float32))
    negative = write("negative.nii.gz", np.full(shape, -1, np.int16))
    empty = write("empty.nii.gz", np.zeros(shape, np.uint8))
    big = np.zeros(shape, np.uint16)
    big[10:14, 50:100, 50:100] = 1000
    large = write("large.nii.gz", big)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    image_path = str(chaos_image_path(2))
    cases = {
        fractional: "fractional",
        negative: "negative",
        empty: "empty",
        str(tmp_path / "broken.nii.gz"): "label map:",
        str(tmp_path / "missing.nii.gz"): "label map:",
    }
    for label, expected in cases.items():
        check = check_pair(TrainingPair(image_path, label))
        assert not check.ok and expected in check.problems[0], check.problems
    unreadable = check_pair(TrainingPair(str(tmp_path / "broken.nii.gz"), empty))
    assert not unreadable.ok and unreadable.problems[0].startswith("image:")
    odd = check_pair(TrainingPair(image_path, large))
    assert odd.ok and any("up to 1000" in w for w in odd.warnings)


def test_save_study_pair_writes_a_usable_pair(chaos_image_path, chaos_label_path, tmp_path):
    volume = load_volume(chaos_image_path(2))
    labels = LabelMap.load(chaos_label_path(2))
    labels.array[labels.array == 3] = 0  # "painted but unsaved": only in memory
    saved = save_study_pair(volume, labels, tmp_path / "studies", "patient 2 / T2")
    assert saved.image.endswith("patient_2_T2_image.nii.gz") and saved.name == "patient 2 / T2"
    check = check_pair(saved)
    assert check.ok and sorted(check.classes) == [1, 2, 4]
    np.testing.assert_array_equal(load_volume(saved.image).array, volume.array)
    other = LabelMap.load(chaos_label_path(1))
    with pytest.raises(GeometryMismatchError):
        save_study_pair(volume, other, tmp_path / "bad", "x")
    assert not (tmp_path / "bad").exists()


# -------------------------------------------------------------------------------------------- plan
def test_plan_validation_json_and_manifest(chaos_image_path, chaos_label_path, tmp_path):
    paths = (chaos_image_path, chaos_label_path)
    plan = FineTunePlan(
        base_model="tiny",
        pairs=[pair(paths, 2), pair(paths, 15), pair(paths, 5)],
        classes=[1],
        class_names={1: "liver"},
        validation=[2],
        out=str(tmp_path / "run"),
    )
    plan.validate()
    assert plan.warnings() == []
    assert FineTunePlan.load(plan.save(tmp_path / "plan.json")) == plan
    config = plan.training_config()
    assert (config.train_ids, config.validation_ids, config.classes) == ([1, 2], [3], [1])
    assert config.validate_before and config.dice_validation and config.test_classes == []
    dataset = FewShotDataset.open(config.data)
    assert dataset.ids == [1, 2, 3] and dataset.class_name(1) == "liver"
    assert dataset.case(3).image.resolve() == chaos_image_path(5).resolve()  # the manifest stores real paths
    no_validation = FineTunePlan(**{**plan.__dict__, "validation": []})
    no_validation.validate()  # allowed, but it says there will be no Dice
    assert "no Dice" in no_validation.warnings()[0]
    assert not no_validation.training_config().dice_validation
    for change, error, message in (
        ({"pairs": []}, FineTuneError, "at least one volume"),
        ({"classes": []}, FineTuneError, "at least one class"),
        ({"validation": [0, 1, 2]}, FineTuneError, "every volume is held out"),
        ({"validation": [5]}, FineTuneError, "do not exist"),
        ({"steps": 0}, UserError, "steps"),
    ):
        with pytest.raises(error, match=message):
            FineTunePlan(**{**plan.__dict__, **change}).validate()
    assert runs_dir().name == "fine-tuning"


# ---------------------------------------------------------------------------------------- training
def test_fine_tune_before_after_and_cancel_then_resume_continues_from_the_checkpoint(
    chaos_image_path, chaos_label_path, tmp_path
):
    create_preset_model("tiny", name="tiny-base", seed=0)  # into the test's own model store
    paths = (chaos_image_path, chaos_label_path)
    runs = tmp_path / "runs"
    plan = FineTunePlan(
        base_model="tiny-base",
        pairs=[pair(paths, 2), pair(paths, 15), pair(paths, 5)],
        classes=[1],
        class_names={1: "liver"},
        validation=[2],  # patient 5 is held out
        out=str(runs / "finished"),
        steps=3,
        accumulation=1,
        checkpoint_every=2,
        validate_every=0,
        device="cpu",
        precision="fp32",
    )
    reports = []
    result = fine_tune(plan, progress=lambda p: reports.append(p.extra))
    assert result.steps == 3 and result.best_step == 3 and set(result.class_validation) == {0, 3}
    before_after = dice_before_after(result)
    assert list(before_after) == ["liver"]
    before, after = before_after["liver"]
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    assert reports[0]["step"] == 0 and "liver" in reports[0]["validation"]["class_dice"]
    finished = read_finished(plan.out)
    assert finished["step"] == 3 and finished["class_dice_before"]["liver"] == pytest.approx(before)
    assert finished["class_dice_after"]["liver"] == pytest.approx(after)
    provenance = ModelConfig.load(result.best_dir).training
    assert provenance.extra["class_validation"]["0"]["liver"] == pytest.approx(before)
    assert provenance.extra["best_dice"] == pytest.approx(after)
    assert ModelConfig.load(result.model_dir).classes == ["liver"]
    assert FineTunePlan.load(runs / "finished" / "fine_tune_plan.json") == plan

    # Pause at step 2 (a checkpoint is written), then cancel while paused: an interrupted run
    token = CancelToken()

    def pause_then_cancel(p):
        if p.extra.get("step") == 2 and "loss" in p.extra:
            token.pause()
        if p.extra.get("paused"):
            token.cancel()

    cut = FineTunePlan(**{**plan.__dict__, "out": str(runs / "cut")})
    with pytest.raises(JobCancelled, match="step 2"):
        fine_tune(cut, progress=pause_then_cancel, cancel=token)
    assert [p.name for p in checkpoint_dirs(runs / "cut")] == ["checkpoint-2"]
    assert read_finished(cut.out) is None
    interrupted = find_interrupted_runs(runs)
    assert [r.out.name for r in interrupted] == ["cut"]  # not the finished run
    assert (interrupted[0].step, interrupted[0].total_steps) == (2, 3) and interrupted[0].plan == cut
    resumed = fine_tune(interrupted[0].plan, resume=True)
    assert resumed.resumed_from == 2 and resumed.steps == 3
    np.testing.assert_allclose(resumed.losses, result.losses, rtol=1e-5, atol=1e-7)
    assert resumed.class_validation[0] == pytest.approx(result.class_validation[0])  # restored
    assert find_interrupted_runs(runs) == []
    assert json.loads((runs / "cut" / "finished.json").read_text())["resumed_from"] == 2


def test_a_self_supervised_plan_takes_volumes_without_label_maps(
    chaos_image_path, chaos_label_path, tmp_path
):
    unlabelled = [TrainingPair(str(chaos_image_path(i)), "", name=f"v{i}") for i in (2, 3)]
    check = check_pair(unlabelled[0])
    assert check.ok and not check.problems and check.classes == {} and check.shape[0] == 31
    labelled = pair((chaos_image_path, chaos_label_path), 5)
    plan = FineTunePlan(
        base_model="m",
        pairs=[*unlabelled, labelled],
        classes=[],
        class_names={},
        validation=[1],
        out=str(tmp_path / "run"),
    )
    with pytest.raises(FineTuneError, match="v2 has no label map"):
        plan.validate()
    plan.self_supervised = True
    plan.validate()
    assert not plan.measures_dice and "no Dice can be measured" in plan.warnings()[0]
    config = plan.training_config()
    assert config.source == "supervoxels" and config.supervoxel_cache.endswith("supervoxels")
    assert not config.dice_validation and config.heldout_episodes > 0 and config.classes is None
    manifest = json.loads((tmp_path / "run" / "data.json").read_text())
    assert "label" not in manifest["cases"][0] and manifest["cases"][2]["label"].endswith("label_5.nii.gz")
    plan.validation = [2]  # the labelled volume held out: its Dice is measured
    assert plan.measures_dice and plan._config().dice_validation and not plan.warnings()
    again = FineTunePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.self_supervised and again.pairs[0].label == ""
