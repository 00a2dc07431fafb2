"""Slice numbers and slice positions shown to the person: one convention for every file format.

A file stores its slices in any order: a DICOM series sorted along its normal, a NIfTI written head to feet
or feet to head. The number shown must not depend on that, or the same volume read as DICOM and as NIfTI
would show different slices as "slice 1". The convention (the one ITK-SNAP uses, which shows every image in
RAI space, and the direction in which 3D Slicer's slice offsets and DICOM's patient coordinates grow):

    slices are numbered 1..N along the patient axis the slice normal is closest to, in the direction of
    increasing LPS coordinate: axial slices from inferior (1) to superior (N), coronal slices from anterior
    to posterior, sagittal slices from the patient's right to left.

The position beside the number is the slice's patient coordinate along that axis, in millimetres (LPS, so
``"S -77.1 mm"`` for an axial slice, as 3D Slicer shows it). An image without patient orientation
(``oriented=False``) is numbered in storage order, and its position claims no anatomical direction.

Array indices (0-based, storage order) stay what every part of the program uses; this module only maps
them to what is shown (:meth:`SliceNumbering.number`) and back (:meth:`SliceNumbering.index`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sd_fsmis.core.geometry import Geometry

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

#: the letter of the positive LPS direction of each patient axis (0: L, 1: P, 2: S)
AXIS_LETTERS = ("L", "P", "S")

#: the convention in one sentence (the F1 help shows it)
CONVENTION = (
    "Slices are numbered along the patient's body, whatever the file's order: axial slice 1 is the most "
    "inferior (feet), coronal slice 1 the most anterior, sagittal slice 1 the patient's rightmost, as in "
    "ITK-SNAP; the position beside the number is the slice's patient coordinate in mm (S for axial, P for "
    "coronal, L for sagittal, as in 3D Slicer and DICOM)."
)


def patient_axes(direction: Sequence[float] | None) -> list[tuple[int, int]]:
    """For each patient axis (L, P, S): ``(ITK index axis, sign)`` of the index axis closest to it.

    ``direction`` is the row-major 3 x 3 LPS direction-cosine matrix (column ``j`` = index axis ``j``);
    the index axes are matched to the patient axes by the permutation with the largest cosines.
    """
    d = np.asarray(direction if direction is not None else IDENTITY_DIRECTION, dtype=float).reshape(3, 3)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[j], j]) for j in range(3)))
    result: list[tuple[int, int]] = [(0, 1)] * 3
    for j, p in enumerate(best):  # index axis j runs mostly along patient axis p
        result[p] = (j, 1 if d[p, j] >= 0 else -1)
    return result


@dataclass(frozen=True)
class SliceNumbering:
    """How the slices along numpy axis ``axis`` of a volume are numbered and placed (see the module)."""

    axis: int
    count: int
    #: True when array index 0 is the last slice number (the file stores the slices against the convention)
    reversed: bool
    #: the patient coordinate (mm) of each slice's centre along ``letter``'s axis, by array index
    positions_mm: tuple[float, ...]
    #: "L", "P" or "S" (the patient axis); "" for an image without patient orientation
    letter: str

    def number(self, index: int) -> int:
        """The 1-based slice number shown for array index ``index``."""
        index = int(index)
        return self.count - index if self.reversed else index + 1

    def index(self, number: int) -> int:
        """The array index of the slice shown as ``number`` (the inverse of :meth:`number`)."""
        number = int(number)
        return self.count - number if self.reversed else number - 1

    def indices(self, first_number: int, last_number: int) -> list[int]:
        """The array indices of slice numbers ``first_number..last_number`` (inclusive), ascending."""
        lo, hi = sorted((int(first_number), int(last_number)))
        return sorted(self.index(n) for n in range(lo, hi + 1))

    def position_mm(self, index: int) -> float:
        """The slice's patient coordinate (mm) along the numbering axis."""
        return self.positions_mm[int(index)]

    def position_text(self, index: int) -> str:
        """``"S -77.1 mm"`` (``"12.5 mm"`` without orientation)."""
        value = self.position_mm(index)
        text = f"{value:.1f} mm".replace("-0.0 mm", "0.0 mm")
        return f"{self.letter} {text}" if self.letter else text

    def label(self, index: int) -> str:
        """``"12 / 40 · S -77.1 mm"``: what a slice view shows."""
        return f"{self.number(index)} / {self.count} · {self.position_text(index)}"

    def range_text(self, indices: Iterable[int]) -> str:
        """``"slices 8–19"`` / ``"slice 4"`` for array indices (by the numbers shown); "" for none."""
        numbers = sorted(self.number(i) for i in indices)
        if not numbers:
            return ""
        if numbers[0] == numbers[-1]:
            return f"slice {numbers[0]}"
        return f"slices {numbers[0]}–{numbers[-1]}"


def slice_numbering(geometry: Geometry, axis: int = 0, oriented: bool = True) -> SliceNumbering:
    """The numbering of the slices along numpy ``axis`` (0: the stored slices) of a volume on ``geometry``."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (numpy order z, y, x), got {axis}")
    shape = geometry.shape
    count = int(shape[axis])
    itk_axis = 2 - axis
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    if oriented:
        patient = next(p for p, (j, _sign) in enumerate(patient_axes(geometry.direction)) if j == itk_axis)
        step = float(d[patient, itk_axis])
        is_reversed = step < 0
        letter = AXIS_LETTERS[patient]
    else:
        patient, is_reversed, letter = itk_axis, False, ""
    # the centre of each slice: the middle of the other two axes
    centre = np.asarray([(n - 1) / 2.0 for n in geometry.size], dtype=float)
    indices = np.repeat(centre[None, :], count, axis=0)
    indices[:, itk_axis] = np.arange(count)
    spacing = np.asarray(geometry.spacing, dtype=float)
    if oriented:
        points = np.asarray(geometry.origin) + (indices * spacing) @ d.T
        positions = points[:, patient]
    else:  # no patient frame: the distance along the stored axis
        positions = indices[:, itk_axis] * spacing[itk_axis]
    return SliceNumbering(
        axis=axis,
        count=count,
        reversed=is_reversed,
        positions_mm=tuple(float(p) for p in positions),
        letter=letter,
    )
