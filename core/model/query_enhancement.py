"""Query Enhancement (QE): a foreground prototype of the query, found in latent space, joins the query input.

No parameters. The support latents give a foreground and a background prototype (masked average pooling);
each query pixel's 4-d latent is compared with both by cosine similarity, a softmax over the two gives its
foreground probability, and the query prototype is the mean latent over the confident pixels (> 0.7), or
over the top-k pixels when none is confident. The U-Net's query input is ``cat(z_query, prototype)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sd_fsmis.core.model.config import QueryEnhancementConfig

#: added to the mask area in masked average pooling (1e-6 as in the reference, for the QE prototypes and the
#: VTCT pooling alike)
POOLING_EPS = 1e-6


def masked_average_pooling(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``features [K, C, h, w]`` weighted by ``mask [K, 1, h, w]`` -> ``[K, C]``."""
    return (features * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + POOLING_EPS)


def support_prototypes(
    support_latents: torch.Tensor, support_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background prototypes ``[C]`` each, averaged over the K shots.

    ``support_latents [K, 4, h, w]``; ``support_masks [K, 1, S, S]`` in [0, 1], resized to ``h x w``
    bilinearly with ``align_corners=True`` and not binarised.
    """
    z = support_latents.float()
    m = F.interpolate(support_masks.float(), size=z.shape[-2:], mode="bilinear", align_corners=True)
    foreground = masked_average_pooling(z, m).mean(dim=0)  # [4]
    background = masked_average_pooling(z, 1.0 - m).mean(dim=0)  # [4]
    return foreground, background


def foreground_probability(
    query_latents: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor
) -> torch.Tensor:
    """Per query pixel, softmax over (cos to background, cos to foreground) -> fg probability [B, h, w]."""
    z = query_latents.float()  # [B, 4, h, w]
    cos_fg = F.cosine_similarity(z, foreground.float()[None, :, None, None], dim=1)  # [B, h, w]
    cos_bg = F.cosine_similarity(z, background.float()[None, :, None, None], dim=1)  # [B, h, w]
    return torch.softmax(torch.stack([cos_bg, cos_fg], dim=0), dim=0)[1]


def topk_count(latent_width: int, ratio: float) -> int:
    """k of the top-k fallback: ``int(ratio * latent width)`` (6 at width 32), at least 1."""
    return max(1, int(ratio * latent_width))


def query_prototype(
    query_latents: torch.Tensor, probability: torch.Tensor, threshold: float, k: int
) -> torch.Tensor:
    """Mean query latent over pixels with probability > threshold, else over the top-k -> ``[B, C]``."""
    z = query_latents.float().flatten(2)  # [B, C, N]
    p = probability.flatten(1)  # [B, N]
    selected = (p > threshold).to(z.dtype)  # [B, N]
    count = selected.sum(dim=1, keepdim=True)  # [B, 1]
    mean_selected = (z * selected[:, None]).sum(dim=2) / count.clamp(min=1.0)  # [B, C]
    k = min(k, p.shape[1])
    top = p.topk(k, dim=1).indices  # [B, k]
    mean_top = torch.gather(z, 2, top[:, None].expand(-1, z.shape[1], -1)).mean(dim=2)  # [B, C]
    return torch.where(count > 0, mean_selected, mean_top)


def enhance_query(
    query_latents: torch.Tensor,
    foreground: torch.Tensor,
    background: torch.Tensor,
    config: QueryEnhancementConfig | None = None,
) -> torch.Tensor:
    """The U-Net's query input ``cat(z_query, broadcast prototype)``: ``[B, 4, h, w]`` -> ``[B, 8, h, w]``."""
    config = config or QueryEnhancementConfig()
    probability = foreground_probability(query_latents, foreground, background)  # [B, h, w]
    k = topk_count(query_latents.shape[-1], config.topk_ratio)
    prototype = query_prototype(query_latents, probability, config.threshold, k)  # [B, 4]
    prototype = prototype.to(query_latents.dtype)[:, :, None, None].expand_as(query_latents)
    return torch.cat([query_latents, prototype], dim=1)
