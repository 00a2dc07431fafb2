"""The U-Net's two input convolutions: ``conv_in`` (query: image latent + QE prototype) and ``conv_in_ref``
(support: image latent + mask latent), both 8 -> 320 channels.

``conv_in`` replaces the U-Net's own (the U-Net stays a stock ``UNet2DConditionModel`` with
``in_channels=8``); ``conv_in_ref`` is a small model of its own, swapped in for the support pass. Both are
initialised from Stable Diffusion 1.x's 4-channel ``conv_in``: its weights repeated twice along the input
channels and halved (``conv_in``: times 0.5; ``conv_in_ref``: divided by 2), biases copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class SupportInputConv(ModelMixin, ConfigMixin):
    """``conv_in_ref``: the support input ``cat(z_image, z_mask) [K, 8, h, w]`` -> ``[K, 320, h, w]``."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 8, out_channels: int = 320, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=padding)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.conv(sample)


def repeated_conv_weights(weight4: torch.Tensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """From a 4-channel ``conv_in`` (``weight4 [320, 4, 3, 3]``): the spec's initial weights of both convs.

    ``conv_in.weight = cat([w, w], 1) * 0.5``; ``conv_in_ref.weight = cat([w, w], 1) / 2``; biases copied.
    """
    repeated = torch.cat([weight4, weight4], dim=1)  # [320, 8, 3, 3]
    out = {"conv_in.weight": repeated * 0.5, "conv_in_ref.weight": repeated / 2}
    if bias is not None:
        out["conv_in.bias"] = bias.clone()
        out["conv_in_ref.bias"] = bias.clone()
    return out


def expand_unet_input(unet: UNet2DConditionModel) -> SupportInputConv:
    """Turn a 4-channel SD 1.x U-Net into SD-FSMIS's in place; return the matching ``conv_in_ref``.

    The U-Net's ``conv_in`` becomes 8 -> 320 (``in_channels`` 8 in its config, as the diffusers
    InstructPix2Pix training script does); the support convolution is built from the same 4-channel weights.
    """
    old = unet.conv_in
    if old.in_channels != 4:
        raise ValueError(
            f"expected a 4-channel Stable Diffusion U-Net, its conv_in has {old.in_channels} inputs"
        )
    weights = repeated_conv_weights(old.weight.data, old.bias.data if old.bias is not None else None)
    new = nn.Conv2d(
        2 * old.in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    ref = SupportInputConv(
        in_channels=2 * old.in_channels,
        out_channels=old.out_channels,
        kernel_size=old.kernel_size[0],
        padding=old.padding[0],
    )
    # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules on every dtype cast (it has none)
    nn.Module.to(ref, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weights["conv_in.weight"])
        ref.conv.weight.copy_(weights["conv_in_ref.weight"])
        if old.bias is not None:
            new.bias.copy_(weights["conv_in.bias"])
            ref.conv.bias.copy_(weights["conv_in_ref.bias"])
    unet.conv_in = new
    unet.register_to_config(in_channels=2 * old.in_channels)
    return ref


@contextlib.contextmanager
def support_input(unet: UNet2DConditionModel, conv_in_ref: SupportInputConv) -> Iterator[None]:
    """Within the block the U-Net's first convolution is ``conv_in_ref`` (the support pass)."""
    query_conv = unet.conv_in
    unet.conv_in = conv_in_ref.conv
    try:
        yield
    finally:
        unet.conv_in = query_conv
