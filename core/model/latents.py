"""The VAE side of the method: images and masks to latents and back (Stable Diffusion's ``AutoencoderKL``).

Latents are ``scaling_factor * z`` (0.18215 for SD 1.x). Inference uses the posterior mean, training a
posterior sample. The predicted mask latent is decoded from ``latent / scaling_factor``, clamped to [-1, 1]
and averaged over the 3 channels to a soft mask in [0, 1].

Sub-pixel upsampling (decoding on the CPU, inference only): each of the decoder's upsamplers doubles the
resolution by nearest-neighbour interpolation and then applies a 3 x 3 convolution. On the doubled image the
four output pixels of a 2 x 2 block each see only 2 x 2 distinct input pixels, so the same result is one
convolution of the UNDOUBLED input with a 2 x 2 kernel per block position (the 3 x 3 taps that fall on the
same input pixel summed) and 4x the output channels, interleaved back: 16 instead of 36 multiply-adds per
input pixel and channel pair, the same numbers up to float rounding (about 1e-6). These three convolutions
are about 30 % of the decoder's time at 256 px; this is the decoder the method uses, computed in fewer
operations, not an approximation. ``decode_latents(..., subpixel=False)`` runs diffusers' own layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.upsampling import Upsample2D

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
    subpixel: bool = True,
) -> torch.Tensor:
    """Latents ``[N, 4, h, w]`` -> images ``[N, 3, 8h, 8w]`` clamped to [-1, 1].

    ``subpixel``: the decoder's upsamplers computed at the lower resolution (CPU, no gradients; see above).
    """
    out = []
    layers = subpixel_upsampling(vae.decoder) if subpixel else contextlib.nullcontext()
    with layers:
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
    subpixel: bool = True,
) -> torch.Tensor:
    """Predicted mask latents ``[N, 4, h, w]`` -> soft masks ``[N, 8h, 8w]`` float32 in [0, 1]."""
    images = decode_latents(
        vae, mask_latents, scaling_factor, batch_size=batch_size, subpixel=subpixel
    )  # [N, 3, S, S]
    return ((images.float() + 1.0) * 0.5).mean(dim=1)


# -- sub-pixel upsampling ------------------------------------------------------------------------------------
def subpixel_kernel(weight: torch.Tensor) -> torch.Tensor:
    """3 x 3 kernel ``[O, I, 3, 3]`` applied after 2x nearest upsampling -> ``[4 * O, I, 2, 2]``.

    Output channel ``4 * o + 2 * a + b`` gives output pixel ``(2i + a, 2j + b)`` of channel ``o`` from the
    input pixels ``(i - 1 + a .. i + a, j - 1 + b .. j + b)``: along each axis, block position 0 takes the
    taps ``[w0, w1 + w2]`` and position 1 ``[w0 + w1, w2]``.
    """

    def phases(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)

    out_channels, in_channels = weight.shape[:2]
    kernel = weight.new_empty(out_channels, 2, 2, in_channels, 2, 2)
    for a, rows in enumerate(phases(weight, 2)):  # [O, I, 2, 3]
        for b, block in enumerate(phases(rows, 3)):  # [O, I, 2, 2]
            kernel[:, a, b] = block
    return kernel.reshape(4 * out_channels, in_channels, 2, 2)


def upsample_conv(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` for a 3 x 3, padding-1 ``conv``, computed
    at the resolution of ``x [B, C, H, W]`` -> ``[B, O, 2H, 2W]``."""
    batch, _, height, width = x.shape
    out_channels = conv.out_channels
    bias = conv.bias.repeat_interleave(4) if conv.bias is not None else None
    # padding 1 with a 2 x 2 kernel: [B, 4 * O, H + 1, W + 1]; block position (a, b) is offset by (a, b)
    blocks = F.conv2d(x, subpixel_kernel(conv.weight), bias, padding=1)
    blocks = blocks.view(batch, out_channels, 2, 2, height + 1, width + 1)
    out = x.new_empty(batch, out_channels, height, 2, width, 2)
    for a in range(2):
        for b in range(2):
            out[:, :, :, a, :, b] = blocks[:, :, a, b, a : a + height, b : b + width]
    return out.view(batch, out_channels, 2 * height, 2 * width)


def _subpixel_eligible(module: torch.nn.Module) -> bool:
    """A diffusers ``Upsample2D`` doing 2x nearest interpolation then a plain 3 x 3, padding-1 convolution."""
    if not isinstance(module, Upsample2D) or not module.use_conv or module.use_conv_transpose:
        return False
    conv = module.conv if module.name == "conv" else getattr(module, "Conv2d_0", None)
    return (
        module.interpolate
        and module.norm is None
        and isinstance(conv, torch.nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _subpixel_forward(
    module: Upsample2D, hidden_states: torch.Tensor, output_size: int | None = None, *args, **kwargs
) -> torch.Tensor:
    if (
        output_size is not None
        or args
        or kwargs
        or torch.is_grad_enabled()
        or hidden_states.device.type != "cpu"
        or not hidden_states.is_floating_point()
    ):
        return type(module).forward(module, hidden_states, output_size, *args, **kwargs)
    conv = module.conv if module.name == "conv" else module.Conv2d_0
    return upsample_conv(hidden_states, conv)


@contextlib.contextmanager
def subpixel_upsampling(module: torch.nn.Module) -> Iterator[int]:
    """Within the block, ``module``'s eligible upsamplers compute on the CPU without gradients by
    :func:`upsample_conv` (elsewhere, and with gradients, diffusers' own forward); yields their number."""
    layers = [m for m in module.modules() if _subpixel_eligible(m) and "forward" not in vars(m)]
    for layer in layers:
        layer.forward = partial(_subpixel_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            vars(layer).pop("forward", None)
