"""Which array axes an axial, coronal or sagittal view shows, and how they lie on the screen.

The display follows the radiological convention of 3D Slicer and ITK-SNAP, whatever the acquisition:
- axial: patient's left on the screen's right, anterior up;
- coronal: patient's left on the screen's right, superior up;
- sagittal: anterior on the screen's left, superior up.

The geometry's direction cosines (LPS) say which index axis runs along which patient axis: each index axis
is matched to the patient axis it is closest to (the permutation with the largest cosines), so identity
and flipped acquisitions (e.g. DICOM series stacked head to feet) and axial/coronal/sagittal acquisitions
all display right-side up; oblique ones are shown as their closest orthogonal plane (no resampling). An
image without patient orientation (``oriented=False``) is shown as stored, without anatomical names or
letters (:data:`UNORIENTED_TITLES`).

A view shows the 2-D plane ``array[i]`` / ``array[:, i, :]`` / ``array[:, :, i]`` of the (z, y, x) array:
rows are the smaller remaining numpy axis, columns the larger (the plane order of ``core.painting``). The
:class:`PlaneLayout` transform maps pixel coordinates (column, row) of that plane to view coordinates in
millimetres, X to the screen's right and Y to the screen's bottom, so anisotropic voxels keep their shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sd_fsmis.core.slice_numbering import patient_axes

VIEWS = ("axial", "coronal", "sagittal")

# Per view: normal patient axis; (horizontal patient axis, +1 when the screen's right is its positive LPS
# direction); (vertical patient axis, +1 when the screen's bottom is its positive LPS direction); the
# patient direction the mouse wheel moves towards (+1 = positive LPS). Patient axes: 0 L, 1 P, 2 S.
_CONVENTION: dict[str, tuple[int, tuple[int, int], tuple[int, int], int]] = {
    "axial": (2, (0, +1), (1, +1), +1),  # right = L, down = P, wheel up = superior
    "coronal": (1, (0, +1), (2, -1), -1),  # right = L, down = I, wheel up = anterior
    "sagittal": (0, (1, +1), (2, -1), +1),  # right = P, down = I, wheel up = left
}

#: Orientation letters at the (left, right, top, bottom) edges of each view.
MARKERS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}

#: View titles of an image without patient orientation (a planar NM or X-ray, a picture): shown as stored,
#: with names that claim no anatomy, and no orientation letters.
UNORIENTED_TITLES = {"axial": "Image plane", "coronal": "Rows × slices", "sagittal": "Columns × slices"}
NO_MARKERS = ("", "", "", "")


@dataclass(frozen=True)
class PlaneLayout:
    """How one view shows a (z, y, x) array.

    ``axis`` is the numpy axis normal to the plane, ``row_axis``/``col_axis`` the numpy axes along the
    plane's rows and columns; ``transform`` = ``(m11, m12, m21, m22, dx, dy)`` (QTransform order) maps
    pixel coordinates ``(column, row)`` to view millimetres ``(X right, Y down)``.
    """

    view: str
    axis: int
    row_axis: int
    col_axis: int
    transform: tuple[float, float, float, float, float, float]
    extent_mm: tuple[float, float]  # (width, height) on screen
    wheel_step: int  # +1 or -1: the index step of one wheel notch up
    markers: tuple[str, str, str, str]

    def to_plane(self, zyx: Sequence[int]) -> tuple[int, int]:
        """``(row, column)`` of a volume index in this plane."""
        return (int(zyx[self.row_axis]), int(zyx[self.col_axis]))

    def to_volume(self, index: int, row: int, col: int) -> tuple[int, int, int]:
        """The volume index ``(z, y, x)`` of plane pixel ``(row, col)`` on slice ``index``."""
        zyx = [0, 0, 0]
        zyx[self.axis] = int(index)
        zyx[self.row_axis] = int(row)
        zyx[self.col_axis] = int(col)
        return (zyx[0], zyx[1], zyx[2])

    def pixel_to_mm(self, col: float, row: float) -> tuple[float, float]:
        """View coordinates (X, Y) in mm of the plane point (column, row), pixel corners at integers."""
        m11, m12, m21, m22, dx, dy = self.transform
        return (m11 * col + m21 * row + dx, m12 * col + m22 * row + dy)


def plane_layout(
    view: str,
    shape_zyx: Sequence[int],
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
    direction: Sequence[float] | None = None,
    oriented: bool = True,
) -> PlaneLayout:
    """The :class:`PlaneLayout` of ``view`` for an array of ``shape_zyx`` on the given grid.

    ``oriented=False`` (the image has no patient orientation): the array is shown as stored (the identity
    direction), without orientation letters.
    """
    if not oriented:
        layout = plane_layout(view, shape_zyx, spacing_xyz, None)
        return PlaneLayout(**{**layout.__dict__, "markers": NO_MARKERS})
    if view not in _CONVENTION:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    normal_p, (h_p, h_dir), (v_p, v_dir), toward = _CONVENTION[view]
    axes = patient_axes(direction)

    def numpy_axis(p: int) -> tuple[int, int]:
        j, sign = axes[p]
        return 2 - j, sign

    n_axis, n_sign = numpy_axis(normal_p)
    h_axis, h_sign = numpy_axis(h_p)
    v_axis, v_sign = numpy_axis(v_p)
    spacing_np = [float(s) for s in reversed(tuple(spacing_xyz))]  # numpy order (z, y, x)
    sp_h, sp_v = spacing_np[h_axis], spacing_np[v_axis]
    n_h, n_v = int(shape_zyx[h_axis]), int(shape_zyx[v_axis])
    a_h = sp_h * h_sign * h_dir  # mm per pixel along the screen's X (negative: flipped)
    a_v = sp_v * v_sign * v_dir
    dx = 0.0 if a_h > 0 else sp_h * n_h
    dy = 0.0 if a_v > 0 else sp_v * n_v
    row_axis, col_axis = sorted((h_axis, v_axis))
    if col_axis == h_axis:  # columns run horizontally
        transform = (a_h, 0.0, 0.0, a_v, dx, dy)
    else:  # columns run vertically: the plane is shown transposed
        transform = (0.0, a_v, a_h, 0.0, dx, dy)
    return PlaneLayout(
        view=view,
        axis=n_axis,
        row_axis=row_axis,
        col_axis=col_axis,
        transform=transform,
        extent_mm=(sp_h * n_h, sp_v * n_v),
        wheel_step=n_sign * toward,
        markers=MARKERS[view],
    )
