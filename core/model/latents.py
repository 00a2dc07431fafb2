"""The VAE side of the method: images and masks to latents and back (Stable Diffusion's ``AutoencoderKL``).

Latents are ``scaling_factor * z`` (0.18215 for SD 1.x). Inference uses the posterior mean, training a
posterior sample. The predicted mask latent is decoded from ``latent / scaling_factor``, clamped to [-1, 1]
and averaged over the 3 channels to a soft mask in [0, 1].
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

SD_SCALING_FACTOR = 0.18215


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    step = n if not batch_size or batch_size <= 0 else batch_size
    return [slice(i, min(n, i + step)) for i in range(0, n, max(1, step))]


def encode_latents(
    vae: AutoencoderKL,
    images: torch.Tensor,
    scaling_factor: float = SD_SCALING_FACTOR,
    *,
    sample: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``[N, 3, S, S]`` in [-1, 1] -> latents ``[N, 4, S/8, S/8]`` (posterior mean, or a sample if asked)."""
    out = []
    for part in _chunks(images.shape[0], batch_size):
        x = images[part].to(device=vae.device, dtype=vae.dtype)
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mean  # [n, 4, h, w]
        out.append(z * scaling_factor)
    return torch.cat(out, dim=0)


def decode_latents(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    scaling_factor: float = SD_SCALING_FACTOR,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Latents ``[N, 4, h, w]`` -> images ``[N, 3, 8h, 8w]`` clamped to [-1, 1]."""
    out = []
    for part in _chunks(latents.shape[0], batch_size):
        z = latents[part].to(device=vae.device, dtype=vae.dtype) / scaling_factor
        out.append(vae.decode(z).sample.clamp(-1.0, 1.0))
    return torch.cat(out, dim=0)


def decode_soft_masks(
    vae: AutoencoderKL,
    mask_latents: torch.Tensor,
    scaling_factor: float = SD_SCALING_FACTOR,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Predicted mask latents ``[N, 4, h, w]`` -> soft masks ``[N, 8h, 8w]`` float32 in [0, 1]."""
    images = decode_latents(vae, mask_latents, scaling_factor, batch_size=batch_size)  # [N, 3, S, S]
    return ((images.float() + 1.0) * 0.5).mean(dim=1)
