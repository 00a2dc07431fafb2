"""Acquisition-geometry regularisation, as 3D Slicer does it: a series whose slices are irregular (missing
slices, uneven spacing, gantry tilt) is resampled onto a regular grid on which every acquired slice lies at
its true position.

A volume array has one slice step and one slice direction; an irregular series stacked as it comes (ITK's
reader) puts slices millimetres to centimetres away from where they were acquired, and every mask painted
or predicted on it with them. Slicer's DICOM plug-in models the acquisition with a grid transform and,
hardened, resamples the series through it; here the same is done with SimpleITK:

- the grid (:func:`plan_regular_grid`): the slices' orientation (row, column, and their normal: a tilted
  series becomes orthogonal); a slice step that puts every acquired slice on a grid plane (the largest step
  at most the smallest gap, within :func:`position_tolerance`); in-plane, the slices' extent widened by the
  tilt's shift, so that nothing is cut;
- the resampling (:func:`regularize`): a :class:`SimpleITK.DisplacementFieldTransform` maps every grid point
  to the stack as read (an acquired plane to its slice exactly, a plane between two acquired slices to the
  linear blend of both, each shifted by its slice's in-plane offset), and :func:`SimpleITK.Resample`
  interpolates linearly. Acquired slices keep their voxel values;
- the way back (:func:`mask_on_acquired_slices`): a mask on the grid is resampled (nearest neighbour) onto
  each acquired slice's own grid, for a DICOM-SEG that references the acquired images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.geometry import Geometry

#: A grid with more planes than this many times the acquired slices is not made finer than the smallest
#: gap between slices (a search for a common step stops there).
MAX_UPSAMPLING = 4
#: Finest subdivision of the smallest gap tried as the grid step.
MAX_SUBDIVISION = 64
#: Most planes a regular grid gets (a few slices far apart would otherwise ask for thousands): beyond it
#: the step is made coarser and the distance of the slices from their planes said.
MAX_PLANES = 2048


def position_tolerance(step: float) -> float:
    """How far (mm, along the normal) an acquired slice may lie from its grid plane and count as on it."""
    return max(0.01, min(0.05 * step, 0.1))


@dataclass(frozen=True)
class AcquiredSlices:
    """Where the slices of a series were acquired: one position per slice (in stack order, LPS mm), their
    common orientation (``direction``: row, column and normal as columns, row-major 9 values), pixel spacing
    and size ``(x, y)``."""

    positions: tuple[tuple[float, float, float], ...]
    direction: tuple[float, ...]
    spacing_xy: tuple[float, float]
    size_xy: tuple[int, int]

    @property
    def axes(self) -> np.ndarray:
        """``[3, 3]``: columns row direction, column direction, slice normal."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def distances(self) -> np.ndarray:
        """Each slice's position along the normal, from the first slice (mm)."""
        p = np.asarray(self.positions, dtype=float)
        return (p - p[0]) @ self.axes[:, 2]

    def offsets(self) -> np.ndarray:
        """``[n, 3]``: each slice's shift in its own plane from the first slice (a gantry tilt's), mm."""
        p = np.asarray(self.positions, dtype=float) - np.asarray(self.positions[0], dtype=float)
        normal = self.axes[:, 2]
        return p - np.outer(p @ normal, normal)

    def slice_geometry(self, index: int, thickness: float = 1.0) -> Geometry:
        """The one-slice grid of acquired slice ``index``."""
        return Geometry(
            size=(int(self.size_xy[0]), int(self.size_xy[1]), 1),
            spacing=(float(self.spacing_xy[0]), float(self.spacing_xy[1]), float(thickness)),
            origin=tuple(float(v) for v in self.positions[index]),
            direction=tuple(float(v) for v in self.direction),
        )


