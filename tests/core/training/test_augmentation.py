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


def _episode_arrays(shots: int = 3):
    image, mask = disc()
    return (
        np.stack([image] * shots),
        np.stack([mask] * shots),
        image[None].copy(),
        mask[None].copy(),
    )


def test_reference_preset_shares_one_geometry_over_the_shots():
    from sd_fsmis.core.training.augmentation import AUGMENTATIONS, augment_episode_slices

    rng = np.random.default_rng(0)
    shared = independent = 0
    for _ in range(12):
        for preset in ("reference", "ours"):
            _, s_mask, _, _, what = augment_episode_slices(*_episode_arrays(), AUGMENTATIONS[preset], rng)
            if not what.startswith("support"):
                continue
            same = all(np.array_equal(s_mask[0], m) for m in s_mask[1:])
            if preset == "reference":
                assert same
                shared += 1
            else:
                assert not same  # ours: one draw per shot
                independent += 1
    assert shared and independent


def test_reference_preset_draws_the_gamma_side_independently():
    from sd_fsmis.core.training.augmentation import AUGMENTATIONS, augment_episode_slices

    rng = np.random.default_rng(1)
    seen = {
        preset: {
            augment_episode_slices(*_episode_arrays(1), AUGMENTATIONS[preset], rng)[-1] for _ in range(40)
        }
        for preset in ("reference", "ours")
    }
    assert seen["ours"] == {"support", "query"}
    assert seen["reference"] == {
        "support",
        "query",
        "support geometry, query gamma",
        "query geometry, support gamma",
    }
    # the gamma side: its images change without any geometry (one gamma for every shot)
    flat = AugmentationConfig(
        rotation_deg=0, translation_px=0, scale=(1, 1), shear_deg=0, elastic_alpha=0, gamma=(0.5, 0.6)
    )
    reference_flat = AugmentationConfig(**{**flat.__dict__, **_reference_switches()})
    for _ in range(10):
        s_img, _, q_img, _, what = augment_episode_slices(*_episode_arrays(), reference_flat, rng)
        gamma_side = what.split(", ")[-1].split()[0]
        changed, kept = (s_img, q_img) if gamma_side == "support" else (q_img, s_img)
        image = disc()[0]
        assert all(np.allclose(c, changed[0]) for c in changed) and not np.allclose(changed[0], image)
        assert all(np.allclose(k, image, atol=1e-6) for k in kept)


def _reference_switches() -> dict:
    from sd_fsmis.core.training.augmentation import AUGMENTATIONS

    ref = AUGMENTATIONS["reference"]
    return dict(
        border_value=ref.border_value,
        elastic_mode=ref.elastic_mode,
        shared_geometry=ref.shared_geometry,
        independent_gamma=ref.independent_gamma,
    )


def test_reference_border_is_grey_and_its_elastic_edges_reflect():
    from sd_fsmis.core.training.augmentation import AUGMENTATIONS

    black = np.zeros((64, 64), np.float32)
    none = np.zeros_like(black)
    shrink = dict(
        rotation_deg=0, translation_px=0, scale=(0.7, 0.7), shear_deg=0, elastic_alpha=0, gamma=(1, 1)
    )
    ours = AugmentationConfig(**shrink)
    reference = AugmentationConfig(**shrink, **_reference_switches())
    out, _ = augment_pair(black, none, ours, np.random.default_rng(0))
    assert out[0, 0] == 0.0  # ours: black outside the field of view
    out, _ = augment_pair(black, none, reference, np.random.default_rng(0))
    assert out[0, 0] == 0.5 and out[32, 32] == 0.0  # the reference's 0 in [-1, 1]
    assert AUGMENTATIONS["reference"].border_value == 0.5
    # elastic only, on a white slice: reflecting edges stay white, ours pulls black in at the edges
    white = np.ones((64, 64), np.float32)
    elastic = dict(
        rotation_deg=0,
        translation_px=0,
        scale=(1, 1),
        shear_deg=0,
        elastic_alpha=30,
        elastic_sigma=3,
        gamma=(1, 1),
    )
    out, _ = augment_pair(white, none, AugmentationConfig(**elastic), np.random.default_rng(2))
    assert out.min() < 0.5
    reflect = AugmentationConfig(**elastic, elastic_mode="reflect")
    out, _ = augment_pair(white, none, reflect, np.random.default_rng(2))
    np.testing.assert_allclose(out, 1.0, atol=1e-6)
