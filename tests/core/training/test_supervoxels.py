"""Supervoxels computed by the application: CHAOS volumes, the body mask, the cache, files, cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.core.errors import JobCancelled, MaskError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.datasets import FewShotDataset
from sd_fsmis.core.io.labelmap import MAX_PLAUSIBLE_LABELS, LabelMap
from sd_fsmis.core.io.loader import load_volume
from sd_fsmis.core.jobs import CancelToken
from sd_fsmis.core.training.episodes import EpisodeSampler, load_training_volumes
from sd_fsmis.core.training.supervoxels import (
    SupervoxelParameters,
    cached_supervoxels,
    compute_supervoxels,
    foreground_mask,
    prepare_supervoxels,
    save_supervoxels,
    sidecar_path,
    trim_cache,
    volumes_needing_supervoxels,
)
from sd_fsmis.core.volume import Volume


@pytest.fixture(scope="module")
def chaos_volume(chaos_dir):
    return load_volume(chaos_dir / "images" / "image_2.nii.gz")


@pytest.fixture(scope="module")
def chaos_supervoxels(chaos_volume):
    return compute_supervoxels(chaos_volume.array, chaos_volume.geometry.spacing)


def test_a_chaos_volume_gives_supervoxels_on_its_grid_in_the_expected_range(chaos_volume, chaos_supervoxels):
    result, image = chaos_supervoxels, chaos_volume.array
    assert result.labels.shape == image.shape and result.labels.dtype == np.int32
    # SSL-ALPNet's setting (400 pixels of 1.25 mm at least) on a 256 x 256 abdomen: tens per slice
    body_slices = [c for c in result.per_slice_counts() if c]
    assert len(body_slices) >= image.shape[0] - 2
    assert 8 <= np.median(body_slices) <= 60 and max(body_slices) <= 120
    assert 100 <= result.count <= 3000
    # ids are 1..N without gaps; air and padding are never a class
    ids = np.unique(result.labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
    assert not result.labels[~result.foreground].any()
    assert not result.labels[:, :3, :3].any() and not result.labels[:, -3:, -3:].any()  # corners: air
    # the body is most of the bright voxels, and no more than the image's non-dark part
    bright = image > np.percentile(image, 75)
    assert result.foreground[bright].mean() > 0.95
    assert 0.3 < result.foreground.mean() < 0.9
    # segments of neighbouring slices are linked: many supervoxels span 2+ slices, so episodes can be drawn
    spans = [len(np.unique(np.nonzero(result.labels == k)[0])) for k in range(1, result.count + 1, 7)]
    assert np.mean(np.asarray(spans) >= 2) > 0.15
    assert max(spans) >= 4


def test_supervoxels_are_deterministic_and_respect_the_minimum_size(chaos_volume, chaos_supervoxels):
    again = compute_supervoxels(chaos_volume.array, chaos_volume.geometry.spacing)
    assert np.array_equal(again.labels, chaos_supervoxels.labels)
    # a per-slice segment is at least min_size pixels before the body mask cuts it: the median is well above
    z = chaos_volume.array.shape[0] // 2
    _, sizes = np.unique(chaos_supervoxels.labels[z][chaos_supervoxels.labels[z] > 0], return_counts=True)
    assert np.median(sizes) >= 400


def test_episodes_can_be_drawn_from_computed_supervoxels(chaos_dir, tmp_path):
    dataset = FewShotDataset.open(chaos_dir)
    dataset.cases = [c.__class__(c.id, c.image, c.label, None) for c in dataset.cases]  # as if none shipped
    volumes = load_training_volumes(dataset, [2], source="supervoxels", supervoxel_cache=tmp_path)
    assert volumes[0].pseudo and volumes[0].annotation is not None
    sampler = EpisodeSampler(volumes, shots=1, seed=0)
    episode = sampler.sample()
    assert episode.support_masks.sum() >= 200 and episode.query_masks.sum() >= 200
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_the_cache_is_hit_the_second_time(chaos_volume, tmp_path):
    cache = tmp_path / "cache"
    first = cached_supervoxels(chaos_volume, cache)
    assert not first.from_cache and first.cache_path and len(list(cache.iterdir())) == 1
    second = cached_supervoxels(chaos_volume, cache)
    assert second.from_cache and np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.foreground, second.foreground) and second.parameters == first.parameters
    # other parameters or other voxels: another entry
    third = cached_supervoxels(chaos_volume, cache, SupervoxelParameters(min_area_mm2=300.0))
    assert not third.from_cache and third.count > first.count
    changed = Volume(chaos_volume.array.copy(), chaos_volume.geometry)
    changed.array[0, 0, 0] += 1
    assert not cached_supervoxels(changed, cache).from_cache
    assert len(list(cache.iterdir())) == 3
    # a damaged entry is computed again, not trusted
    path = first.cache_path
    with open(path, "wb") as f:
        f.write(b"not an npz")
    again = cached_supervoxels(chaos_volume, cache)
    assert not again.from_cache and np.array_equal(again.labels, first.labels)
    assert cached_supervoxels(chaos_volume, cache).from_cache


def test_progress_per_slice_and_cancel(chaos_volume):
    seen = []
    compute_supervoxels(chaos_volume.array[:4], chaos_volume.geometry.spacing, progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4, 5] and seen[-1].total == 5
    token = CancelToken()

    def cancel_at_second(p):
        if p.done == 2:
            token.cancel()

    with pytest.raises(JobCancelled):
        compute_supervoxels(
            chaos_volume.array, chaos_volume.geometry.spacing, progress=cancel_at_second, cancel=token
        )


def test_ct_padding_and_air_are_outside_the_body():
    """A CT-like volume: padding -3024 outside the field of view, air -1000, a body of soft tissue with a
    dark (lung-like) hole and a bright organ: the body is the disc, holes filled; padding and air have 0."""
    rng = np.random.default_rng(0)
    z, h, w = 6, 128, 128
    yy, xx = np.mgrid[:h, :w]
    image = np.full((z, h, w), -1000.0) + rng.normal(0, 10, (z, h, w))
    image[:, (yy - 64) ** 2 + (xx - 64) ** 2 > 62**2] = -3024  # outside the scanner's field of view
    body = (yy - 64) ** 2 / 40**2 + (xx - 64) ** 2 / 50**2 <= 1
    image[:, body] = 40 + rng.normal(0, 10, (z, body.sum()))
    lung = (yy - 60) ** 2 + (xx - 45) ** 2 <= 12**2
    image[:, lung] = -800
    image[:, (yy - 70) ** 2 + (xx - 80) ** 2 <= 15**2] = 200
    mask = foreground_mask(image)
    # the body, the lung (a hole inside it) filled; at most a noisy air pixel touching it comes along
    assert mask[:, body].all() and (mask & ~body).sum() <= 0.002 * mask.sum()
    assert not mask[:, (yy - 64) ** 2 + (xx - 64) ** 2 > 55**2].any()
    result = compute_supervoxels(image.astype(np.float32), (1.0, 1.0, 2.0))
    assert result.labels[:, body].all() and (result.labels[:, ~body] > 0).sum() <= 0.002 * mask.sum()
    assert result.count >= 2  # the bright organ is not lumped with the rest


def test_empty_and_constant_volumes_give_no_supervoxels():
    for image in (np.zeros((3, 32, 32), np.float32), np.full((3, 32, 32), 7.0, np.float32)):
        result = compute_supervoxels(image)
        assert result.count == 0 and not result.foreground.any()


def test_saved_supervoxels_lie_on_the_image_grid(chaos_volume, chaos_supervoxels, tmp_path):
    out = save_supervoxels(chaos_supervoxels, chaos_volume.geometry, tmp_path / "sv.nii.gz", source="image_2")
    image = sitk.ReadImage(str(out))
    assert Geometry.from_image(image).matches(chaos_volume.geometry)
    assert np.array_equal(sitk.GetArrayFromImage(image), chaos_supervoxels.labels)
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["supervoxels"] == chaos_supervoxels.count
    assert SupervoxelParameters.from_dict(sidecar["parameters"]) == chaos_supervoxels.parameters
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sv.nii.gz", "sv.supervoxels.json"]


def test_saved_supervoxels_open_as_a_label_map_on_the_image(chaos_volume, chaos_supervoxels, tmp_path):
    """The application (File > Open mask, the wizard) reads them though they hold hundreds of labels."""
    assert chaos_supervoxels.count > MAX_PLAUSIBLE_LABELS  # more than a hand-made label map holds
    out = save_supervoxels(chaos_supervoxels, chaos_volume.geometry, tmp_path / "sv.nii.gz")
    label_map = LabelMap.load(out, like=chaos_volume.geometry)
    assert np.array_equal(label_map.array, chaos_supervoxels.labels)
    sidecar_path(out).unlink()  # without its sidecar, so many values read as an image's intensities
    with pytest.raises(MaskError, match="not a label map"):
        LabelMap.load(out, like=chaos_volume.geometry)


def test_the_cache_stays_under_its_size_limit_dropping_the_least_recently_used(tmp_path):
    import os

    for i, name in enumerate(["old", "used", "new"]):
        (tmp_path / f"{name}.npz").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"{name}.npz", (1000 + i, 1000 + i))
    os.utime(tmp_path / "used.npz", (5000, 5000))  # read from the cache since: most recently used
    assert trim_cache(tmp_path, limit=2500) == 1
    assert sorted(p.stem for p in tmp_path.glob("*.npz")) == ["new", "used"]
    assert trim_cache(tmp_path, limit=10, keep=tmp_path / "new.npz") == 1  # the entry just written stays
    assert [p.stem for p in tmp_path.glob("*.npz")] == ["new"]


def test_prepare_fills_the_cache_for_the_volumes_that_need_it(chaos_dir, tmp_path):
    dataset = FewShotDataset.open(chaos_dir)
    dataset.cases = [
        c.__class__(c.id, c.image, c.label if c.id == 1 else None, None) for c in dataset.cases[:3]
    ]
    assert volumes_needing_supervoxels(dataset, None, "labels") == []
    assert volumes_needing_supervoxels(dataset, None, "mixed") == [2, 3]
    assert volumes_needing_supervoxels(dataset, [1, 2], "supervoxels") == [1, 2]
    seen = []
    assert prepare_supervoxels(dataset, [2], tmp_path, progress=seen.append) == 1
    assert seen[-1].done == 1 and "computed" in seen[-1].message
    assert prepare_supervoxels(dataset, [2], tmp_path) == 0  # the cache has it
