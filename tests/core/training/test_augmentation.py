"""Training augmentation: shapes, ranges, mask/image agreement, a fresh elastic field per call."""

from __future__ import annotations

import numpy as np

from sd_fsmis.core.training.augmentation import AugmentationConfig, augment_pair, elastic_field

IDENTITY = AugmentationConfig(
    rotation_deg=0, translation_px=0, scale=(1, 1), shear_deg=0, elastic_alpha=0, gamma=(1, 1)
)


def disc(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - 50) ** 2 + (xx - 45) ** 2 < 20**2).astype(np.float32)
    image = np.clip(0.2 + 0.6 * mask + 0.002 * xx, 0, 1).astype(np.float32)
    return image, mask


def test_shapes_ranges_and_binary_mask():
    image, mask = disc()
    rng = np.random.default_rng(0)
    for _ in range(5):
        out, out_mask = augment_pair(image, mask, AugmentationConfig(), rng)
        assert out.shape == image.shape and out.dtype == np.float32
        assert out_mask.shape == mask.shape and set(np.unique(out_mask)) <= {0.0, 1.0}
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert 0.7 < out_mask.sum() / mask.sum() < 1.5  # scale 0.9-1.2 in each direction


def test_identity_config_changes_nothing():
    image, mask = disc()
    out, out_mask = augment_pair(image, mask, IDENTITY, np.random.default_rng(0))
    np.testing.assert_allclose(out, image, atol=1e-5)
    np.testing.assert_array_equal(out_mask, mask)


def test_image_and_mask_get_the_same_geometry():
    _, mask = disc()
    config = AugmentationConfig(gamma=(1, 1))
    out, out_mask = augment_pair(mask, mask, config, np.random.default_rng(4))
    warped = out > 0.5
    iou = (warped & (out_mask > 0)).sum() / (warped | (out_mask > 0)).sum()
    assert iou > 0.95


def test_elastic_field_is_fresh_on_every_call_and_seeded():
    rng = np.random.default_rng(0)
    first = elastic_field((64, 64), 10.0, 5.0, rng)
    second = elastic_field((64, 64), 10.0, 5.0, rng)
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(first, elastic_field((64, 64), 10.0, 5.0, np.random.default_rng(0)))
    assert 0.05 < np.abs(first).max() < 10.0  # a smooth field of small displacements
    image, mask = disc()
    elastic_only = AugmentationConfig(
        rotation_deg=0, translation_px=0, scale=(1, 1), shear_deg=0, gamma=(1, 1)
    )
    a = augment_pair(image, mask, elastic_only, rng)[0]
    b = augment_pair(image, mask, elastic_only, rng)[0]
    assert not np.allclose(a, b)


def test_same_seed_same_output_and_gamma_range():
    image, mask = disc()
    a = augment_pair(image, mask, AugmentationConfig(), np.random.default_rng(9))
    b = augment_pair(image, mask, AugmentationConfig(), np.random.default_rng(9))
    np.testing.assert_array_equal(a[0], b[0])
    gamma_only = AugmentationConfig(
        rotation_deg=0, translation_px=0, scale=(1, 1), shear_deg=0, elastic_alpha=0
    )
    rng = np.random.default_rng(1)
    exponents = []
    for _ in range(20):
        out = augment_pair(image, mask, gamma_only, rng)[0]
        exponents.append(np.log(out[50, 45]) / np.log(image[50, 45]))
    assert min(exponents) >= 0.5 and max(exponents) <= 1.5 and max(exponents) - min(exponents) > 0.3
