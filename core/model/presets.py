"""Architectures built in code: the tiny preset (random weights, seconds on a CPU: tests, demos, smoke
checks) and the real SD 1.5 / DINOv2-base configurations (random weights, for benchmarks without a download).

A preset yields the same classes as a real model (``UNet2DConditionModel``, ``AutoencoderKL``,
``Dinov2Model``, the VTCT mapper, ``conv_in_ref``), only smaller: the tiny VAE still downsamples 8x, the
tiny DINOv2 keeps patch 14 with the crop scaled to the smaller image, and the U-Net's cross-attention width
matches the mapper's output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import Dinov2Config, Dinov2Model

from sd_fsmis.core.model.config import (
    ArchitectureConfig,
    ModelConfig,
    PreprocessingConfig,
    TrainingProvenance,
)
from sd_fsmis.core.model.input_convolutions import expand_unet_input
from sd_fsmis.core.model.pipeline import SDFSMISPipeline
from sd_fsmis.core.model.vtct import DinoPreprocessing, VTCTMapper

PRESETS = ("tiny",)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Configs of the four networks and the preprocessing they go with."""

    unet: dict
    vae: dict
    dinov2: dict
    dino_preprocessing: DinoPreprocessing
    image_size: int
    mapper_hidden_dim: int


def tiny_spec() -> ArchitectureSpec:
    """64-px images, 8x8 latents; a 2-level U-Net with cross-attention in down, mid and up blocks."""
    return ArchitectureSpec(
        unet=dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.18215,
        ),
        dinov2=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            patch_size=14,
            image_size=112,
        ),
        # the 64-px image is resized to 128 and centre-cropped to 112 (the ratio 256 -> 224 of DINOv2-base):
        # an 8 x 8 patch grid
        dino_preprocessing=DinoPreprocessing(shortest_edge=128, crop_height=112, crop_width=112),
        image_size=64,
        mapper_hidden_dim=64,
    )


def sd15_spec() -> ArchitectureSpec:
    """Stable Diffusion 1.5 (U-Net, about 860M parameters; VAE) and DINOv2-base, as on the Hub."""
    return ArchitectureSpec(
        unet=dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        ),
        dinov2=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            mlp_ratio=4,
            patch_size=14,
            image_size=518,
        ),
        dino_preprocessing=DinoPreprocessing(),
        image_size=256,
        mapper_hidden_dim=1536,
    )


def spec_for(arch: str) -> ArchitectureSpec:
    if arch == "tiny":
        return tiny_spec()
    if arch in ("real", "sd15"):
        return sd15_spec()
    raise ValueError(f"unknown architecture preset '{arch}' (choose tiny or real)")


def build_random_pipeline(
    arch: str = "tiny", seed: int = 0, device: torch.device | str | None = None
) -> SDFSMISPipeline:
    """A pipeline of the ``arch`` architecture with seeded random weights (the U-Net built 4-channel, then
    expanded to 8 exactly as for a real Stable Diffusion U-Net).

    ``device``: where the weights are created and initialised (default the CPU). On a GPU the real size
    is built in about a second instead of tens of seconds (the CPU's random initialisation runs on one
    core); the weights then come from that device's generator, so they differ from the CPU-built ones
    (still the same for the same seed and device)."""
    spec = spec_for(arch)
    where = torch.device(device) if device is not None else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), where:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec.unet)
        conv_in_ref = expand_unet_input(unet)
        vae = AutoencoderKL(**spec.vae)
        image_encoder = Dinov2Model(Dinov2Config(**spec.dinov2))
        mapper = VTCTMapper(
            in_dim=spec.dinov2["hidden_size"],
            hidden_dim=spec.mapper_hidden_dim,
            out_dim=spec.unet["cross_attention_dim"],
        )
    config = ModelConfig(
        base=f"preset {arch}"
        if arch == "tiny"
        else "stable-diffusion-v1-5 + dinov2-base architecture (random)",
        architecture=ArchitectureConfig(
            vae_scaling_factor=float(spec.vae["scaling_factor"]),
            cross_attention_dim=spec.unet["cross_attention_dim"],
            image_encoder_dim=spec.dinov2["hidden_size"],
            mapper_hidden_dim=spec.mapper_hidden_dim,
        ),
        preprocessing=PreprocessingConfig(image_size=spec.image_size),
        training=TrainingProvenance(kind="preset", sources={"preset": arch}, seed=seed),
    )
    pipeline = SDFSMISPipeline(unet, conv_in_ref, vae, image_encoder, mapper, spec.dino_preprocessing, config)
    return pipeline.eval()
