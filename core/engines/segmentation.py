"""The volume-level segmentation job: a query study and annotated supports in, a label map out.

One implementation behind ``sd-fsmis segment`` and the GUI's Segment button: both build
:class:`SupportSource` objects, pick an engine (:mod:`sd_fsmis.core.engines.registry`) and call
:func:`segment_volume` with a progress callback and a cancellation token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sd_fsmis.core.engines.base import (
    SegmentationEngine,
    SegmentationRequest,
    SegmentationResult,
    SupportExample,
)
from sd_fsmis.core.engines.support import (
    default_support_slice,
    labelled_slices,
    make_support_examples,
    nearest_support_assignment,
    normalize_intensities,
)
from sd_fsmis.core.errors import MaskError
from sd_fsmis.core.io.labelmap import Label, LabelMap
from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.core.volume import Volume

log = logging.getLogger(__name__)


@dataclass
class SupportSource:
    """Annotated slices of one study used as support.

    ``mask`` is the binary mask of the structure on ``volume``'s grid ``[Z, H, W]``; ``slices`` the support
    slice indices (None: the middle one of the slices that hold the structure). ``is_query`` says the
    study is the query itself (the common GUI case), which lets engines propagate from those slices.
    """

    volume: Volume
    mask: np.ndarray
    slices: Sequence[int] | None = None
    is_query: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.shape != self.volume.shape:
            raise MaskError(
                f"the support mask's shape {self.mask.shape} differs from its volume's {self.volume.shape}"
            )

    def chosen_slices(self) -> list[int]:
        if self.slices is None or len(self.slices) == 0:
            if not self.mask.any():
                raise MaskError(f"the support mask{_of(self.name)} is empty: paint the structure first")
            return [default_support_slice(self.mask)]
        return [int(s) for s in self.slices]


@dataclass
class SegmentationOutcome:
    """What a run produced: the label map on the query's grid plus provenance."""

    label_map: LabelMap
    result: SegmentationResult
    engine: str
    shots: int
    support_slices: list[tuple[str, int]]
    query_slices: list[int]
    seconds: float
    settings: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return self.result.mask


def build_request(
    query: Volume,
    sources: Sequence[SupportSource],
    *,
    query_slices: Sequence[int] | None = None,
    assignment: str = "all",
    label_name: str = "the structure",
) -> SegmentationRequest:
    """The engine request: volumes normalised as the method prescribes, support slices validated.

    ``assignment``: "all" (every query slice uses all K supports, the K-shot setting) or "nearest" (each
    query slice uses the support nearest in relative position).
    """
    if not sources:
        raise MaskError("no support example: add at least one annotated slice as support")
    query_norm = normalize_intensities(query.array)
    supports: list[SupportExample] = []
    for source in sources:
        norm = query_norm if source.is_query else normalize_intensities(source.volume.array)
        spacing = source.volume.geometry.spacing
        supports.extend(
            make_support_examples(
                norm,
                source.mask,
                source.chosen_slices(),
                from_query=source.is_query,
                source=source.name or source.volume.metadata.source_path,
                label_name=label_name,
                spacing_yx=(spacing[1], spacing[0]),
            )
        )
    z = query.shape[0]
    if query_slices is None:
        slices = list(range(z))
    else:
        slices = sorted({int(s) for s in query_slices})
        if not slices:
            raise MaskError("the slice range to segment is empty")
        if slices[0] < 0 or slices[-1] >= z:
            raise MaskError(f"the slice range {slices[0]}..{slices[-1]} is outside the volume (0..{z - 1})")
    mapping = None
    if assignment == "nearest" and len(supports) > 1:
        mapping = nearest_support_assignment(slices, None, supports)
    elif assignment not in ("all", "nearest"):
        raise ValueError(f"unknown assignment {assignment!r}")
    spacing = query.geometry.spacing
    return SegmentationRequest(
        query=query_norm,
        supports=supports,
        slices=slices,
        assignment=mapping,
        spacing_zyx=(spacing[2], spacing[1], spacing[0]),
    )


def segment_volume(
    query: Volume,
    sources: Sequence[SupportSource],
    engine: SegmentationEngine,
    *,
    label: int = 1,
    label_name: str | None = None,
    label_colour: tuple[int, int, int] | None = None,
    query_slices: Sequence[int] | None = None,
    assignment: str = "all",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SegmentationOutcome:
    """Segment ``query`` from the annotated ``sources`` with ``engine``; a core job.

    Returns the prediction as a :class:`LabelMap` on the query's grid holding ``label`` where the
    structure was found. Raises :class:`MaskError` for unusable supports and
    :class:`~sd_fsmis.core.errors.JobCancelled` when ``cancel`` is set (nothing is changed then).
    """
    if not 1 <= int(label) <= 65535:
        raise MaskError(f"label {label} is not a label value (1..65535)")
    name = label_name or f"label {label}"
    request = build_request(query, sources, query_slices=query_slices, assignment=assignment, label_name=name)
    start = time.perf_counter()
    result = engine.segment(request, progress=progress, cancel=cancel)
    seconds = time.perf_counter() - start
    mask = np.asarray(result.mask, dtype=bool)
    if mask.shape != query.shape:
        raise RuntimeError(f"engine {engine.name} returned shape {mask.shape} for a {query.shape} query")
    dtype = np.uint8 if label <= 255 else np.uint16
    array = np.zeros(query.shape, dtype=dtype)
    array[mask] = label
    entry = Label.default(label, name)
    if label_colour is not None:
        entry = Label(value=label, name=name, colour=tuple(label_colour))
    label_map = LabelMap(array, query.geometry, {label: entry})
    supports = [(s.source, s.slice_index) for s in request.supports]
    log.info(
        "segmented %s with %s, %d-shot, %d slices in %.2f s (%d voxels)",
        query.metadata.source_path or "query",
        engine.name,
        len(request.supports),
        len(request.slice_indices),
        seconds,
        int(mask.sum()),
    )
    return SegmentationOutcome(
        label_map=label_map,
        result=result,
        engine=engine.name,
        shots=len(request.supports),
        support_slices=supports,
        query_slices=request.slice_indices,
        seconds=seconds,
        settings={"assignment": assignment, "label": label, "label_name": name, **_grid_note(query)},
    )


def _grid_note(query: Volume) -> dict:
    """The run's record of a query resampled to a regular grid (irregular DICOM slices)."""
    plan = query.metadata.regularization
    return {"grid": plan.note} if plan is not None else {}


def support_mask_for_label(label_map: LabelMap, label: int, source_name: str = "") -> np.ndarray:
    """The binary mask of ``label``; :class:`MaskError` when the label is not painted anywhere."""
    mask = label_map.binary(label)
    if not mask.any():
        present = label_map.present_labels()
        hint = f" (it holds {', '.join(map(str, present))})" if present else " (it is empty)"
        raise MaskError(f"the support mask{_of(source_name)} does not contain label {label}{hint}")
    return mask


def labelled_range(mask: np.ndarray) -> tuple[int, int] | None:
    """First and last slice holding the structure, or None."""
    slices = labelled_slices(mask)
    return (slices[0], slices[-1]) if slices else None


def _of(name: str) -> str:
    return f" {name}" if name else ""
