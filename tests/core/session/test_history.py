"""Undo/redo of regions: exact restore, redo cleared by a new edit, step and memory limits, grouping."""

from __future__ import annotations

import numpy as np
import pytest

from sd_fsmis.core.session.history import DEFAULT_MAX_STEPS, History


def _edit(history: History, region, value, name="edit"):
    before = history.array[region].copy()
    history.array[region] = value
    return history.record(region, before, name)


def test_undo_redo_restore_exact_values_and_return_the_region():
    array = np.zeros((3, 8, 8), np.uint8)
    history = History(array)
    region = (slice(1, 2), slice(2, 5), slice(3, 6))
    assert _edit(history, region, 4, "brush")
    edited = array.copy()
    assert history.undo_name == "brush"
    assert history.undo() == region
    assert array.sum() == 0
    assert history.redo() == region
    assert np.array_equal(array, edited)
    assert history.undo() == region and history.undo() is None  # nothing more to undo


def test_new_edit_clears_redo_and_no_change_is_not_recorded():
    array = np.zeros((2, 4, 4), np.uint8)
    history = History(array)
    _edit(history, (slice(0, 1), slice(0, 2), slice(0, 2)), 1)
    _edit(history, (slice(1, 2), slice(0, 2), slice(0, 2)), 2)
    history.undo()
    assert history.can_redo
    _edit(history, (slice(0, 1), slice(2, 4), slice(2, 4)), 3)
    assert not history.can_redo
    assert not _edit(history, (slice(0, 1), slice(2, 4), slice(2, 4)), 3)  # same values: no step
    assert history.undo_count == 2


def test_overlapping_patches_in_a_group_undo_in_reverse():
    array = np.zeros((1, 6, 6), np.uint8)
    history = History(array)
    with history.group("stroke"):
        _edit(history, (slice(0, 1), slice(0, 4), slice(0, 4)), 1)
        _edit(history, (slice(0, 1), slice(2, 6), slice(2, 6)), 2)
        with history.group("inner"):  # nested groups join the outer step
            _edit(history, (slice(0, 1), slice(0, 1), slice(5, 6)), 3)
    after = array.copy()
    assert history.undo_count == 1 and history.undo_name == "stroke"
    region = history.undo()
    assert array.sum() == 0
    assert region == (slice(0, 1), slice(0, 6), slice(0, 6))
    history.redo()
    assert np.array_equal(array, after)
    history.begin_group("empty")
    assert not history.end_group()  # an empty group makes no step


def test_step_limit_keeps_the_newest():
    array = np.zeros((1, 1, 200), np.uint8)
    history = History(array)
    assert history.max_steps == DEFAULT_MAX_STEPS == 100
    for i in range(120):
        _edit(history, (slice(0, 1), slice(0, 1), slice(i, i + 1)), 1)
    assert history.undo_count == 100
    while history.can_undo:
        history.undo()
    assert array[0, 0, :20].all() and not array[0, 0, 20:].any()  # the 20 oldest can no longer be undone


def test_memory_cap_and_compression():
    array = np.zeros((4, 256, 256), np.uint8)
    history = History(array, max_bytes=200_000)
    rng = np.random.default_rng(0)
    for z in range(4):
        _edit(history, (slice(z, z + 1), slice(None), slice(None)), rng.integers(0, 255, (1, 256, 256)))
    assert history.nbytes <= 200_000 or history.undo_count == 1
    assert history.undo_count < 4  # incompressible noise: the oldest steps were dropped
    # a typical mask edit compresses to a small fraction of its size
    history2 = History(np.zeros((1, 512, 512), np.uint8))
    region = (slice(0, 1), slice(None), slice(None))
    before = history2.array[region].copy()
    history2.array[0, 100:300, 100:300] = 1
    history2.record(region, before)
    assert history2.nbytes < 0.05 * 2 * 512 * 512


def test_undo_during_a_group_is_refused_and_bad_regions():
    history = History(np.zeros((1, 3, 3), np.uint8))
    history.begin_group()
    with pytest.raises(RuntimeError):
        history.undo()
    history.end_group()
    with pytest.raises(ValueError):
        history.record((slice(0, 1), slice(0, 2), slice(0, 2)), np.zeros((1, 3, 3), np.uint8))


def test_changed_event():
    history = History(np.zeros((1, 2, 2), np.uint8))
    seen = []
    history.events.changed.connect(lambda: seen.append((history.can_undo, history.can_redo)))
    _edit(history, (slice(0, 1), slice(0, 1), slice(0, 1)), 1)
    history.undo()
    history.redo()
    history.clear()
    assert seen == [(True, False), (False, True), (True, False), (False, False)]
