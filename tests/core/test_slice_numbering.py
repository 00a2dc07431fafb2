"""Slice numbering (issue 14, item 11): the same volume read as DICOM and as NIfTI shows the same anatomical
slice as slice 1, at the same position in mm, whatever order each file stores its slices in."""

from __future__ import annotations

import numpy as np
import pytest

from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.slice_numbering import slice_numbering


def test_dicom_and_nifti_show_the_same_slice_1_at_the_same_position(chaos_as_nifti_and_dicom):
    nifti, dicom = chaos_as_nifti_and_dicom
    a, b = nifti.slice_numbering(), dicom.slice_numbering()
    assert a.count == b.count == 6 and a.letter == b.letter == "S"
    assert a.reversed != b.reversed  # the files store the slices in opposite orders...
    assert not np.array_equal(nifti.array[0], dicom.array[0])
    for number in range(1, a.count + 1):  # ...and every number shows the same anatomy, at the same place
        i, j = a.index(number), b.index(number)
        np.testing.assert_array_equal(nifti.array[i], dicom.array[j])
        assert a.position_mm(i) == pytest.approx(b.position_mm(j), abs=1e-3)
        assert a.label(i) == b.label(j)
    # slice 1 is the most inferior one (the convention), and positions grow with the number
    first = a.index(1)
    assert a.position_mm(first) == min(a.positions_mm)
    assert a.label(first) == f"1 / 6 · S {a.position_mm(first):.1f} mm"
    assert np.all(np.diff([a.position_mm(a.index(n)) for n in range(1, 7)]) > 0)


def test_numbers_and_indices_round_trip_and_ranges():
    flipped = Geometry(size=(4, 3, 5), spacing=(1.0, 1.0, 2.5), origin=(0.0, 0.0, 100.0),
                       direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))  # fmt: skip
    n = slice_numbering(flipped)
    assert n.reversed and n.letter == "S"
    assert [n.number(i) for i in range(5)] == [5, 4, 3, 2, 1]
    assert all(n.index(n.number(i)) == i for i in range(5))
    assert n.indices(2, 4) == [1, 2, 3]
    assert n.range_text([0, 1]) == "slices 4–5" and n.range_text([4]) == "slice 1"
    assert n.position_text(0) == "S 100.0 mm" and n.position_text(4) == "S 90.0 mm"


def test_other_axes_and_images_without_orientation():
    g = Geometry.identity((5, 6, 7), spacing=(0.5, 0.8, 3.0))
    coronal = slice_numbering(g, axis=1)  # numpy axis 1 = ITK y = posterior in LPS
    assert coronal.letter == "P" and not coronal.reversed and coronal.count == 6
    sagittal = slice_numbering(g, axis=2)
    assert sagittal.letter == "L" and sagittal.position_mm(2) == pytest.approx(1.0)
    plain = slice_numbering(Geometry.identity((4, 2, 2), spacing=(1, 1, 2.0)), oriented=False)
    assert plain.letter == "" and plain.position_text(3) == "6.0 mm" and plain.number(0) == 1
