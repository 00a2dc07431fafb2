"""Geometry: ITK order vs numpy order, comparisons, physical positions."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.core.errors import GeometryMismatchError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.volume import Volume


def _image() -> sitk.Image:
    image = sitk.Image(4, 3, 2, sitk.sitkInt16)  # x=4, y=3, z=2
    image.SetSpacing((0.7, 0.8, 5.0))
    image.SetOrigin((-10.0, 20.0, 30.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def test_from_image_and_shape_order():
    g = Geometry.from_image(_image())
    assert g.size == (4, 3, 2)
    assert g.shape == (2, 3, 4)
    assert Geometry.from_dict(g.to_dict()) == g


def test_index_to_mm_matches_simpleitk():
    image = _image()
    g = Geometry.from_image(image)
    for zyx in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:
        expected = image.TransformIndexToPhysicalPoint((zyx[2], zyx[1], zyx[0]))
        assert np.allclose(g.index_to_mm(zyx), expected)


def test_mismatch_names_every_difference():
    g = Geometry.from_image(_image())
    other = Geometry(size=(4, 3, 3), spacing=(0.7, 0.8, 4.0), origin=g.origin, direction=g.direction)
    assert not g.matches(other)
    with pytest.raises(GeometryMismatchError, match=r"size.*spacing"):
        g.require_match(other)
    nearly = Geometry(g.size, g.spacing, (g.origin[0] + 1e-5, g.origin[1], g.origin[2]), g.direction)
    assert g.matches(nearly)


def test_volume_round_trip_through_simpleitk():
    image = _image()
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = Geometry.from_image(image).image_from_array(arr)
    vol = Volume.from_sitk(image)
    assert vol.shape == (2, 3, 4)
    back = vol.to_sitk()
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetDirection() == image.GetDirection()
    with pytest.raises(ValueError):
        Volume(np.zeros((3, 3)), Geometry.identity((1, 3, 3)))
