"""Training augmentation of an episode's slices: affine, elastic, gamma (method section), two presets.

Affine (rotation +-5 deg, translation +-5 px, scale 0.9-1.2, shear +-5 deg) and elastic deformation
(alpha 10, sigma 5) are composed into ONE sampling grid, so the image is interpolated once (bilinear) and
the mask once (nearest). The elastic field is drawn fresh from the generator on every call (the reference
fixed its seed, so its field never changed: a bug neither preset reproduces). Gamma 0.5-1.5 then acts on
the image intensities in [0, 1].

Presets (``sd-fsmis train --augmentation``):

- ``ours`` (default): either the support (each shot its own draw) or the query is augmented, 50/50, with
  geometry and gamma together; outside the field of view the image is black (0) and the elastic field
  samples black too (a clean edge, as the slices' own background);
- ``reference`` (the reference's training code): one geometric draw shared by every support shot; the side
  that gets the gamma is drawn independently of the side that gets the geometry (so 50 % of the episodes
  have geometry on one side and gamma on the other), with one gamma for every shot; the affine fills with
  grey (0.5, the reference's 0 in [-1, 1]) and the elastic field reflects at the image edges
  (``mode="reflect"``, for the smoothing of the field too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

ELASTIC_MODES = ("constant", "reflect")


@dataclass(frozen=True)
class AugmentationConfig:
    """Ranges of the random transforms (defaults: the reference's) and how they are applied (ours)."""

    rotation_deg: float = 5.0
    translation_px: float = 5.0
    scale: tuple[float, float] = (0.9, 1.2)
    shear_deg: float = 5.0
    elastic_alpha: float = 10.0
    elastic_sigma: float = 5.0
    gamma: tuple[float, float] = (0.5, 1.5)
    #: image value in [0, 1] outside the field of view after the affine: 0 black (ours), 0.5 grey (reference)
    border_value: float = 0.0
    #: beyond the image edges the elastic field samples the border value ("constant") or reflects ("reflect")
    elastic_mode: str = "constant"
    #: one geometric draw for every support shot (reference) instead of one per shot (ours)
    shared_geometry: bool = False
    #: gamma on a side drawn independently of the geometry's, one value for all shots (reference)
    independent_gamma: bool = False


#: the presets of ``--augmentation``
AUGMENTATIONS: dict[str, AugmentationConfig] = {
    "ours": AugmentationConfig(),
    "reference": AugmentationConfig(
        border_value=0.5, elastic_mode="reflect", shared_geometry=True, independent_gamma=True
    ),
}


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


def elastic_field(
    shape: tuple[int, int], alpha: float, sigma: float, rng: np.random.Generator, mode: str = "constant"
) -> np.ndarray:
    """A smooth random displacement ``[2, H, W]`` in pixels (Simard et al.): smoothed noise * alpha."""
    noise = rng.uniform(-1.0, 1.0, size=(2, *shape))
    return np.stack([ndi.gaussian_filter(n, sigma, mode=mode) * alpha for n in noise])


def _reflect(coords: np.ndarray, size: int) -> np.ndarray:
    """Coordinates folded into the image as scipy's ``mode="reflect"`` extends it (about -0.5 and
    ``size - 0.5``), then onto ``[0, size - 1]``: bilinear there equals the reflected image's edge pixel."""
    period = 2 * size
    folded = np.mod(coords + 0.5, period)
    folded = np.where(folded >= size, period - folded, folded)
    return np.clip(folded - 0.5, 0.0, size - 1.0)


def sampling_grid(shape: tuple[int, int], config: AugmentationConfig, rng: np.random.Generator) -> np.ndarray:
    """Source coordinates ``[2, H, W]`` of a random affine (about the centre) plus an elastic field.

    ``elastic_mode="constant"``: the field displaces the affine's source points (one smooth warp);
    ``"reflect"``: the elastic warp acts on the affine's output, reflected at its edges (the reference
    warps the transformed image with ``map_coordinates(mode="reflect")``)."""
    if config.elastic_mode not in ELASTIC_MODES:
        raise ValueError(f"unknown elastic mode '{config.elastic_mode}' (choose constant or reflect)")
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
    points = np.stack([rows, cols])  # output coordinates [2, H, W]
    field = (
        elastic_field(shape, config.elastic_alpha, config.elastic_sigma, rng, config.elastic_mode)
        if config.elastic_alpha > 0
        else None
    )
    if field is not None and config.elastic_mode == "reflect":
        points = np.stack([_reflect(points[0] + field[0], h), _reflect(points[1] + field[1], w)])
    out = (points - centre[:, None, None]).reshape(2, -1)
    src = (inverse[:2, :2] @ out + inverse[:2, 2:3]).reshape(2, h, w) + centre[:, None, None]
    if field is not None and config.elastic_mode == "constant":
        src = src + field
    return src


def warp_pair(
    image: np.ndarray, mask: np.ndarray, grid: np.ndarray, config: AugmentationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a slice (bilinear, ``border_value`` outside) and its mask (nearest, 0 outside) at ``grid``."""
    warped = ndi.map_coordinates(
        image.astype(np.float32), grid, order=1, mode="constant", cval=config.border_value
    )
    warped_mask = ndi.map_coordinates(mask.astype(np.float32), grid, order=0, mode="constant", cval=0.0)
    return np.clip(warped, 0.0, 1.0).astype(np.float32), (warped_mask > 0.5).astype(np.float32)


def augment_pair(
    image: np.ndarray, mask: np.ndarray, config: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one slice ``[H, W]`` in [0, 1] and its 0/1 mask: same geometry, gamma on the image only."""
    warped, warped_mask = warp_pair(image, mask, sampling_grid(image.shape, config, rng), config)
    gamma = rng.uniform(*config.gamma)
    return (warped**gamma).astype(np.float32), warped_mask


def augment_episode_slices(
    support_images: np.ndarray,
    support_masks: np.ndarray,
    query_images: np.ndarray,
    query_masks: np.ndarray,
    config: AugmentationConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Augment an episode (``[K, H, W]`` support, ``[1, H, W]`` query); returns the four arrays and what
    was augmented ("support", "query", or "support geometry, query gamma" and the like)."""
    s_img, s_mask = support_images.astype(np.float32), support_masks.astype(np.float32)
    q_img, q_mask = query_images.astype(np.float32), query_masks.astype(np.float32)
    if not config.independent_gamma and not config.shared_geometry:  # ours
        if rng.random() < 0.5:
            out = [augment_pair(i, m, config, rng) for i, m in zip(s_img, s_mask, strict=True)]
            return np.stack([o[0] for o in out]), np.stack([o[1] for o in out]), q_img, q_mask, "support"
        img, m = augment_pair(q_img[0], q_mask[0], config, rng)
        return s_img, s_mask, img[None], m[None], "query"
    geometry_on_support = rng.random() < 0.5
    if geometry_on_support:
        if config.shared_geometry:
            grid = sampling_grid(s_img.shape[-2:], config, rng)
            grids = [grid] * len(s_img)
        else:
            grids = [sampling_grid(s_img.shape[-2:], config, rng) for _ in s_img]
        out = [warp_pair(i, m, g, config) for i, m, g in zip(s_img, s_mask, grids, strict=True)]
        s_img, s_mask = np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
    else:
        img, m = warp_pair(q_img[0], q_mask[0], sampling_grid(q_img.shape[-2:], config, rng), config)
        q_img, q_mask = img[None], m[None]
    gamma = rng.uniform(*config.gamma)
    gamma_on_support = rng.random() < 0.5 if config.independent_gamma else geometry_on_support
    if gamma_on_support:
        s_img = (np.clip(s_img, 0.0, 1.0) ** gamma).astype(np.float32)
    else:
        q_img = (np.clip(q_img, 0.0, 1.0) ** gamma).astype(np.float32)
    geometry, photometry = (
        ("support" if geometry_on_support else "query"),
        ("support" if gamma_on_support else "query"),
    )
    what = geometry if geometry == photometry else f"{geometry} geometry, {photometry} gamma"
    return s_img, s_mask, q_img, q_mask, what
