"""Voxel-grid geometry: size, spacing, origin and direction, as SimpleITK and DICOM define them.

Conventions:
- ``size``, ``spacing`` and ``origin`` are in ITK order ``(x, y, z)`` = (column, row, slice), millimetres;
  ``direction`` is the row-major 3 x 3 direction-cosine matrix, 9 floats (LPS patient coordinates).
- numpy arrays are ``(slice, row, column)`` = ``(z, y, x)``: ``Geometry.shape`` gives that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.errors import GeometryMismatchError

#: Tolerances for "the same grid": relative for spacing, millimetres for origin, absolute for cosines.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class Geometry:
    """The physical grid of a 3-D image."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    @property
    def shape(self) -> tuple[int, int, int]:
        """The numpy shape ``(slices, rows, columns)``."""
        return (self.size[2], self.size[1], self.size[0])

    @classmethod
    def from_image(cls, image: sitk.Image) -> Geometry:
        """The geometry of a 3-D SimpleITK image."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @classmethod
    def identity(
        cls, shape: tuple[int, int, int], spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ) -> Geometry:
        """A grid for a numpy ``shape`` (z, y, x) at the origin with identity direction."""
        z, y, x = shape
        return cls(
            size=(int(x), int(y), int(z)),
            spacing=tuple(float(s) for s in spacing),
            origin=(0.0, 0.0, 0.0),
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set spacing, origin and direction on ``image`` (whose size must match) and return it."""
        if tuple(image.GetSize()) != self.size:
            raise GeometryMismatchError(f"image size {image.GetSize()} does not match the grid {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_from_array(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image holding ``array`` (z, y, x) on this grid."""
        if tuple(array.shape) != self.shape:
            raise GeometryMismatchError(f"array shape {array.shape} does not match the grid {self.shape}")
        return self.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))

    def differences(self, other: Geometry) -> list[str]:
        """Human-readable differences from ``other``; empty when both describe the same grid."""
        diffs: list[str] = []
        if self.size != other.size:
            diffs.append(f"size {_fmt(self.size)} vs {_fmt(other.size)}")
        if not np.allclose(self.spacing, other.spacing, rtol=SPACING_RTOL, atol=1e-6):
            diffs.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)} mm")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_ATOL_MM):
            diffs.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_ATOL):
            diffs.append("direction cosines differ")
        return diffs

    def matches(self, other: Geometry) -> bool:
        """True when ``other`` is the same voxel grid (within small tolerances)."""
        return not self.differences(other)

    def require_match(self, other: Geometry, what: str = "mask", of: str = "volume") -> None:
        """Raise :class:`GeometryMismatchError` naming every difference when the grids differ."""
        diffs = self.differences(other)
        if diffs:
            raise GeometryMismatchError(f"the {what} does not match the {of}'s geometry: " + "; ".join(diffs))

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            size=tuple(int(v) for v in d["size"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
        )

    def index_to_mm(self, index_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
        """Physical position (LPS, mm) of a voxel given as ``(slice, row, column)``."""
        z, y, x = index_zyx
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        p = np.asarray(self.origin) + d @ (np.asarray([x, y, z], dtype=float) * np.asarray(self.spacing))
        return tuple(float(v) for v in p)


def _fmt(values: tuple) -> str:
    return "(" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + ")"
