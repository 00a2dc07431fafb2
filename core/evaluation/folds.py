"""Which volumes and slices a protocol uses: the literature's folds (:func:`fold_split`), EP1's chunks of a
query's labelled range (:func:`ep1_chunks`), the study protocol's supports and queries
(:func:`study_layout`). The rules are in :mod:`sd_fsmis.core.evaluation.protocols`' docstring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sd_fsmis.core.engines.support import (
    THREE_CHUNK_FRACTIONS,
    chunk_middle_slices,
    labelled_slices,
)
from sd_fsmis.core.errors import UserError

N_FOLDS = 5


#: the support volume's position inside a fold (SD-FSMIS, GMRD, RPT)
SUPPORT_POSITION = 2


N_CHUNKS = len(THREE_CHUNK_FRACTIONS)


class EvaluationError(UserError):
    """An evaluation that cannot be run as asked (bad fold, unknown label, unknown protocol)."""


# ------------------------------------------------------------------------------------------ the layout
@dataclass(frozen=True)
class FoldSplit:
    """Which volumes a fold holds (sorted positions and ids), which is the support and which the queries."""

    fold: int
    positions: list[int]
    ids: list[int]
    support_ids: list[int]
    query_ids: list[int]


def fold_split(
    ids: Sequence[int],
    fold: int,
    *,
    n_folds: int = N_FOLDS,
    shots: int = 1,
    support_position: int = SUPPORT_POSITION,
    protocol: str = "this protocol",
) -> FoldSplit:
    """The volumes of ``fold`` among ``ids`` (sorted here as integers); see the module docstring."""
    ordered = sorted(int(i) for i in ids)
    n = len(ordered)
    if not 0 <= int(fold) < n_folds:
        raise EvaluationError(f"fold {fold} does not exist: folds are 0..{n_folds - 1} (or 'all')")
    if shots < 1:
        raise EvaluationError("--shots must be at least 1")
    block = n // n_folds
    size = block + shots
    if block < 1 or size > n or support_position + shots > size:
        need = volumes_needed(n_folds, shots, support_position)
        raise EvaluationError(
            f"{protocol} needs at least {need} volumes for {n_folds} folds and {shots}-shot, and the data "
            f"has {n}: a fold holds {n} // {n_folds} = {block} query volume(s) plus {shots} support "
            f"volume(s), and the support is the fold's volume at position {support_position} (after "
            f"{support_position} query volumes, as in the literature), so each fold needs {support_position} "
            "query volumes or more; with fewer volumes, use --protocol "
            "study or clinical (the supports are painted on each volume itself)"
        )
    positions = [(block * int(fold) + j) % n for j in range(size)]
    fold_ids = [ordered[p] for p in positions]
    supports = fold_ids[support_position : support_position + shots]
    queries = [i for i in fold_ids if i not in supports]
    return FoldSplit(int(fold), positions, fold_ids, supports, queries)


def volumes_needed(n_folds: int = N_FOLDS, shots: int = 1, support_position: int = SUPPORT_POSITION) -> int:
    """The fewest volumes a fold protocol can split into ``n_folds`` folds (see :func:`fold_split`)."""
    n = 1
    while True:
        block = n // n_folds
        if block >= 1 and block + shots <= n and support_position + shots <= block + shots:
            return n
        n += 1


def ep1_chunks(labelled: Sequence[int], n_chunks: int = N_CHUNKS) -> dict[int, int]:
    """``{query slice: chunk}`` for EP1: every slice of the labelled range, split as SSL-ALPNet does."""
    if not labelled:
        return {}
    lo, hi = int(min(labelled)), int(max(labelled))
    if hi == lo:
        return {lo: 0}
    width = (hi - lo) / n_chunks
    return {z: min(n_chunks - 1, max(0, int((z - lo) // width))) for z in range(lo, hi + 1)}


def study_layout(mask: np.ndarray, shots: int = 1) -> tuple[list[int], list[int], dict[int, int]]:
    """The study protocol on one volume and class: ``(support slices, query slices, {query: chunk})``.

    Supports: ``chunk_middle_slices(labelled_slices(mask), shots)``; queries: the labelled range minus the
    supports; chunk ``i`` of the range (EP1's split into ``shots`` chunks) uses support ``i``.
    """
    labelled = labelled_slices(mask)
    if not labelled:
        return [], [], {}
    chosen = chunk_middle_slices(labelled, shots)
    chunks = ep1_chunks(labelled, shots)
    queries = [z for z in sorted(chunks) if z not in set(chosen)]
    return chosen, queries, {z: chunks[z] for z in queries}


def parse_folds(text: str | int, n_folds: int = N_FOLDS) -> list[int]:
    """``"all"`` -> 0..n-1; ``"2"`` or ``"0,3"`` -> those folds; :class:`EvaluationError` otherwise."""
    if isinstance(text, int):
        text = str(text)
    text = str(text).strip().lower()
    if text == "all":
        return list(range(n_folds))
    folds = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 <= int(part) < n_folds:
            raise EvaluationError(f"fold {part!r} does not exist: folds are 0..{n_folds - 1} or 'all'")
        folds.append(int(part))
    return sorted(set(folds))
