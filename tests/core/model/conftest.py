"""Fixtures of the model tests: tiny random networks built in code, folders laid out like the Hub repos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and a shared 2-core machine makes
    OpenMP threads spin-wait for each other (a 50x slowdown observed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_pipeline():
    """A tiny SD-FSMIS pipeline (64-px images, 8x8 latents) with seeded random weights, on the CPU."""
    from sd_fsmis.core.model.presets import build_random_pipeline

    return build_random_pipeline("tiny", seed=0)


@pytest.fixture
def phantom():
    """``(volume [6, 80, 72] in [0, 1], mask [80, 72] of slice 2)``: a bright ellipse that shrinks."""
    rng = np.random.default_rng(0)
    z = np.arange(6, dtype=np.float32)[:, None, None]
    rows, cols = np.mgrid[0:80, 0:72].astype(np.float32)
    radius = 22.0 - 3.0 * np.abs(z - 2.0)
    inside = ((rows - 40) / 1.2) ** 2 + (cols - 36) ** 2 < radius**2  # [6, 80, 72]
    volume = np.where(inside, 0.75, 0.25) + 0.05 * rng.standard_normal(inside.shape)
    volume = np.clip(volume, 0.0, 1.0).astype(np.float32)
    return volume, inside[2].copy()


@pytest.fixture
def hub_like_sources(tmp_path):
    """Tiny stand-ins for the Hub repos, saved with save_pretrained: ``(sd_dir, dinov2_dir, parts)``.

    ``sd_dir`` has ``unet/`` (a 4-channel SD-like U-Net) and ``vae/``; ``dinov2_dir`` a Dinov2Model with
    its ``preprocessor_config.json``. ``parts`` holds the in-memory modules.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Config, Dinov2Model

    from sd_fsmis.core.model.presets import tiny_spec

    spec = tiny_spec()
    torch.manual_seed(123)
    unet = UNet2DConditionModel(**spec.unet)
    vae = AutoencoderKL(**spec.vae)
    dino = Dinov2Model(Dinov2Config(**spec.dinov2))
    sd_dir, dinov2_dir = tmp_path / "sd15", tmp_path / "dinov2"
    unet.save_pretrained(sd_dir / "unet")
    vae.save_pretrained(sd_dir / "vae")
    (sd_dir / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    dino.save_pretrained(dinov2_dir)
    spec.dino_preprocessing.save(dinov2_dir)
    return sd_dir, dinov2_dir, {"unet": unet, "vae": vae, "image_encoder": dino}


def support_request(volume: np.ndarray, mask: np.ndarray, shots: tuple[int, ...] = (2,), **kwargs):
    from sd_fsmis.core.engines.base import SegmentationRequest, SupportExample

    supports = [SupportExample(volume[z], mask if z == 2 else volume[z] > 0.5, slice_index=z) for z in shots]
    return SegmentationRequest(query=volume, supports=supports, **kwargs)


@pytest.fixture
def make_request():
    """``make_request(volume, mask, shots=(2,), **request_kwargs)`` -> SegmentationRequest."""
    return support_request
