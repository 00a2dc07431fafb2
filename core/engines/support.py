"""Support examples: intensity normalisation and the choice of support slices.

Shared by the volume-level job (``segment``, the GUI) and the evaluation protocol, so that both feed an
engine the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sd_fsmis.core.engines.base import SupportExample
from sd_fsmis.core.errors import MaskError

#: The protocol's support fractions: the middles of three equal chunks of the labelled slices.
THREE_CHUNK_FRACTIONS = (1 / 6, 1 / 2, 5 / 6)


def normalize_intensities(volume: np.ndarray) -> np.ndarray:
    """Min-max over the whole volume to [0, 1] as float32 (the method's preprocessing).

    A constant volume maps to zeros. NaNs (possible in float NIfTI) are treated as the minimum.
    """
    array = np.asarray(volume, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, dtype=np.float32)
    lo = float(array[finite].min())
    hi = float(array[finite].max())
    out = np.where(finite, array, lo) - lo
    if hi > lo:
        out /= hi - lo
    else:
        out[:] = 0.0
    return out.astype(np.float32, copy=False)


def labelled_slices(mask: np.ndarray, min_pixels: int = 1) -> list[int]:
    """Indices of the slices (first axis) of a binary mask ``[Z, H, W]`` with at least ``min_pixels`` set."""
    counts = np.asarray(mask, dtype=bool).reshape(mask.shape[0], -1).sum(axis=1)
    return [int(i) for i in np.flatnonzero(counts >= min_pixels)]


def chunk_middle_slices(labelled: Sequence[int], n_chunks: int = 3) -> list[int]:
    """The slice at the middle of each of ``n_chunks`` equal chunks of ``labelled`` (1/6, 1/2, 5/6 for 3)."""
    n = len(labelled)
    if n == 0:
        raise MaskError("the mask holds no slice with the label")
    return [int(labelled[min(n - 1, int((i + 0.5) / n_chunks * n))]) for i in range(n_chunks)]


def default_support_slice(mask: np.ndarray) -> int:
    """The middle one of the slices that hold the label (the default 1-shot support)."""
    return chunk_middle_slices(labelled_slices(mask), 1)[0]


def relative_position(slice_index: int, labelled: Sequence[int]) -> float:
    """Where ``slice_index`` sits in the labelled range, 0 at its first slice, 1 at its last."""
    if not labelled:
        return 0.5
    lo, hi = min(labelled), max(labelled)
    return 0.5 if hi == lo else float(np.clip((slice_index - lo) / (hi - lo), 0.0, 1.0))


def make_support_examples(
    normalized_volume: np.ndarray,
    mask: np.ndarray,
    slices: Sequence[int],
    *,
    from_query: bool = False,
    source: str = "",
    label_name: str = "the label",
    spacing_yx: tuple[float, float] = (1.0, 1.0),
) -> list[SupportExample]:
    """Support examples from slices of a normalised volume ``[Z, H, W]`` and its binary mask.

    Raises :class:`MaskError` when a slice is out of range or does not hold the label.
    """
    if normalized_volume.shape != mask.shape:
        raise MaskError(
            f"the support mask's shape {mask.shape} differs from its image's {normalized_volume.shape}"
        )
    mask = np.asarray(mask, dtype=bool)
    labelled = labelled_slices(mask)
    if not labelled:
        raise MaskError(f"the support mask does not contain {label_name} on any slice")
    examples = []
    for s in slices:
        s = int(s)
        if not 0 <= s < mask.shape[0]:
            raise MaskError(f"support slice {s} is outside the volume (0..{mask.shape[0] - 1})")
        if not mask[s].any():
            raise MaskError(
                f"support slice {s} does not contain {label_name} (it is on slices "
                f"{labelled[0]}..{labelled[-1]})"
            )
        examples.append(
            SupportExample(
                image=np.ascontiguousarray(normalized_volume[s], dtype=np.float32),
                mask=mask[s].copy(),
                slice_index=s,
                position=relative_position(s, labelled),
                from_query=from_query,
                source=source,
                spacing_yx=spacing_yx,
            )
        )
    return examples


def nearest_support_assignment(
    query_slices: Sequence[int], query_labelled: Sequence[int] | None, supports: Sequence[SupportExample]
) -> dict[int, list[int]]:
    """For each query slice, the nearest support (ties: the first).

    Supports that are slices of the query itself are compared by slice index (each maps to itself); others
    by relative position in the labelled range (``query_labelled``, else the range of ``query_slices``).
    """
    if supports and all(s.from_query for s in supports):
        where = np.array([s.slice_index for s in supports])
        return {int(q): [int(np.argmin(np.abs(where - q)))] for q in query_slices}
    positions = np.array([s.position for s in supports])
    out: dict[int, list[int]] = {}
    for q in query_slices:
        rel = (
            relative_position(q, query_labelled)
            if query_labelled
            else (
                0.5
                if len(query_slices) < 2
                else (q - min(query_slices)) / max(1, max(query_slices) - min(query_slices))
            )
        )
        out[int(q)] = [int(np.argmin(np.abs(positions - rel)))]
    return out
