"""Episode sampling: invariants on CHAOS, the Setting 2 rule, determinism and resume state."""

from __future__ import annotations

import numpy as np
import pytest

from sd_fsmis.core.io.datasets import FewShotDataset
from sd_fsmis.core.training.augmentation import AugmentationConfig
from sd_fsmis.core.training.episodes import (
    EpisodeError,
    EpisodeSampler,
    TrainingVolume,
    excluded_slices,
    load_training_volumes,
)

KIDNEYS = [2, 3]


@pytest.fixture(scope="module")
def chaos_volumes(chaos_dir):
    dataset = FewShotDataset.open(chaos_dir)
    return load_training_volumes(dataset, dataset.ids[5:8])


def synthetic_volume() -> TrainingVolume:
    """Class 1 with 300 px on slices 2, 3, 5 and 100 px on slice 4; class 2 with 400 px on slices 0..6."""
    labels = np.zeros((8, 40, 40), dtype=np.int64)
    labels[:7, 30:40, 0:40] = 2  # 400 px
    for z, n in ((2, 300), (3, 300), (4, 100), (5, 300)):
        labels[z].reshape(-1)[:n] = 1
    image = np.random.default_rng(0).random(labels.shape, dtype=np.float32)
    return TrainingVolume(7, image, labels)


def test_windows_are_consecutive_slices_above_the_minimum():
    sampler = EpisodeSampler([synthetic_volume()], shots=1, min_pixels=200)
    assert sampler.windows[0][1] == [2]  # 2-3 only: slice 4 has 100 px
    assert sampler.windows[0][2] == [0, 1, 2, 3, 4, 5]
    two_shot = EpisodeSampler([synthetic_volume()], shots=2, min_pixels=200)
    assert 1 not in two_shot.windows[0]  # no 3 consecutive slices of class 1
    assert EpisodeSampler([synthetic_volume()], shots=1, min_pixels=50).windows[0][1] == [2, 3, 4]


def test_setting_1_never_targets_test_classes_and_setting_2_removes_their_slices():
    s1 = EpisodeSampler([synthetic_volume()], setting=1, test_classes=[2])
    assert s1.classes == [1] and s1.windows[0][1] == [2]
    with pytest.raises(EpisodeError):  # every slice holding class 1 also holds class 2
        EpisodeSampler([synthetic_volume()], setting=2, test_classes=[2])


def test_sampler_invariants_on_chaos(chaos_volumes):
    sampler = EpisodeSampler(chaos_volumes, shots=1, setting=1, test_classes=KIDNEYS, seed=3)
    by_id = {v.id: v for v in chaos_volumes}
    orders = set()
    for _ in range(150):
        ep = sampler.sample()
        vol = by_id[ep.volume_id]
        assert ep.label not in KIDNEYS and ep.label in (1, 4)
        assert ep.support_images.shape == (1, 256, 256) and ep.query_images.shape == (1, 256, 256)
        assert sorted(ep.slices) == list(range(min(ep.slices), min(ep.slices) + 2))  # consecutive
        orders.add(ep.slices[0] < ep.slices[1])
        masks = np.concatenate([ep.support_masks, ep.query_masks])
        np.testing.assert_array_equal(masks, (vol.labels[ep.slices] == ep.label).astype(np.float32))
        np.testing.assert_array_equal(ep.query_images[0], vol.image[ep.slices[-1]])
        assert (masks.reshape(2, -1).sum(axis=1) >= 200).all()
        assert ep.support_images.min() >= 0.0 and ep.support_images.max() <= 1.0
    assert orders == {True, False}  # reversed at random