@dataclass(frozen=True)
class Regularization:
    """How a series acquired on irregular slices lies on the regular grid its volume was resampled to.

    ``planes[i]`` is the grid plane of acquired slice ``i``; ``max_error_mm`` the largest distance (along
    the normal) of an acquired slice from its plane: 0 up to :func:`position_tolerance`, more only when no
    step within :data:`MAX_UPSAMPLING` fits every slice (then said in ``note``).
    """

    acquired: AcquiredSlices
    grid: Geometry
    planes: tuple[int, ...]
    max_error_mm: float
    note: str

    @property
    def exact(self) -> bool:
        return self.max_error_mm <= position_tolerance(self.grid.spacing[2])


def plan_regular_grid(acquired: AcquiredSlices, what: str = "") -> Regularization:
    """The regular grid for ``acquired`` (see the module docstring); ``what`` says why it is needed."""
    d = acquired.distances()
    step, error = _grid_step(d)
    planes = tuple(int(k) for k in np.round(d / step))
    sx, sy = (float(v) for v in acquired.spacing_xy)
    width, height = (int(v) for v in acquired.size_xy)
    axes = acquired.axes
    offsets = acquired.offsets()
    a, b = offsets @ axes[:, 0], offsets @ axes[:, 1]  # in-plane shift of each slice along x and y, mm
    x0, x1 = math.floor(a.min() / sx + 1e-6), math.ceil(a.max() / sx - 1e-6)
    y0, y1 = math.floor(b.min() / sy + 1e-6), math.ceil(b.max() / sy - 1e-6)
    origin = np.asarray(acquired.positions[0], dtype=float) + x0 * sx * axes[:, 0] + y0 * sy * axes[:, 1]
    grid = Geometry(
        size=(width + x1 - x0, height + y1 - y0, planes[-1] + 1),
        spacing=(sx, sy, float(step)),
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in acquired.direction),
    )
    n = len(planes)
    where = (
        "on which every acquired slice lies at its true position"
        if error <= position_tolerance(step)
        else f"on which every acquired slice lies within {error:.2g} mm of its true position"
    )
    note = (
        f"{what + ': ' if what else ''}resampled to a regular grid of {grid.size[2]} slices "
        f"{step:.4g} mm apart ({n} acquired){' and widened for the tilt' if (x1 - x0) or (y1 - y0) else ''}, "
        f"{where} (as 3D Slicer's acquisition geometry regularisation); masks are made and saved on this grid"
    )
    return Regularization(acquired, grid, planes, float(error), note)


def _grid_step(d: np.ndarray) -> tuple[float, float]:
    """The largest slice step (at most the smallest gap) that puts every distance ``d`` on a grid plane;
    the step and the largest distance from a plane. Where none fits, the best of those tried."""
    gaps = np.diff(d)
    span = float(d[-1])
    smallest = max(float(gaps.min()), span / (MAX_PLANES - 1))
    max_planes = min(MAX_PLANES, max(MAX_UPSAMPLING * len(d), math.ceil(span / smallest) + 1))
    best: tuple[float, float] | None = None
    for m in range(1, MAX_SUBDIVISION + 1):
        trial = smallest / m
        if m > 1 and round(span / trial) + 1 > max_planes:
            break
        k = np.round(d / trial)
        step = float(np.dot(k, d) / np.dot(k, k))  # least squares: d ~ k * step
        error = float(np.max(np.abs(d - np.round(d / step) * step)))
        if error <= position_tolerance(step):
            return step, error
        if best is None or error < best[1] - 1e-9:
            best = (step, error)
    assert best is not None
    return best


