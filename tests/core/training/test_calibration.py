"""The wizard's calibration: a few real, timed steps of the trainer, nothing left behind."""

from __future__ import annotations

import dataclasses

import pytest

from sd_fsmis.core.model.create import create_preset_model
from sd_fsmis.core.training.calibration import MIN_RELATIVE_SPREAD, Calibration, calibrate_training
from sd_fsmis.core.training.config import TrainingConfig
from sd_fsmis.core.training.estimate import estimate_training

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return create_preset_model("tiny", out=tmp_path_factory.mktemp("base") / "tiny", seed=0)


def test_timed_steps_of_the_real_trainer_and_nothing_written(tiny_model, chaos_dir, tmp_path):
    out = tmp_path / "would-be-run"
    config = TrainingConfig(
        model=str(tiny_model), data=str(chaos_dir), out=str(out), device="cpu", steps=1000, accumulation=2
    )
    reports = []
    calibration = calibrate_training(config, timed_steps=2, progress=reports.append)
    assert calibration.timed_steps == 2 and calibration.seconds_per_step > 0
    assert calibration.fastest_s <= calibration.seconds_per_step <= calibration.slowest_s
    assert calibration.peak_memory_bytes is None  # CPU: no device memory counter
    assert not out.exists()  # the trial ran in a temporary folder, removed
    assert reports[-1].done == 3 and "timing" in reports[-1].message


def test_apply_gives_the_measured_time_with_its_range(tiny_model):
    estimate = estimate_training(
        tiny_model,
        steps=1000,
        accumulation=4,
        shots=1,
        lora=False,
        lora_rank=4,
        gradient_checkpointing=False,
        precision="fp32",
        device="cpu",
        measure=False,
    )
    assert not estimate.calibrated and "predicted, not measured" in estimate.time_text()
    calibration = Calibration(0.5, 0.45, 0.7, 3, None, 4.0)
    calibrated = calibration.apply(estimate)
    assert calibrated.total_seconds == pytest.approx(500)
    low, high = calibrated.total_seconds_range
    spread = max(MIN_RELATIVE_SPREAD, (0.7 - 0.45) / 2 / 0.5)
    assert (low, high) == pytest.approx((500 * (1 - spread), 500 * (1 + spread)))
    assert "measured on the device" in calibrated.time_text() and " to " in calibrated.time_text()
    assert calibrated.peak_memory_bytes == estimate.peak_memory_bytes  # no CUDA peak: memory as predicted
    on_gpu = dataclasses.replace(calibration, peak_memory_bytes=7 * 2**30).apply(
        dataclasses.replace(estimate, available_memory_bytes=6 * 2**30)
    )
    assert on_gpu.peak_memory_bytes == 7 * 2**30 and not on_gpu.fits
