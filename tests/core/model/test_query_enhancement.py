"""QE on latents constructed so that every prototype and probability is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sd_fsmis.core.model.config import QueryEnhancementConfig
from sd_fsmis.core.model.query_enhancement import (
    enhance_query,
    foreground_probability,
    masked_average_pooling,
    query_prototype,
    support_prototypes,
    topk_count,
)

A = torch.tensor([1.0, 0.0, 0.0, 0.0])  # foreground latent
B = torch.tensor([0.0, 1.0, 0.0, 0.0])  # background latent


def _two_region_latents(k: int = 1, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``[k, 4, size, size]``: A in the left half, B in the right; the mask at 8x is the left half."""
    z = torch.empty(k, 4, size, size)
    z[:, :, :, : size // 2] = A[:, None, None]
    z[:, :, :, size // 2 :] = B[:, None, None]
    mask = torch.zeros(k, 1, 8 * size, 8 * size)
    mask[..., : 4 * size] = 1.0
    return z, mask


def test_masked_average_pooling():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, :] = 1.0
    assert masked_average_pooling(features, mask).item() == pytest.approx(1.5, rel=1e-5)


def test_support_prototypes_use_the_mask_resized_bilinear_align_corners_true():
    z, mask = _two_region_latents(k=2)
    foreground, background = support_prototypes(z, mask)
    m = F.interpolate(mask, size=(32, 32), mode="bilinear", align_corners=True)  # not binarised
    expected_fg = ((z * m).sum((2, 3)) / (m.sum((2, 3)) + 1e-6)).mean(0)
    expected_bg = ((z * (1 - m)).sum((2, 3)) / ((1 - m).sum((2, 3)) + 1e-6)).mean(0)
    torch.testing.assert_close(foreground, expected_fg)
    torch.testing.assert_close(background, expected_bg)
    # the columns at the border get a soft weight, so the prototypes are close to A and B but not exact
    assert torch.allclose(foreground, A, atol=0.05) and torch.allclose(background, B, atol=0.05)
    assert m.unique().numel() > 2


def test_shots_are_averaged():
    z1, mask = _two_region_latents(k=1)
    z2 = z1 * 3.0
    fg_both, _ = support_prototypes(torch.cat([z1, z2]), torch.cat([mask, mask]))
    fg1, _ = support_prototypes(z1, mask)
    fg2, _ = support_prototypes(z2, mask)
    torch.testing.assert_close(fg_both, (fg1 + fg2) / 2)


def test_foreground_probability_is_a_softmax_of_cosines_without_temperature():
    z, _ = _two_region_latents()
    prob = foreground_probability(z, A, B)  # [1, 32, 32]
    expected = 1.0 / (1.0 + math.exp(-1.0))  # softmax(cos_bg=0, cos_fg=1)[fg]
    assert prob[0, 0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert prob[0, 0, -1].item() == pytest.approx(1.0 - expected, rel=1e-6)


def test_query_prototype_over_confident_pixels():
    z, _ = _two_region_latents()
    z[0, 2, :, :4] = 0.5  # some foreground pixels differ, still confident
    prob = foreground_probability(z, A, B)
    assert (prob[0, :, :16] > 0.7).all() and (prob[0, :, 16:] < 0.7).all()
    proto = query_prototype(z, prob, 0.7, 6)
    torch.testing.assert_close(proto[0], z[0, :, :, :16].mean(dim=(1, 2)))


def test_query_prototype_top_k_fallback():
    assert topk_count(32, 0.1875) == 6 and topk_count(8, 0.1875) == 1
    torch.manual_seed(0)
    z = torch.rand(2, 4, 32, 32) + 1.0  # all positive: nothing near pure A
    prob = foreground_probability(z, A, B)
    assert (prob <= 0.7).all()
    proto = query_prototype(z, prob, 0.7, 6)
    for b in range(2):
        top = prob[b].flatten().topk(6).indices
        torch.testing.assert_close(proto[b], z[b].flatten(1)[:, top].mean(dim=1))


def test_enhanced_query_input_is_latent_plus_broadcast_prototype():
    torch.manual_seed(1)
    z_support, mask = _two_region_latents(k=1)
    z_query = torch.randn(3, 4, 32, 32)
    z_query[1] = z_support[0]  # one slice with confident pixels, the others random
    fg, bg = support_prototypes(z_support, mask)
    x = enhance_query(z_query, fg, bg, QueryEnhancementConfig())
    assert x.shape == (3, 8, 32, 32)
    torch.testing.assert_close(x[:, :4], z_query)
    prob = foreground_probability(z_query, fg, bg)
    proto = query_prototype(z_query, prob, 0.7, 6)
    torch.testing.assert_close(x[:, 4:], proto[:, :, None, None].expand(-1, -1, 32, 32))
    torch.testing.assert_close(x[1, 4:, 0, 0], A, atol=1e-6, rtol=0)  # left half = A exactly
