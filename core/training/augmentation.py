"""Training augmentation of one (image, mask) slice pair: affine, elastic, gamma (method section).

Affine (rotation +-5 deg, translation +-5 px, scale 0.9-1.2, shear +-5 deg) and elastic deformation
(alpha 10, sigma 5) are composed into ONE sampling grid, so the image is interpolated once (bilinear) and
the mask once (nearest). The elastic field is drawn fresh from the generator on every call (the reference
fixed its seed, so its field never changed: a bug we do not reproduce). Gamma 0.5-1.5 then acts on the
image intensities in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi


@dataclass(frozen=True)
class AugmentationConfig:
    """Ranges of the random transforms (defaults: the reference's)."""

    rotation_deg: float = 5.0
    translation_px: float = 5.0
    scale: tuple[float, float] = (0.9, 1.2)
    shear_deg: float = 5.0
    elastic_alpha: float = 10.0
    elastic_sigma: float = 5.0
    gamma: tuple[float, float] = (0.5, 1.5)


def affine_matrix(
    rotation_deg: float, shear_deg: float, scale: float, translation: tuple[float, float]
) -> np.ndarray:
    """3x3 forward transform (row, col) about the origin: translation * rotation * shear * scale."""
    r, s = math.radians(rotation_deg), math.radians(shear_deg)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    shear = np.array([[1.0, 0.0], [math.tan(s), 1.0]])
    m = np.eye(3)
    m[:2, :2] = rot @ shear @ (scale * np.eye(2))
    m[:2, 2] = translation
    return m


def elastic_field(shape: tuple[int, int], alpha: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement ``[2, H, W]`` in pixels (Simard et al.): smoothed noise * alpha."""
    noise = rng.uniform(-1.0, 1.0, size=(2, *shape))
    return np.stack([ndi.gaussian_filter(n, sigma, mode="constant") * alpha for n in noise])


def sampling_grid(shape: tuple[int, int], config: AugmentationConfig, rng: np.random.Generator) -> np.ndarray:
    """Source coordinates ``[2, H, W]`` of a random affine (about the centre) plus an elastic field."""
    h, w = shape
    forward = affine_matrix(
        rng.uniform(-config.rotation_deg, config.rotation_deg),
        rng.uniform(-config.shear_deg, config.shear_deg),
        rng.uniform(*config.scale),
        tuple(rng.uniform(-config.translation_px, config.translation_px, size=2)),
    )
    inverse = np.linalg.inv(forward)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    out = np.stack([rows - centre[0], cols - centre[1]]).reshape(2, -1)  # output coords about the centre
    src = inverse[:2, :2] @ out + inverse[:2, 2:3]
    src = src.reshape(2, h, w) + centre[:, None, None]
    if config.elastic_alpha > 0:
        src = src + elastic_field(shape, config.elastic_alpha, config.elastic_sigma, rng)
    return src


def augment_pair(
    image: np.ndarray, mask: np.ndarray, config: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one slice ``[H, W]`` in [0, 1] and its 0/1 mask: same geometry, gamma on the image only."""
    grid = sampling_grid(image.shape, config, rng)
    warped = ndi.map_coordinates(image.astype(np.float32), grid, order=1, mode="constant", cval=0.0)
    warped_mask = ndi.map_coordinates(mask.astype(np.float32), grid, order=0, mode="constant", cval=0.0)
    gamma = rng.uniform(*config.gamma)
    warped = np.clip(warped, 0.0, 1.0) ** gamma
    return warped.astype(np.float32), (warped_mask > 0.5).astype(np.float32)
