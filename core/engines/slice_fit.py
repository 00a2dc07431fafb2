"""Fitting a structure's boundary on one slice: a shape prior, the appearance model, and the image's edges.

The prior is a signed distance map (mm, negative inside) of where the structure is expected, propagated from
painted slices. It becomes a prior log-odds ``-d / tau`` (a different ``tau`` inside and outside, so that the
structure may shrink freely but grow only a little where the prior says so), which is added to the
appearance model's log-likelihood ratio. Pixels the two agree on firmly become seeds of a random walker
(scikit-image) on the image itself (edges per pixel), which places the boundary on the image's edges
between them. The result
is cleaned (opening, holes filled) and only the parts that overlap the prior's interior are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import random_walker

#: signed distance given to every pixel when the prior is empty (mm): "far outside"
FAR_MM = 1e3


@dataclass(frozen=True)
class FitSettings:
    """How strongly the prior holds the boundary (mm) and how it is fitted to the image."""

    #: outside the prior, its log-odds fall by 1 every ``tau_out_mm``
    tau_out_mm: float = 4.0
    #: inside the prior, its log-odds rise by 1 every ``tau_in_mm``
    tau_in_mm: float = 4.0
    #: nothing farther than this outside the prior can be part of the structure
    margin_mm: float = 15.0
    #: random walker boundary on the image (False: the sign of the log-odds decides)
    random_walker: bool = True
    #: pixels whose log-odds exceed this (in absolute value) seed the random walker
    seed_log_odds: float = 3.0
    #: the random walker's edge sensitivity (scikit-image's ``beta``, the image standardised in the ROI)
    beta: float = 130.0
    #: scikit-image's solver: "cg_j" (conjugate gradient, Jacobi preconditioner) or "bf" (direct)
    solver: str = "bf"
    #: use the appearance model (False: the prior alone, an ablation)
    appearance: bool = True


def signed_distance(mask: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Signed Euclidean distance (mm) to the boundary of ``mask``: negative inside, positive outside."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, FAR_MM, dtype=np.float32)
    if mask.all():
        return np.full(mask.shape, -FAR_MM, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_yx)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_yx)
    return (outside - inside).astype(np.float32)


def fit_slice(
    image: np.ndarray,
    log_ratio: np.ndarray | None,
    prior: np.ndarray,
    settings: FitSettings,
    spacing_yx: tuple[float, float],
) -> np.ndarray:
    """The structure on one slice (bool ``[H, W]``) from the prior's signed distance ``prior`` (mm) and the
    appearance model's ``log_ratio`` (None or ``settings.appearance`` False: the prior alone)."""
    prior = np.asarray(prior, dtype=np.float32)
    log_odds = -np.where(prior > 0, prior / settings.tau_out_mm, prior / settings.tau_in_mm)
    if log_ratio is not None and settings.appearance:
        log_odds = log_odds + log_ratio
    allowed = prior < settings.margin_mm
    region = (log_odds > 0) & allowed
    if settings.random_walker and region.any():
        region = _random_walker(image, log_odds, allowed, region, settings, spacing_yx)
    region = ndimage.binary_opening(region)
    region = ndimage.binary_fill_holes(region)
    labels, n = ndimage.label(region)
    if n == 0:
        return region
    keep = np.unique(labels[region & (prior < 0)])
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def _random_walker(
    image: np.ndarray,
    log_odds: np.ndarray,
    allowed: np.ndarray,
    region: np.ndarray,
    settings: FitSettings,
    spacing_yx: tuple[float, float],
) -> np.ndarray:
    """The random walker's boundary between the firm pixels of ``log_odds``, in a box around ``allowed``."""
    pad = max(1, round(5.0 / min(spacing_yx)))
    rows, cols = np.nonzero(allowed)
    y0, y1 = max(0, rows.min() - pad), min(image.shape[0], rows.max() + pad + 1)
    x0, x1 = max(0, cols.min() - pad), min(image.shape[1], cols.max() + pad + 1)
    box = (slice(y0, y1), slice(x0, x1))
    odds = log_odds[box]
    seeds = np.zeros(odds.shape, dtype=np.int32)
    seeds[odds > settings.seed_log_odds] = 1
    seeds[(odds < -settings.seed_log_odds) | ~allowed[box]] = 2
    if not (seeds == 1).any() or not (seeds == 2).any() or (seeds > 0).all():
        return region
    data = ndimage.gaussian_filter(np.asarray(image[box], dtype=np.float64), 0.5)
    data = (data - data.mean()) / (data.std() + 1e-6)
    # prob_tol: the conjugate gradient's probabilities may leave [0, 1] by a hair; only > 0.5 matters here
    walk = random_walker(
        data, seeds, beta=settings.beta, mode=settings.solver, tol=1e-3, prob_tol=0.5, return_full_prob=True
    )
    probability = walk[0]
    out = np.zeros_like(region)
    out[box] = probability > 0.5
    return out & allowed