@pytest.mark.parametrize("rule", ["any", "all"])
def test_setting_2_removes_every_slice_holding_test_classes(chaos_volumes, rule):
    sampler = EpisodeSampler(chaos_volumes, setting=2, test_classes=KIDNEYS, exclusion=rule, seed=0)
    for index, vol in enumerate(chaos_volumes):
        flat = vol.labels.reshape(vol.labels.shape[0], -1)
        holds = np.stack([(flat == c).any(axis=1) for c in KIDNEYS], axis=1)
        banned = holds.any(axis=1) if rule == "any" else holds.all(axis=1)
        used = sampler.slices_used(index)
        assert used and not any(banned[z] for z in used)
        np.testing.assert_array_equal(excluded_slices(vol.labels, KIDNEYS, rule), banned)
    for _ in range(50):
        ep = sampler.sample()
        vol = next(v for v in chaos_volumes if v.id == ep.volume_id)
        assert not np.isin(vol.labels[ep.slices], KIDNEYS).reshape(2, -1).all(axis=1).any()
    any_sampler = EpisodeSampler(chaos_volumes, setting=2, test_classes=KIDNEYS, exclusion="any")
    all_sampler = EpisodeSampler(chaos_volumes, setting=2, test_classes=KIDNEYS, exclusion="all")
    n_any = sum(len(any_sampler.slices_used(i)) for i in range(len(chaos_volumes)))
    n_all = sum(len(all_sampler.slices_used(i)) for i in range(len(chaos_volumes)))
    assert n_all > n_any  # ADNet's rule keeps more slices (easier)


def _episodes(sampler, n):
    return [sampler.sample() for _ in range(n)]


def test_deterministic_per_seed_and_state_restores(chaos_volumes):
    aug = AugmentationConfig()
    a = _episodes(EpisodeSampler(chaos_volumes, augmentation=aug, seed=11), 6)
    b = _episodes(EpisodeSampler(chaos_volumes, augmentation=aug, seed=11), 6)
    c = _episodes(EpisodeSampler(chaos_volumes, augmentation=aug, seed=12), 6)
    for x, y in zip(a, b, strict=True):
        assert (x.volume_id, x.label, x.slices, x.augmented) == (y.volume_id, y.label, y.slices, y.augmented)
        np.testing.assert_array_equal(x.query_images, y.query_images)
        np.testing.assert_array_equal(x.support_masks, y.support_masks)
    assert [(e.volume_id, e.slices) for e in a] != [(e.volume_id, e.slices) for e in c]
    sampler = EpisodeSampler(chaos_volumes, augmentation=aug, seed=5)
    _episodes(sampler, 3)
    state = sampler.state_dict()
    after = _episodes(sampler, 3)
    again = EpisodeSampler(chaos_volumes, augmentation=aug, seed=999)
    again.load_state_dict(state)
    for x, y in zip(after, _episodes(again, 3), strict=True):
        np.testing.assert_array_equal(x.support_images, y.support_images)


def test_augmentation_goes_to_support_or_query(chaos_volumes):
    sampler = EpisodeSampler(chaos_volumes, augmentation=AugmentationConfig(), seed=1)
    sides = {sampler.sample().augmented for _ in range(30)}
    assert sides == {"support", "query"}


def test_self_supervised_episodes_from_supervoxels(chaos_dir):
    dataset = FewShotDataset.open(chaos_dir)
    if dataset.cases[0].supervoxels is None:
        pytest.skip("no supervoxels/ in the CHAOS folder")
    volumes = load_training_volumes(dataset, dataset.ids[:1], source="supervoxels")
    sampler = EpisodeSampler(volumes, setting=2, test_classes=KIDNEYS, seed=0)
    assert len(sampler.classes) > 4  # pseudo-classes, not the 4 organs
    for _ in range(20):
        ep = sampler.sample()
        assert (ep.support_masks.sum() >= 200) and (ep.query_masks.sum() >= 200)
        assert not np.isin(volumes[0].annotation[ep.slices], KIDNEYS).any()


def test_reference_exclusion_removes_the_slices_holding_all_four_organs_on_fold_0(chaos_dir):
    from sd_fsmis.core.evaluation.folds import fold_split
    from sd_fsmis.core.io.labelmap import LabelMap

    dataset = FewShotDataset.open(chaos_dir)
    test_ids = fold_split(dataset.ids, 0, n_folds=5, shots=1).ids
    removed = {"reference": 0, "all": 0, "any": 0}
    total = 0
    for case_id in (i for i in dataset.ids if i not in test_ids):
        labels = np.asarray(LabelMap.load(dataset.case(case_id).label).array)
        total += labels.shape[0]
        for rule in removed:
            removed[rule] += int(excluded_slices(labels, KIDNEYS, rule).sum())
        # the reference's rule ignores the test classes: the same slices for either test group
        np.testing.assert_array_equal(
            excluded_slices(labels, KIDNEYS, "reference"), excluded_slices(labels, [1, 4], "reference")
        )
    # the figures of the reference's code on fold 0 (issue 19): 54 of 544; ADNet's "all" 195
    assert (total, removed["reference"], removed["all"]) == (544, 54, 195)
    assert removed["any"] > removed["all"]


