"""Painting on one slice of a label array: brush, eraser, flood fill.

Every operation works on a 2-D numpy *view* ``plane`` ``(row, column)`` of a 3-D label array ``(z, y, x)``
(:func:`plane_view`: axial ``array[z]``, coronal ``array[:, y, :]``, sagittal ``array[:, :, x]``), changes it
in place and returns the :class:`Box` it touched (None when it touched nothing), so that the view redraws
and the undo history stores only that region. A dab touches only its bounding box: painting stays fast on
512 x 512 slices.

Points are ``(row, column)`` in voxel indices of the plane (floats allowed: the centre of a dab is rounded).
``radius`` is in voxels of the plane's finer axis; with ``spacing=(row_mm, column_mm)`` the brush is a
circle in millimetres (an ellipse in voxels on a coronal plane of 1.5 mm x 6 mm voxels).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Point = tuple[float, float]

#: Plane axes of a (z, y, x) array: 0 axial (rows y, columns x), 1 coronal (rows z, columns x),
#: 2 sagittal (rows z, columns y).
AXIAL, CORONAL, SAGITTAL = 0, 1, 2


@dataclass(frozen=True)
class Box:
    """A half-open rectangle ``[r0, r1) x [c0, c1)`` of a plane."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.r0, self.r1), slice(self.c0, self.c1))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.r1 - self.r0, self.c1 - self.c0)

    @property
    def empty(self) -> bool:
        return self.r1 <= self.r0 or self.c1 <= self.c0

    def union(self, other: Box | None) -> Box:
        if other is None:
            return self
        return Box(
            min(self.r0, other.r0), max(self.r1, other.r1), min(self.c0, other.c0), max(self.c1, other.c1)
        )

    def clip(self, shape: tuple[int, int]) -> Box | None:
        """This box inside a plane of ``shape``; None when it lies wholly outside."""
        box = Box(max(self.r0, 0), min(self.r1, shape[0]), max(self.c0, 0), min(self.c1, shape[1]))
        return None if box.empty else box


def union_boxes(a: Box | None, b: Box | None) -> Box | None:
    """The smallest box holding both (either may be None)."""
    if a is None:
        return b
    return a.union(b)


# ----------------------------------------------------------------------------------------- planes of 3-D
def plane_view(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D view (no copy) of ``array`` (z, y, x) at ``index`` along ``axis`` (0, 1 or 2)."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) array, got shape {array.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0 (axial), 1 (coronal) or 2 (sagittal), got {axis}")
    if not 0 <= index < array.shape[axis]:
        raise IndexError(f"slice {index} is outside 0..{array.shape[axis] - 1} along axis {axis}")
    key: list[slice | int] = [slice(None)] * 3
    key[axis] = int(index)
    return array[tuple(key)]


def box_to_region(axis: int, index: int, box: Box) -> tuple[slice, slice, slice]:
    """The 3-D region ``(z, y, x)`` slices of a plane box on slice ``index`` along ``axis``."""
    rows, cols = box.slices
    one = slice(int(index), int(index) + 1)
    if axis == 0:
        return (one, rows, cols)
    if axis == 1:
        return (rows, one, cols)
    if axis == 2:
        return (rows, cols, one)
    raise ValueError(f"axis must be 0, 1 or 2, got {axis}")


