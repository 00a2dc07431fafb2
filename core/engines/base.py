"""The interface every segmentation engine implements (SD-FSMIS, classical registration, ...).

The volume-level job (:mod:`sd_fsmis.core.engines.segmentation`) prepares a :class:`SegmentationRequest` from
studies and masks; an engine turns it into a :class:`SegmentationResult`. The GUI, ``sd-fsmis segment`` and
``sd-fsmis evaluate`` all go through this one interface, so any engine can be used and compared anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from sd_fsmis.core.jobs import CancelToken, ProgressCallback


@dataclass
class SupportExample:
    """One annotated support slice.

    ``image`` is ``[H, W]`` float32 in [0, 1], normalised over its whole volume the way the query is;
    ``mask`` is ``[H, W]`` bool, not empty.
    """

    image: np.ndarray
    mask: np.ndarray
    #: index of the slice in its own volume
    slice_index: int = 0
    #: relative position (0..1) of the slice inside the labelled range of its volume (for nearest support)
    position: float = 0.5
    #: True when the support slice is a slice of the query volume itself (enables propagation)
    from_query: bool = False
    #: where it came from, for provenance (path, series uid)
    source: str = ""
    #: in-plane pixel spacing ``(row, column)`` in mm of the support's volume (physical-space engines use it)
    spacing_yx: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.mask.shape != self.image.shape:
            raise ValueError(
                f"support image and mask must be 2-D of the same shape, got {self.image.shape} and "
                f"{self.mask.shape}"
            )


@dataclass
class SegmentationRequest:
    """What to segment: a query volume, its support examples, and which support serves which slice."""

    #: ``[Z, H, W]`` float32 in [0, 1], normalised over the whole volume
    query: np.ndarray
    supports: list[SupportExample]
    #: query slice indices to segment, ascending; the others are left empty in the result
    slices: Sequence[int] | None = None
    #: ``{query slice: [support indices]}``; None lets the engine apply its own K-shot rule (SD-FSMIS: all K
    #: supports in one bank for every slice; classical: the nearest support, or a vote of all K)
    assignment: dict[int, list[int]] | None = None
    #: voxel spacing of the query ``(z, y, x)`` in mm (engines that work in physical space use it)
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.query.ndim != 3:
            raise ValueError(f"query must be [Z, H, W], got shape {self.query.shape}")
        if not self.supports:
            raise ValueError("at least one support example is needed")

    @property
    def slice_indices(self) -> list[int]:
        return (
            list(range(self.query.shape[0])) if self.slices is None else sorted(int(s) for s in self.slices)
        )

    def checked_slices(self) -> list[int]:
        """:attr:`slice_indices`, after the checks every engine makes before working: each support mask
        holds something (MaskError) and each query slice is in the volume (ValueError)."""
        from sd_fsmis.core.errors import MaskError

        for k, support in enumerate(self.supports):
            if not np.asarray(support.mask, dtype=bool).any():
                raise MaskError(f"support {k + 1} (slice {support.slice_index}) has an empty mask")
        slices = self.slice_indices
        depth = self.query.shape[0]
        if any(not 0 <= z < depth for z in slices):
            raise ValueError(f"query slices must be in 0..{depth - 1}")
        return slices

    def supports_for(self, slice_index: int) -> list[int]:
        """Indices of the support examples that serve ``slice_index`` (all K when there is no assignment)."""
        if self.assignment is None:
            return list(range(len(self.supports)))
        return list(self.assignment[slice_index])


@dataclass
class SegmentationResult:
    """Binary mask ``[Z, H, W]`` (bool) and, when the engine has one, its soft map in [0, 1]."""

    mask: np.ndarray
    soft: np.ndarray | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


@runtime_checkable
class SegmentationEngine(Protocol):
    """A few-shot segmentation method."""

    #: short name shown to users ("classical", a model name)
    name: str

    def segment(
        self,
        request: SegmentationRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """Segment ``request.slices`` of the query; report progress per slice or batch; stop on cancel
        (raising :class:`~sd_fsmis.core.errors.JobCancelled`) between slices or batches."""
        ...
