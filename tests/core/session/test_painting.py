"""Brush, eraser and flood fill on slices of a (z, y, x) label array: exact results, boxes, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sd_fsmis.core.session import painting
from sd_fsmis.core.session.painting import Box


def test_dab_radius_one_is_a_plus_and_returns_its_box():
    plane = np.zeros((7, 7), np.uint8)
    box = painting.paint_dab(plane, (3, 3), 1, 2)
    expected = np.zeros((7, 7), np.uint8)
    expected[2:5, 3] = 2
    expected[3, 2:5] = 2
    assert np.array_equal(plane, expected)
    assert box == Box(2, 5, 2, 5)


def test_dab_radius_two_and_zero():
    plane = np.zeros((9, 9), np.uint8)
    painting.paint_dab(plane, (4, 4), 2, 1)
    rows, cols = np.nonzero(plane)
    assert len(rows) == 13  # the disk x^2 + y^2 <= 4
    assert np.all((rows - 4) ** 2 + (cols - 4) ** 2 <= 4)
    plane[:] = 0
    assert painting.paint_dab(plane, (1.4, 6.6), 0, 3) == Box(1, 2, 7, 8)
    assert plane.sum() == 3 and plane[1, 7] == 3


def test_dab_is_clipped_at_the_border_and_outside_is_none():
    plane = np.zeros((10, 10), np.uint16)
    box = painting.paint_dab(plane, (0, 9), 3, 300)
    assert box == Box(0, 4, 6, 10)
    assert plane[0, 9] == 300 and plane[3, 9] == 300 and plane[0, 6] == 300
    assert painting.paint_dab(plane, (-20, -20), 3, 1) is None
    with pytest.raises(ValueError, match="does not fit"):
        painting.paint_dab(np.zeros((4, 4), np.uint8), (1, 1), 1, 256)


def test_anisotropic_spacing_makes_an_ellipse_in_voxels():
    fp = painting.brush_footprint(4, (2.0, 1.0))  # rows 2 mm, columns 1 mm: 4 mm radius
    assert fp.shape == (5, 9)
    assert fp[2].all() and fp[:, 4].all()


def test_stroke_leaves_no_gap_on_a_fast_move():
    plane = np.zeros((64, 64), np.uint8)
    box = painting.paint_stroke(plane, (5, 5), (5, 60), 2, 1)
    assert plane[5, 5:61].all()  # every column between the two points
    assert box == Box(3, 8, 3, 63)
    plane[:] = 0
    painting.paint_stroke(plane, (2, 2), (60, 40), 0, 1)  # one-voxel line: 8-connected, no gap
    rows = np.nonzero(plane.any(axis=1))[0]
    assert rows.min() == 2 and rows.max() == 60 and len(rows) == 59


def test_overwrite_off_protects_other_labels():
    plane = np.zeros((9, 9), np.uint8)
    plane[:, 4] = 7
    painting.paint_dab(plane, (4, 4), 3, 1, overwrite=False)
    assert (plane[:, 4] == 7).all()
    assert plane[4, 2] == 1
    painting.paint_dab(plane, (4, 4), 3, 1, overwrite=True)
    assert plane[4, 4] == 1


def test_eraser_all_and_only_active_label():
    plane = np.zeros((9, 9), np.uint8)
    plane[2:7, 2:7] = 1
    plane[4, 2:7] = 2
    painting.erase_dab(plane, (4, 4), 1, only_label=1)
    assert plane[4, 4] == 2 and plane[3, 4] == 0 and plane[5, 4] == 0
    box = painting.erase_stroke(plane, (4, 0), (4, 8), 0)
    assert box == Box(4, 5, 0, 9)
    assert (plane[4] == 0).all()


def test_flood_fill_is_four_connected():
    plane = np.zeros((6, 6), np.uint8)
    plane[1:4, 1:4] = 5
    plane[2, 2] = 0  # a hole, not connected to the outside background
    plane[4, 4] = 0
    box = painting.flood_fill(plane, (2, 2), 3)
    assert box == Box(2, 3, 2, 3) and plane[2, 2] == 3
    plane2 = np.zeros((5, 5), np.uint8)
    plane2[2, :] = 1
    plane2[:, 2] = 1  # a cross splits the background into 4 quadrants
    painting.flood_fill(plane2, (0, 0), 4)
    assert (plane2[:2, :2] == 4).all() and (plane2[3:, 3:] == 0).all() and (plane2[:2, 3:] == 0).all()
    assert painting.flood_fill(plane2, (0, 0), 4) is None  # already that label


def test_flood_fill_bounded_by_intensity_and_overwrite():
    plane = np.zeros((5, 8), np.uint8)
    image = np.zeros((5, 8), np.float32)
    image[:, 4:] = 100.0  # a bright right half
    box = painting.flood_fill(plane, (2, 1), 1, image=image, intensity_range=(-10, 10))
    assert box == Box(0, 5, 0, 4)
    assert (plane[:, :4] == 1).all() and (plane[:, 4:] == 0).all()
    assert painting.flood_fill(plane, (2, 6), 2, image=image, intensity_range=(0, 50)) is None
    assert painting.flood_fill(plane, (2, 1), 2, overwrite=False) is None  # seed on another label
    with pytest.raises(ValueError, match="needs the image"):
        painting.flood_fill(plane, (0, 0), 2, intensity_range=(0, 1))


def test_coronal_and_sagittal_views_write_into_the_volume():
    array = np.zeros((4, 6, 8), np.uint8)
    coronal = painting.plane_view(array, painting.CORONAL, 3)  # rows z, columns x
    box = painting.paint_dab(coronal, (2, 5), 0, 9)
    assert array[2, 3, 5] == 9 and array.sum() == 9
    assert painting.box_to_region(1, 3, box) == (slice(2, 3), slice(3, 4), slice(5, 6))
    sagittal = painting.plane_view(array, painting.SAGITTAL, 1)  # rows z, columns y
    painting.flood_fill(sagittal, (0, 0), 1)
    assert (array[:, :, 1] == 1).all() and array[:, :, 0].sum() == 0
    assert painting.plane_spacing((1.5, 1.2, 6.0), 1) == (6.0, 1.5)
    assert painting.plane_spacing((1.5, 1.2, 6.0), 2) == (6.0, 1.2)
    with pytest.raises(IndexError):
        painting.plane_view(array, 0, 4)


def test_fast_on_512_slices():
    """A dab touches only its box; a fill labels the slice once. Generous bounds for slow CI machines."""
    array = np.zeros((3, 512, 512), np.uint8)
    plane = painting.plane_view(array, 0, 1)
    painting.paint_dab(plane, (100, 100), 10, 1)  # warm the footprint cache
    n = 500
    start = time.perf_counter()
    for i in range(n):
        painting.paint_stroke(plane, (100 + i % 300, 50), (102 + i % 300, 60), 10, 1)
    per_segment = (time.perf_counter() - start) / n
    plane[:] = 0
    plane[200:300, :] = 2
    start = time.perf_counter()
    for i in range(10):
        painting.flood_fill(plane, (10, 10), 3 + i % 2)
    per_fill = (time.perf_counter() - start) / 10
    assert per_segment < 0.002, f"a brush segment took {per_segment * 1e3:.2f} ms"
    assert per_fill < 0.05, f"a fill took {per_fill * 1e3:.1f} ms"
