"""Input preprocessing: slices in [0, 1] to the model's image size, in the value ranges the VAE expects.

A slice arrives as float32 in [0, 1], already normalised over its volume (min-max). It is resized to the
model's image size (256 x 256 for SD-FSMIS; bilinear for images by default, nearest as in the reference),
then mapped to [-1, 1] with the grey channel repeated to 3. A mask (0/1) becomes ``2*m - 1`` repeated to 3
channels, so the VAE sees white-on-black.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sd_fsmis.core.model.config import PreprocessingConfig


def resize_batch(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` to ``size`` with "bilinear" (antialiased) or "nearest"; no-op when equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"unknown interpolation '{mode}'")


def _as_tensor(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)


def slices_to_model_size(
    slices: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    config: PreprocessingConfig,
    device: torch.device,
    *,
    is_mask: bool = False,
) -> torch.Tensor:
    """Slices ``[N, H, W]`` (or a list of 2-D slices of any sizes) in [0, 1] -> ``[N, 1, S, S]`` float32.

    Images use ``config.image_interpolation``, masks ``config.mask_interpolation``; values stay in [0, 1].
    """
    size = (config.image_size, config.image_size)
    mode = config.mask_interpolation if is_mask else config.image_interpolation
    if isinstance(slices, np.ndarray | torch.Tensor) and slices.ndim == 3:
        x = _as_tensor(slices, device)[:, None]  # [N, 1, H, W]
        return resize_batch(x, size, mode).clamp_(0.0, 1.0)
    out = [resize_batch(_as_tensor(s, device)[None, None], size, mode) for s in slices]  # N x [1, 1, S, S]
    return torch.cat(out, dim=0).clamp_(0.0, 1.0)


def to_vae_image(image01: torch.Tensor) -> torch.Tensor:
    """``[N, 1, S, S]`` in [0, 1] -> ``[N, 3, S, S]`` in [-1, 1] (grey repeated to 3 channels)."""
    return (image01 * 2.0 - 1.0).expand(-1, 3, -1, -1)


def to_vae_mask(mask01: torch.Tensor) -> torch.Tensor:
    """Mask ``[N, 1, S, S]`` in {0, 1} -> ``2*m - 1`` repeated to ``[N, 3, S, S]``."""
    return (mask01 * 2.0 - 1.0).expand(-1, 3, -1, -1)


def to_slice_size(soft: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Soft masks ``[B, S, S]`` -> ``[B, H, W]`` (bilinear), values kept in [0, 1]."""
    return resize_batch(soft[:, None], size, "bilinear")[:, 0].clamp_(0.0, 1.0)
