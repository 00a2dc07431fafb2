"""Support slices: normalisation, the protocol's chunk middles, refusal of empty supports."""

from __future__ import annotations

import numpy as np
import pytest

from sd_fsmis.core.engines.support import (
    chunk_middle_slices,
    default_support_slice,
    labelled_slices,
    make_support_examples,
    nearest_support_assignment,
    normalize_intensities,
)
from sd_fsmis.core.errors import MaskError


def test_normalize_intensities_min_max():
    vol = np.array([[[-1000, 0], [500, 1000]]], dtype=np.int16)
    out = normalize_intensities(vol)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.isclose(out[0, 0, 1], 0.5)
    assert not normalize_intensities(np.full((2, 2, 2), 7.0)).any()


def test_chunk_middles_are_at_one_sixth_half_five_sixths():
    labelled = list(range(10, 40))  # 30 labelled slices
    assert chunk_middle_slices(labelled, 3) == [15, 25, 35]
    assert chunk_middle_slices(labelled, 1) == [25]
    with pytest.raises(MaskError):
        chunk_middle_slices([], 3)


def test_support_examples_refuse_slices_without_the_label():
    mask = np.zeros((5, 8, 8), bool)
    mask[1:4, 2:5, 2:5] = True
    vol = normalize_intensities(np.random.default_rng(0).normal(size=(5, 8, 8)))
    assert labelled_slices(mask) == [1, 2, 3]
    assert default_support_slice(mask) == 2
    (ex,) = make_support_examples(vol, mask, [2])
    assert ex.position == 0.5 and ex.mask.sum() == 9
    with pytest.raises(MaskError, match="does not contain"):
        make_support_examples(vol, mask, [0])
    with pytest.raises(MaskError, match="outside"):
        make_support_examples(vol, mask, [9])
    with pytest.raises(MaskError, match="any slice"):
        make_support_examples(vol, np.zeros_like(mask), [2])


def test_nearest_support_assignment():
    mask = np.zeros((30, 4, 4), bool)
    mask[:, 1, 1] = True
    vol = np.zeros((30, 4, 4), np.float32)
    supports = make_support_examples(vol, mask, [5, 15, 25])
    assignment = nearest_support_assignment(range(30), list(range(30)), supports)
    assert assignment[0] == [0] and assignment[14] == [1] and assignment[29] == [2]


def test_supports_from_the_query_are_matched_by_slice_index():
    mask = np.zeros((30, 4, 4), bool)
    mask[:, 1, 1] = True
    vol = np.zeros((30, 4, 4), np.float32)
    supports = make_support_examples(vol, mask, [4, 20], from_query=True)
    assignment = nearest_support_assignment(range(30), None, supports)
    assert assignment[4] == [0] and assignment[11] == [0] and assignment[13] == [1] and assignment[29] == [1]
