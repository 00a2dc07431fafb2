"""The training resource estimate: exact parameter counts from the safetensors headers, and how memory and
time respond to the settings (LoRA, checkpointing, shots, accumulation). No timing is asserted."""

from __future__ import annotations

import pytest
import torch

from sd_fsmis.core.errors import DeviceError, ModelError
from sd_fsmis.core.model.create import create_preset_model
from sd_fsmis.core.model.folder import load_pipeline
from sd_fsmis.core.training import estimate as te
from sd_fsmis.core.training.estimate import estimate_training, lora_parameters, read_model_sizes

SETTINGS = dict(
    steps=1000,
    accumulation=4,
    shots=1,
    lora=False,
    lora_rank=16,
    gradient_checkpointing=False,
    precision="auto",
    device="cpu",
    measure=False,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return create_preset_model(out=tmp_path_factory.mktemp("estimate") / "tiny")


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_loaded_modules(tiny_model):
    sizes = read_model_sizes(tiny_model)
    pipeline = load_pipeline(tiny_model, device="cpu")
    for name in ("unet", "conv_in_ref", "mapper", "vae", "image_encoder"):
        assert sizes.params[name] == _numel(getattr(pipeline, name)), name
    assert sizes.image_size == pipeline.config.preprocessing.image_size


def test_lora_count_matches_the_trainers_adapters(tiny_model):
    from sd_fsmis.core.training.networks import add_lora

    sizes = read_model_sizes(tiny_model)
    unet = load_pipeline(tiny_model, device="cpu").unet
    add_lora(unet, rank=4, alpha=4.0)
    trained = {n: p.numel() for n, p in unet.named_parameters() if p.requires_grad}
    adapters = sum(v for n, v in trained.items() if "lora_" in n)
    assert adapters > 0 and lora_parameters(sizes.unet_shapes, 4) == adapters
    conv_in = sum(v for n, v in trained.items() if n.startswith("conv_in."))
    estimate = estimate_training(tiny_model, **{**SETTINGS, "lora": True, "lora_rank": 4})
    assert (
        estimate.trained_parameters
        == adapters + conv_in + sizes.params["conv_in_ref"] + sizes.params["mapper"]
    )


def test_tiny_model_fits_and_the_estimate_is_consistent(tiny_model):
    estimate = estimate_training(tiny_model, **SETTINGS)
    sizes = read_model_sizes(tiny_model)
    trained = sizes.params["unet"] + sizes.params["conv_in_ref"] + sizes.params["mapper"]
    assert estimate.device == "cpu" and estimate.compute_dtype == "fp32" and not estimate.measured
    assert estimate.fits and estimate.available_memory_bytes and estimate.available_memory_bytes > 2**28
    assert estimate.trained_parameters == trained
    assert estimate.breakdown["optimizer"] == 8 * trained and estimate.breakdown["gradients"] == 4 * trained
    assert sum(estimate.breakdown.values()) == estimate.peak_memory_bytes < 2**30
    assert estimate.total_seconds == pytest.approx(1000 * estimate.seconds_per_step)
    assert any(s.startswith("no GPU: ") and "100x faster" in s for s in estimate.suggestions)
    lines = estimate.summary().splitlines()
    assert len(lines) == 2 and "of memory" in lines[0] and "for 1000 steps" in lines[1]


def test_settings_move_the_estimate_the_right_way(tiny_model):
    base = estimate_training(tiny_model, **SETTINGS)
    lora = estimate_training(tiny_model, **{**SETTINGS, "lora": True})
    checkpointing = estimate_training(tiny_model, **{**SETTINGS, "gradient_checkpointing": True})
    more_shots = estimate_training(tiny_model, **{**SETTINGS, "shots": 5})
    more_accumulation = estimate_training(tiny_model, **{**SETTINGS, "accumulation": 8})
    assert lora.peak_memory_bytes < base.peak_memory_bytes
    assert lora.trained_parameters < base.trained_parameters
    assert checkpointing.breakdown["activations"] < base.breakdown["activations"]
    assert checkpointing.peak_memory_bytes < base.peak_memory_bytes
    assert checkpointing.seconds_per_step > base.seconds_per_step  # the recomputation
    assert more_shots.peak_memory_bytes > base.peak_memory_bytes
    assert more_shots.seconds_per_step > base.seconds_per_step
    assert more_accumulation.peak_memory_bytes == base.peak_memory_bytes
    assert more_accumulation.seconds_per_step == pytest.approx(2 * base.seconds_per_step)


def test_not_fitting_suggests_lora_and_checkpointing(tiny_model, monkeypatch):
    base = estimate_training(tiny_model, **SETTINGS)
    smallest = estimate_training(tiny_model, **{**SETTINGS, "lora": True, "gradient_checkpointing": True})
    # a device with memory between the smallest and the asked-for configuration
    monkeypatch.setattr(te, "available_memory", lambda _dev: int(base.peak_memory_bytes * 0.8))
    estimate = estimate_training(tiny_model, **SETTINGS)
    assert not estimate.fits and "does NOT fit" in estimate.summary()
    assert any(s.startswith("LoRA (--lora) trains ~") for s in estimate.suggestions)
    assert any(
        s.startswith("gradient checkpointing (--gradient-checkpointing) saves") for s in estimate.suggestions
    )
    assert not any(s.startswith("even with LoRA") for s in estimate.suggestions)
    assert smallest.peak_memory_bytes < 0.8 * 0.9 * base.peak_memory_bytes
    # too small even for LoRA with checkpointing: said plainly
    monkeypatch.setattr(te, "available_memory", lambda _dev: smallest.peak_memory_bytes // 2)
    hopeless = estimate_training(tiny_model, **SETTINGS)
    assert any(s.startswith("even with LoRA and gradient checkpointing") for s in hopeless.suggestions)


def test_measured_throughput_and_errors(tiny_model, tmp_path):
    estimate = estimate_training(tiny_model, **{**SETTINGS, "measure": True})
    assert estimate.measured and estimate.throughput_flops > 1e6
    assert te._throughput_cache[("cpu", "fp32")] == estimate.throughput_flops
    with pytest.raises(DeviceError, match="fp16 mixed precision needs a CUDA GPU"):
        estimate_training(tiny_model, **{**SETTINGS, "precision": "fp16"})
    with pytest.raises(ModelError, match="model folder not found"):
        estimate_training(tmp_path / "missing", **SETTINGS)
    with pytest.raises(ModelError, match="must be positive"):
        estimate_training(tiny_model, **{**SETTINGS, "shots": 0})
