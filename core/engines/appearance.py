"""What the painted structure looks like, against what surrounds it: an intensity model learned from supports.

The model is the log-likelihood ratio of two smoothed intensities (a fine and a coarse Gaussian scale, in
millimetres) under the structure and under its surroundings, estimated with 2-D histograms of the painted
pixels (the structure) and of the pixels around it (a band a few centimetres wide, and as many drawn from the
rest of the body, so that tissue that resembles the structure elsewhere in the slice counts too). A pixel
scores > 0 where it looks more like the structure than like its surroundings.

Nothing here assumes a modality: the histogram's range is taken from the painted slices' own intensities
(robust percentiles), so CT in Hounsfield units, normalised MR or anything else gives the same resolution
where the structure and its surroundings lie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AppearanceSettings:
    """How the intensity model is built (distances in mm)."""

    fine_sigma_mm: float = 1.25
    coarse_sigma_mm: float = 3.75
    #: histogram bins per feature
    bins: int = 64
    #: histogram smoothing (Gaussian sigma, in bins)
    smoothing_bins: float = 1.5
    #: the surroundings: pixels between these distances (mm) from the painted structure
    band_mm: tuple[float, float] = (2.5, 25.0)
    #: share of the surroundings' samples drawn from the whole body outside the structure (0: band only)
    body_fraction: float = 0.5
    seed: int = 0


class AppearanceModel:
    """Log-likelihood ratio "structure versus surroundings" of each pixel (use :meth:`fit`)."""

    def __init__(
        self,
        table: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        settings: AppearanceSettings,
        spacing_yx: tuple[float, float],
    ) -> None:
        self.table = table  # [bins, bins] log ratio
        self.low = low  # [2] feature value of the first bin's left edge
        self.high = high  # [2]
        self.settings = settings
        self.spacing_yx = spacing_yx

    @classmethod
    def fit(
        cls,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        spacing_yx: tuple[float, float],
        settings: AppearanceSettings | None = None,
    ) -> AppearanceModel:
        """Learn the model from painted slices: ``images`` ``[H, W]`` float and their bool ``masks``."""
        settings = settings or AppearanceSettings()
        rng = np.random.default_rng(settings.seed)
        inside, around, body = [], [], []
        for image, mask in zip(images, masks):
            mask = np.asarray(mask, dtype=bool)
            if not mask.any():
                continue
            features = _features(image, settings, spacing_yx)
            distance = ndimage.distance_transform_edt(~mask, sampling=spacing_yx)
            inside.append(features[mask])
            near, far = settings.band_mm
            around.append(features[(distance > near) & (distance <= far)])
            body.append(features[~mask & body_mask(image)])
        if not inside:
            raise ValueError("the appearance model needs at least one non-empty mask")
        positives = np.concatenate(inside)
        negatives = np.concatenate(around) if around else np.empty((0, 2), np.float32)
        rest = np.concatenate(body) if body else np.empty((0, 2), np.float32)
        if settings.body_fraction > 0 and len(rest):
            share = settings.body_fraction
            wanted = len(rest) if share >= 1 else round(len(negatives) * share / (1 - share))
            wanted = min(max(wanted, 1), len(rest))
            rest = rest[np.sort(rng.choice(len(rest), wanted, replace=False))]
            negatives = rest if share >= 1 else np.concatenate([negatives, rest])
        if not len(negatives):
            negatives = positives[:0]
        both = np.concatenate([positives, negatives])
        low = np.percentile(both, 0.5, axis=0)
        high = np.percentile(both, 99.5, axis=0)
        pad = np.maximum(high - low, 1e-6) * 0.1
        low, high = low - pad, high + pad
        model = cls(np.zeros((settings.bins, settings.bins)), low, high, settings, spacing_yx)
        pos = ndimage.gaussian_filter(model._histogram(positives), settings.smoothing_bins)
        neg = ndimage.gaussian_filter(model._histogram(negatives), settings.smoothing_bins)
        pos += 1e-3 * max(pos.max(), 1e-12)
        neg += 1e-3 * max(neg.max(), 1e-12)
        model.table = (np.log(pos / pos.sum()) - np.log(neg / neg.sum())).astype(np.float32)
        return model

    def log_ratio(self, image: np.ndarray) -> np.ndarray:
        """``[H, W]`` float32: > 0 where the pixel looks like the structure rather than its surroundings."""
        i, j = self._bins(_features(image, self.settings, self.spacing_yx))
        return self.table[i, j]

    def _bins(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.settings.bins
        scaled = (features - self.low) / (self.high - self.low) * n
        index = np.clip(scaled.astype(np.int64), 0, n - 1)
        return index[..., 0], index[..., 1]

    def _histogram(self, features: np.ndarray) -> np.ndarray:
        n = self.settings.bins
        i, j = self._bins(features)
        return np.bincount(i * n + j, minlength=n * n).reshape(n, n).astype(np.float64)


def _features(image: np.ndarray, settings: AppearanceSettings, spacing_yx: tuple[float, float]) -> np.ndarray:
    """``[H, W, 2]``: the image smoothed at the fine and at the coarse scale."""
    image = np.asarray(image, dtype=np.float32)
    sy, sx = spacing_yx
    fine = ndimage.gaussian_filter(image, (settings.fine_sigma_mm / sy, settings.fine_sigma_mm / sx))
    coarse = ndimage.gaussian_filter(image, (settings.coarse_sigma_mm / sy, settings.coarse_sigma_mm / sx))
    return np.stack([fine, coarse], axis=-1)


def body_mask(image: np.ndarray) -> np.ndarray:
    """The pixels of the body: brighter than a tenth of the slice's bright end, holes filled (air outside
    the patient is not "surroundings" of an organ)."""
    image = np.asarray(image, dtype=np.float32)
    low, high = float(image.min()), float(np.percentile(image, 99))
    if high <= low:
        return np.zeros(image.shape, dtype=bool)
    return ndimage.binary_fill_holes(image > low + 0.1 * (high - low))