def regularize(image: sitk.Image, regularization: Regularization) -> sitk.Image:
    """Resample ``image`` (the series stacked as read, slice ``i`` = acquired slice ``i``) onto the grid.

    Scalar or vector pixels; integer pixels stay integer (linear interpolation, rounded). Grid points
    outside every acquired slice (the corners a tilt adds) get the image's lowest value (air in CT).
    """
    if image.GetNumberOfComponentsPerPixel() > 1:
        channels = [
            regularize(sitk.VectorIndexSelectionCast(image, c), regularization)
            for c in range(image.GetNumberOfComponentsPerPixel())
        ]
        return sitk.Compose(channels)
    acquired, grid = regularization.acquired, regularization.grid
    axes = acquired.axes
    # the stack as read: slice i at origin + i * h along the normal (ITK's uniform stack)
    h = float(image.GetSpacing()[2]) or 1.0
    image.SetOrigin(tuple(float(v) for v in acquired.positions[0]))
    image.SetDirection(tuple(float(v) for v in acquired.direction))
    index = np.arange(len(regularization.planes), dtype=float)
    planes = np.asarray(regularization.planes, dtype=float)
    k = np.arange(grid.size[2], dtype=float)
    u = np.interp(k, planes, index)  # the stack's (fractional) slice index of each grid plane
    lower = np.floor(u).astype(int)
    upper = np.minimum(lower + 1, len(index) - 1)
    w = (u - lower)[:, None]
    offsets = acquired.offsets()
    shift = (1 - w) * offsets[lower] + w * offsets[upper]  # in-plane offset of each grid plane
    # grid plane k lies k * step along the normal from the first slice: where is that in the stack?
    displacement = (u * h - k * grid.spacing[2])[:, None] * axes[:, 2] - shift  # [planes, 3]
    field = np.broadcast_to(displacement[:, None, None, :], (grid.size[2], 2, 2, 3)).copy()
    field_image = sitk.GetImageFromArray(field, isVector=True)  # a 2 x 2 x planes field
    field_image.SetOrigin(grid.origin)
    field_image.SetDirection(grid.direction)
    field_image.SetSpacing(
        (
            grid.spacing[0] * max(grid.size[0] - 1, 1),
            grid.spacing[1] * max(grid.size[1] - 1, 1),
            grid.spacing[2],
        )
    )
    transform = sitk.DisplacementFieldTransform(field_image)
    lowest = float(sitk.GetArrayViewFromImage(image).min())
    out = sitk.Resample(
        image,
        [int(s) for s in grid.size],
        transform,
        sitk.sitkLinear,
        grid.origin,
        grid.spacing,
        grid.direction,
        lowest,
        sitk.sitkFloat32,
    )
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        return out
    rounded = sitk.GetImageFromArray(np.rint(sitk.GetArrayViewFromImage(out)).astype(_numpy_type(image)))
    rounded.CopyInformation(out)
    return rounded


def _numpy_type(image: sitk.Image) -> np.dtype:
    return sitk.GetArrayViewFromImage(image).dtype


def mask_on_acquired_slices(mask: sitk.Image, regularization: Regularization) -> np.ndarray:
    """A mask on the regular grid, resampled (nearest neighbour) onto each acquired slice's own grid:
    ``[acquired slices, rows, columns]``, for a DICOM-SEG that references the acquired images."""
    acquired = regularization.acquired
    thickness = regularization.grid.spacing[2]
    frames = []
    for i in range(len(acquired.positions)):
        target = acquired.slice_geometry(i, thickness)
        frame = sitk.Resample(
            mask,
            [int(s) for s in target.size],
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            target.origin,
            target.spacing,
            target.direction,
            0,
            mask.GetPixelID(),
        )
        frames.append(sitk.GetArrayFromImage(frame)[0])
    return np.stack(frames)


def voxels_between_acquired_slices(mask: np.ndarray, regularization: Regularization) -> int:
    """Labelled voxels of a mask ``[z, y, x]`` on grid planes that hold no acquired slice."""
    between = np.ones(mask.shape[0], dtype=bool)
    between[list(regularization.planes)] = False
    return int(np.count_nonzero(mask[between]))


def acquired_slices(
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float],
    pixel_spacing_yx: Sequence[float],
    size_xy: Sequence[int],
) -> AcquiredSlices:
    """An :class:`AcquiredSlices` from DICOM header values (ImagePositionPatient of each slice,
    ImageOrientationPatient, PixelSpacing as (row, column) spacing, Columns and Rows)."""
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    direction = np.column_stack([row, col, normal])
    return AcquiredSlices(
        positions=tuple(tuple(float(v) for v in p) for p in positions),
        direction=tuple(float(v) for v in direction.ravel()),
        spacing_xy=(float(pixel_spacing_yx[1]), float(pixel_spacing_yx[0])),
        size_xy=(int(size_xy[0]), int(size_xy[1])),
    )