def test_reference_exclusion_finds_the_organs_by_name():
    from sd_fsmis.core.training.episodes import reference_exclusion_classes

    assert reference_exclusion_classes({1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}) == [
        1,
        2,
        3,
        4,
    ]
    synapse = {1: "Spleen", 2: "Right Kidney", 3: "Left Kidney", 4: "gallbladder", 6: "Liver"}
    assert reference_exclusion_classes(synapse) == [1, 2, 3, 6]
    with pytest.raises(EpisodeError, match="no class named spleen"):
        reference_exclusion_classes({1: "liver", 2: "right kidney", 3: "left kidney"})


def test_reference_exclusion_in_the_sampler_keeps_test_classes_out_of_targets(chaos_volumes):
    sampler = EpisodeSampler(chaos_volumes, setting=2, test_classes=KIDNEYS, exclusion="reference", seed=0)
    assert sampler.classes == [1, 4]
    for index, vol in enumerate(chaos_volumes):
        flat = vol.labels.reshape(vol.labels.shape[0], -1)
        all_four = np.stack([(flat == c).any(axis=1) for c in (1, 2, 3, 4)], axis=1).all(axis=1)
        assert not any(all_four[z] for z in sampler.slices_used(index))
    any_sampler = EpisodeSampler(chaos_volumes, setting=2, test_classes=KIDNEYS, exclusion="any")
    n_reference = sum(len(sampler.slices_used(i)) for i in range(len(chaos_volumes)))
    n_any = sum(len(any_sampler.slices_used(i)) for i in range(len(chaos_volumes)))
    assert n_reference > n_any


def test_episode_minimum_every_or_largest():
    every = EpisodeSampler([synthetic_volume()], shots=1, min_pixels=250)
    largest = EpisodeSampler([synthetic_volume()], shots=1, min_pixels=250, episode_minimum="largest")
    assert every.windows[0][1] == [2]  # 300 + 300 only
    assert largest.windows[0][1] == [2, 3, 4]  # 300+300, 300+100, 100+300: the larger has 250
    assert largest.windows[0][2] == every.windows[0][2] == [0, 1, 2, 3, 4, 5]  # slice 7 lacks class 2
    assert 1 not in EpisodeSampler([synthetic_volume()], min_pixels=350, episode_minimum="largest").windows[0]
    with pytest.raises(EpisodeError, match="unknown episode minimum"):
        EpisodeSampler([synthetic_volume()], episode_minimum="smallest")


def test_episode_minimum_largest_on_chaos(chaos_volumes):
    every = EpisodeSampler(chaos_volumes, test_classes=KIDNEYS)
    largest = EpisodeSampler(chaos_volumes, test_classes=KIDNEYS, episode_minimum="largest", seed=4)
    extra = 0
    for index in range(len(chaos_volumes)):
        for label, starts in every.windows[index].items():
            assert set(starts) <= set(largest.windows[index][label])
            extra += len(set(largest.windows[index][label]) - set(starts))
    assert extra > 0  # episodes the reference draws and "every" cannot
    for _ in range(100):
        ep = largest.sample()
        counts = np.concatenate([ep.support_masks, ep.query_masks]).reshape(2, -1).sum(axis=1)
        assert counts.min() > 0 and counts.max() >= 200


def test_the_training_config_knows_the_same_rules():
    from sd_fsmis.core.training import config, episodes

    assert config.EXCLUSION_RULES == episodes.EXCLUSION_RULES
    assert config.EPISODE_MINIMUMS == episodes.EPISODE_MINIMUMS