def plane_spacing(spacing_xyz: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """``(row_mm, column_mm)`` of the plane along ``axis`` from a geometry's spacing ``(x, y, z)``."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    return {0: (sy, sx), 1: (sz, sx), 2: (sz, sy)}[axis]


# ------------------------------------------------------------------------------------------- footprints
@functools.lru_cache(maxsize=256)
def _disk(radius: float, spacing: tuple[float, float]) -> np.ndarray:
    """Boolean footprint of a brush: pixels whose centre lies within ``radius`` fine-axis voxels (in mm)."""
    sr, sc = spacing
    if sr <= 0 or sc <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    fine = min(sr, sc)
    r_mm = max(float(radius), 0.0) * fine
    hr = math.floor(r_mm / sr + 1e-9)
    hc = math.floor(r_mm / sc + 1e-9)
    dr = (np.arange(-hr, hr + 1) * sr)[:, None]
    dc = (np.arange(-hc, hc + 1) * sc)[None, :]
    footprint = dr * dr + dc * dc <= r_mm * r_mm + 1e-6 * fine * fine
    footprint.setflags(write=False)
    return footprint


def brush_footprint(radius: float, spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The brush shape (read-only bool array, odd-sized, centred) for ``radius`` voxels at ``spacing``."""
    return _disk(round(float(radius), 3), (float(spacing[0]), float(spacing[1])))


def _centre(point: Point) -> tuple[int, int]:
    return math.floor(point[0] + 0.5), math.floor(point[1] + 0.5)


def _stamp_box(centres: list[tuple[int, int]], footprint: np.ndarray) -> Box:
    hr, hc = footprint.shape[0] // 2, footprint.shape[1] // 2
    rows = [c[0] for c in centres]
    cols = [c[1] for c in centres]
    return Box(min(rows) - hr, max(rows) + hr + 1, min(cols) - hc, max(cols) + hc + 1)


def _stroke_mask(
    centres: list[tuple[int, int]], footprint: np.ndarray, shape: tuple[int, int]
) -> tuple[Box, np.ndarray] | None:
    """The union of the footprint stamped at ``centres``, as (clipped box, bool mask of that box)."""
    full = _stamp_box(centres, footprint)
    box = full.clip(shape)
    if box is None:
        return None
    hr, hc = footprint.shape[0] // 2, footprint.shape[1] // 2
    if len(centres) == 1:
        r, c = centres[0]
        fr0, fc0 = box.r0 - (r - hr), box.c0 - (c - hc)
        return box, footprint[fr0 : fr0 + box.shape[0], fc0 : fc0 + box.shape[1]]
    # Stamp into a padded canvas of the unclipped box, then crop: no per-dab clipping logic.
    canvas = np.zeros(full.shape, dtype=bool)
    fh, fw = footprint.shape
    for r, c in centres:
        rr, cc = r - hr - full.r0, c - hc - full.c0
        canvas[rr : rr + fh, cc : cc + fw] |= footprint
    return box, canvas[box.r0 - full.r0 : box.r1 - full.r0, box.c0 - full.c0 : box.c1 - full.c0]


def line_centres(start: Point, end: Point, radius: float) -> list[tuple[int, int]]:
    """Dab centres from ``start`` to ``end``, close enough that the dabs leave no gap (step <= radius / 2)."""
    r0, c0 = start
    r1, c1 = end
    length = max(abs(r1 - r0), abs(c1 - c0))
    step = max(1.0, float(radius) * 0.5)
    n = max(1, math.ceil(length / step))
    centres: list[tuple[int, int]] = []
    for i in range(n + 1):
        t = i / n
        p = _centre((r0 + (r1 - r0) * t, c0 + (c1 - c0) * t))
        if not centres or centres[-1] != p:
            centres.append(p)
    return centres


# ------------------------------------------------------------------------------------------- operations
def _apply(
    plane: np.ndarray,
    box: Box,
    mask: np.ndarray,
    value: int,
    *,
    overwrite: bool,
    only_label: int | None = None,
) -> None:
    region = plane[box.slices]  # a view: writes go into the label array
    if only_label is not None:
        mask = mask & (region == only_label)
    elif not overwrite and value != 0:
        mask = mask & ((region == 0) | (region == value))
    region[mask] = value


def _check_value(plane: np.ndarray, value: int) -> int:
    value = int(value)
    if plane.ndim != 2:
        raise ValueError(f"painting works on a 2-D plane, got shape {plane.shape}")
    if not 0 <= value <= np.iinfo(plane.dtype).max:
        raise ValueError(f"label {value} does not fit a {plane.dtype} label array")
    return value


def paint_dab(
    plane: np.ndarray,
    center: Point,
    radius: float,
    value: int,
    *,
    spacing: tuple[float, float] = (1.0, 1.0),
    overwrite: bool = True,
) -> Box | None:
    """Set a filled disk of ``radius`` voxels around ``center`` to ``value``.

    ``overwrite=False`` leaves voxels of other labels alone (paints only background and ``value``).
    Returns the touched box (clipped to the plane), None when the dab lies wholly outside.
    """
    return paint_stroke(plane, center, center, radius, value, spacing=spacing, overwrite=overwrite)


def paint_stroke(
    plane: np.ndarray,
    start: Point,
    end: Point,
    radius: float,
    value: int,
    *,
    spacing: tuple[float, float] = (1.0, 1.0),
    overwrite: bool = True,
) -> Box | None:
    """Paint dabs along the segment ``start`` -> ``end`` (a fast mouse move leaves no gap)."""
    value = _check_value(plane, value)
    footprint = brush_footprint(radius, spacing)
    stamped = _stroke_mask(line_centres(start, end, radius), footprint, plane.shape)
    if stamped is None:
        return None
    box, mask = stamped
    _apply(plane, box, mask, value, overwrite=overwrite)
    return box


def erase_dab(
    plane: np.ndarray,
    center: Point,
    radius: float,
    *,
    only_label: int | None = None,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> Box | None:
    """Set a disk to background (0); with ``only_label``, only voxels of that label."""
    return erase_stroke(plane, center, center, radius, only_label=only_label, spacing=spacing)


def erase_stroke(
    plane: np.ndarray,
    start: Point,
    end: Point,
    radius: float,
    *,
    only_label: int | None = None,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> Box | None:
    """Erase along the segment ``start`` -> ``end``; with ``only_label``, only voxels of that label."""
    _check_value(plane, 0)
    footprint = brush_footprint(radius, spacing)
    stamped = _stroke_mask(line_centres(start, end, radius), footprint, plane.shape)
    if stamped is None:
        return None
    box, mask = stamped
    _apply(plane, box, mask, 0, overwrite=True, only_label=only_label)
    return box


_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def flood_fill(
    plane: np.ndarray,
    seed: Point,
    value: int,
    *,
    image: np.ndarray | None = None,
    intensity_range: tuple[float, float] | None = None,
    overwrite: bool = True,
) -> Box | None:
    """Fill the 4-connected region of voxels equal to the label at ``seed`` with ``value``.

    With ``image`` (the same plane of the image) and ``intensity_range`` ``(low, high)``, the region is
    also bounded to voxels whose intensity lies in the range (the seed must lie in it). With
    ``overwrite=False`` a seed on another label fills nothing. Returns the changed box, None if nothing
    changed (seed outside, seed already ``value``, seed outside the intensity range).
    """
    value = _check_value(plane, value)
    r, c = _centre(seed)
    if not (0 <= r < plane.shape[0] and 0 <= c < plane.shape[1]):
        return None
    old = int(plane[r, c])
    if old == value or (not overwrite and old != 0):
        return None
    candidates = plane == old
    if intensity_range is not None:
        if image is None:
            raise ValueError("an intensity range needs the image plane")
        if image.shape != plane.shape:
            raise ValueError(f"image plane {image.shape} and label plane {plane.shape} differ in shape")
        low, high = sorted(float(v) for v in intensity_range)
        candidates &= (image >= low) & (image <= high)
        if not candidates[r, c]:
            return None
    components, _ = ndimage.label(candidates, structure=_FOUR_CONNECTED)
    region_id = int(components[r, c])
    rows, cols = ndimage.find_objects(components, max_label=region_id)[region_id - 1]
    box = Box(rows.start, rows.stop, cols.start, cols.stop)
    region = plane[box.slices]
    region[components[box.slices] == region_id] = value
    return box
