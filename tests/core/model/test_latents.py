"""The VAE side: sub-pixel upsampling gives diffusers' decoder output in fewer operations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D

from sd_fsmis.core.engines.base import SegmentationRequest, SupportExample
from sd_fsmis.core.model.engine import SDFSMISEngine, binarize
from sd_fsmis.core.model.latents import (
    decode_latents,
    subpixel_kernel,
    subpixel_upsampling,
    upsample_conv,
)


@pytest.mark.parametrize(
    ("channels", "out_channels", "height", "width", "bias"), [(5, 7, 6, 9, True), (4, 4, 1, 3, False)]
)
def test_upsample_conv_is_nearest_upsampling_then_the_convolution(
    channels, out_channels, height, width, bias
):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, out_channels, 3, padding=1, bias=bias)
    x = torch.randn(3, channels, height, width)
    with torch.no_grad():
        expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        got = upsample_conv(x, conv)
    assert got.shape == expected.shape == (3, out_channels, 2 * height, 2 * width)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_subpixel_kernel_sums_the_taps_that_see_the_same_input_pixel():
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    kernel = subpixel_kernel(weight).reshape(2, 2, 2, 2)  # [a, b, 2, 2]
    # top-left output pixel of a block: input rows i-1, i (taps row 0, rows 1+2), likewise columns
    torch.testing.assert_close(kernel[0, 0], torch.tensor([[0.0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]))
    torch.testing.assert_close(kernel[1, 1], torch.tensor([[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8.0]]))
    assert float(kernel.sum()) == 4 * float(weight.sum())


def test_decoding_with_subpixel_upsampling_gives_the_decoder_output(tiny_pipeline):
    vae = tiny_pipeline.vae
    torch.manual_seed(1)
    latents = torch.randn(3, 4, 8, 8)
    with torch.inference_mode():
        stock = decode_latents(vae, latents, subpixel=False)
        fast = decode_latents(vae, latents, subpixel=True)
        with subpixel_upsampling(vae.decoder) as layers:
            assert layers == sum(isinstance(m, Upsample2D) for m in vae.decoder.modules()) == 3
    torch.testing.assert_close(fast, stock, rtol=0, atol=1e-5)
    # the decoder's own forward is back after the block
    assert not any("forward" in vars(m) for m in vae.decoder.modules())


def test_with_gradients_the_upsamplers_run_as_diffusers_wrote_them(tiny_pipeline):
    vae = tiny_pipeline.vae
    upsampler = next(m for m in vae.decoder.modules() if isinstance(m, Upsample2D))
    x = torch.randn(1, upsampler.channels, 4, 4, requires_grad=True)
    with subpixel_upsampling(vae.decoder):
        out = upsampler(x)
    out.sum().backward()
    assert out.grad_fn is not None and x.grad is not None
    expected = upsampler.conv(F.interpolate(x.detach(), scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(out.detach(), expected.detach())


def test_the_engine_masks_equal_those_of_the_stock_decoder(tiny_pipeline, phantom):
    volume, mask = phantom
    request = SegmentationRequest(query=volume, supports=[SupportExample(volume[2], mask, slice_index=2)])
    fast = SDFSMISEngine(tiny_pipeline).segment(request)
    tiny_pipeline.subpixel_upsampling = False
    stock = SDFSMISEngine(tiny_pipeline).segment(request)
    np.testing.assert_allclose(fast.soft, stock.soft, rtol=0, atol=1e-5)
    assert np.array_equal(fast.mask, stock.mask)
    assert np.array_equal(fast.mask, binarize(stock.soft, tiny_pipeline.config.postprocessing))
