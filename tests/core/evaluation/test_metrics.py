"""Metrics against hand-computed values, SimpleITK's own filters and a medpy-style reference."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sd_fsmis.core.errors import GeometryMismatchError, JobCancelled, MaskError
from sd_fsmis.core.evaluation.metrics import (
    Agreement,
    compare_label_maps,
    confusion_overlay,
    dice,
    dice_per_slice,
    directed_surface_distances,
    mean_dice,
    surface_distances,
)
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.labelmap import CHAOS_MR_ORGANS, LabelMap
from sd_fsmis.core.jobs import CancelToken

CHAOS_SPACING = (1.25, 1.25, 7.7)  # x, y, z in mm


@pytest.fixture(scope="module")
def chaos_pair(chaos_label_path):
    """The CHAOS label map of case 1 and a plausible "prediction": shifted, one organ eroded."""
    ref = LabelMap.load(chaos_label_path(1), labels=CHAOS_MR_ORGANS)
    moved = np.roll(ref.array, shift=(1, 2, -3), axis=(0, 1, 2))
    spleen = ndimage.binary_erosion(moved == 4, iterations=2)
    moved[(moved == 4) & ~spleen] = 0
    return LabelMap.from_array(moved, ref.geometry, ref.labels), ref


def _image(mask: np.ndarray, spacing_xyz) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    return image


def _medpy_style(pred, ref, spacing_xyz):
    """medpy.metric.binary's algorithm (erosion border, scipy EDT): (hd95, pooled assd, hausdorff)."""
    structure = ndimage.generate_binary_structure(3, 1)
    sampling = tuple(reversed(spacing_xyz))
    border_p = pred ^ ndimage.binary_erosion(pred, structure, border_value=0)
    border_r = ref ^ ndimage.binary_erosion(ref, structure, border_value=0)
    d_pr = ndimage.distance_transform_edt(~border_r, sampling=sampling)[border_p]
    d_rp = ndimage.distance_transform_edt(~border_p, sampling=sampling)[border_r]
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    return hd95, (d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size), max(d_pr.max(), d_rp.max())


def _sitk_surface_distances(pred, ref, spacing_xyz):
    """SimpleITK's recipe: LabelContour + SignedMaurerDistanceMap, sampled on the other contour."""

    def contour_and_map(mask):
        image = _image(np.pad(mask, 1), spacing_xyz)
        contour = sitk.LabelContour(image, fullyConnected=False)
        dist = sitk.SignedMaurerDistanceMap(contour, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)  # fmt: skip
        return sitk.GetArrayFromImage(contour).astype(bool), np.maximum(sitk.GetArrayFromImage(dist), 0)

    c_p, m_p = contour_and_map(pred)
    c_r, m_r = contour_and_map(ref)
    return m_r[c_p], m_p[c_r]


def _crop_to_union(pred, ref, margin: int = 2):
    """Both masks cropped to their union's bounding box plus a background margin (distances unchanged)."""
    where = np.argwhere(pred | ref)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = where.max(axis=0) + margin + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return pred[box], ref[box]


# ---------------------------------------------------------------------------------------------- Dice
def test_dice_of_two_offset_cubes_by_hand():
    pred = np.zeros((20, 20, 20), bool)
    ref = np.zeros_like(pred)
    pred[5:15, 5:15, 5:15] = True  # 1000 voxels
    ref[5:15, 5:15, 7:17] = True  # shifted 2 columns: 800 in common
    assert dice(pred, ref) == pytest.approx(2 * 800 / 2000)
    per_slice = dice_per_slice(pred, ref)
    assert np.isnan(per_slice[:5]).all() and np.isnan(per_slice[15:]).all()
    np.testing.assert_allclose(per_slice[5:15], 0.8)


def test_dice_empty_cases():
    empty = np.zeros((3, 4, 4), bool)
    full = np.ones_like(empty)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, empty, both_empty=1.0) == 1.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert dice(full, full) == 1.0
    per_slice = dice_per_slice(empty, empty)
    assert per_slice.shape == (3,) and np.isnan(per_slice).all()
    with pytest.raises(ValueError, match="shape"):
        dice(empty, np.zeros((3, 4, 5), bool))


def test_dice_per_slice_by_hand():
    pred = np.zeros((4, 3, 3), bool)
    ref = np.zeros_like(pred)
    pred[0, 0, :2] = True  # slice 0: pred 2, ref 2, 1 in common -> 0.5
    ref[0, 0, 1:] = True
    pred[1, 1, 1] = True  # slice 1: only the prediction -> 0.0
    ref[3] = True  # slice 3: only the reference -> 0.0; slice 2: neither -> NaN
    per_slice = dice_per_slice(pred, ref)
    np.testing.assert_array_equal(per_slice[[0, 1, 3]], [0.5, 0.0, 0.0])
    assert np.isnan(per_slice[2])


def test_dice_matches_sitk_label_overlap_measures(chaos_pair):
    pred, ref = chaos_pair
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(ref.to_sitk(), pred.to_sitk())
    for value in (1, 2, 3, 4):
        expected = overlap.GetDiceCoefficient(value)
        assert dice(pred.binary(value), ref.binary(value)) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------ surface distances
def _line(z0: int, z1: int) -> np.ndarray:
    mask = np.zeros((10, 3, 3), bool)
    mask[z0:z1, 1, 1] = True
    return mask


def test_surface_distances_by_hand_along_the_thick_axis():
    # two 4-voxel lines along z, offset by 2 slices of 7.7 mm: every voxel is a surface voxel;
    # each direction gives distances [15.4, 7.7, 0, 0]
    hd95, assd = surface_distances(_line(2, 6), _line(4, 8), CHAOS_SPACING)
    sorted_d = [0.0, 0.0, 7.7, 15.4]
    assert hd95 == pytest.approx(sorted_d[2] + 0.85 * (sorted_d[3] - sorted_d[2]))  # numpy's linear P95
    assert assd == pytest.approx(2 * (15.4 + 7.7) / 8)
    hausdorff, _ = surface_distances(_line(2, 6), _line(4, 8), CHAOS_SPACING, percentile=100)
    assert hausdorff == pytest.approx(15.4)
    d_pr, d_rp = directed_surface_distances(_line(2, 6), _line(4, 8), CHAOS_SPACING)
    np.testing.assert_allclose(sorted(d_pr), sorted_d)
    np.testing.assert_allclose(sorted(d_rp), sorted_d)


def test_surface_distances_use_the_in_plane_spacing():
    pred = np.moveaxis(_line(2, 6), 0, 2)  # the same lines along x: 1.25 mm steps
    ref = np.moveaxis(_line(4, 8), 0, 2)
    hd95, assd = surface_distances(pred, ref, CHAOS_SPACING)
    assert hd95 == pytest.approx(1.25 + 0.85 * 1.25)
    assert assd == pytest.approx(2 * (2.5 + 1.25) / 8)


def test_offset_cubes_hausdorff_matches_sitk():
    pred = np.zeros((30, 40, 40), bool)
    ref = np.zeros_like(pred)
    pred[5:15, 10:30, 10:30] = True
    ref[7:17, 10:30, 10:30] = True  # 2 slices further: 15.4 mm
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(_image(ref, CHAOS_SPACING), _image(pred, CHAOS_SPACING))
    assert hausdorff.GetHausdorffDistance() == pytest.approx(2 * 7.7)
    hd100, _ = surface_distances(pred, ref, CHAOS_SPACING, percentile=100)
    assert hd100 == pytest.approx(hausdorff.GetHausdorffDistance())
    hd95, assd = surface_distances(pred, ref, CHAOS_SPACING)
    expected = _medpy_style(pred, ref, CHAOS_SPACING)
    assert (hd95, assd) == pytest.approx(expected[:2], rel=1e-9)


def test_surface_distances_empty_cases():
    empty = np.zeros((4, 4, 4), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert all(math.isnan(v) for v in surface_distances(empty, empty, (1, 1, 1)))
    assert surface_distances(some, empty, (1, 1, 1)) == (math.inf, math.inf)
    assert surface_distances(empty, some, (1, 1, 1)) == (math.inf, math.inf)
    assert surface_distances(some, some, (1, 1, 1)) == (0.0, 0.0)


def test_masks_touching_the_image_border():
    pred = np.ones((4, 6, 6), bool)  # the whole image: its outer voxels are its surface
    ref = np.zeros_like(pred)
    ref[:, :, :3] = True
    hd95, assd = surface_distances(pred, ref, (1.0, 2.0, 3.0))
    assert (hd95, assd) == pytest.approx(_medpy_style(pred, ref, (1.0, 2.0, 3.0))[:2], rel=1e-9)


def test_chaos_surface_distances_match_medpy_and_sitk(chaos_pair):
    pred, ref = chaos_pair
    spacing = ref.geometry.spacing
    hausdorff = sitk.HausdorffDistanceImageFilter()
    for value in (1, 2, 3, 4):
        p, r = _crop_to_union(pred.binary(value), ref.binary(value))  # keeps the references quick
        hd95, assd = surface_distances(p, r, spacing)
        m_hd95, m_assd, _ = _medpy_style(p, r, spacing)
        assert hd95 == pytest.approx(m_hd95, rel=1e-9)
        assert assd == pytest.approx(m_assd, rel=1e-9)
        # SimpleITK's distance-map recipe gives the same distances (float32)
        s_pr, s_rp = _sitk_surface_distances(p, r, spacing)
        d_pr, d_rp = directed_surface_distances(p, r, spacing)
        np.testing.assert_allclose(np.sort(d_pr), np.sort(s_pr), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.sort(d_rp), np.sort(s_rp), rtol=1e-5, atol=1e-4)
        if value != 4:  # a pure shift: surface and solid Hausdorff distances coincide
            hausdorff.Execute(_image(r, spacing), _image(p, spacing))
            hd100, _ = surface_distances(p, r, spacing, percentile=100)
            assert hd100 == pytest.approx(hausdorff.GetHausdorffDistance(), rel=1e-6)


# -------------------------------------------------------------------------------- confusion overlay
def test_confusion_overlay_codes():
    pred = np.array([[[0, 1, 1, 0]]], bool)
    ref = np.array([[[0, 1, 0, 1]]], bool)
    overlay = confusion_overlay(pred, ref)
    assert overlay.dtype == np.uint8
    assert overlay.tolist() == [[[Agreement.NONE, Agreement.TRUE_POSITIVE, Agreement.FALSE_POSITIVE,
                                  Agreement.FALSE_NEGATIVE]]]  # fmt: skip
    assert overlay.tolist() == [[[0, 1, 2, 3]]]


# ---------------------------------------------------------------------------------- label maps
def test_compare_label_maps_on_chaos(chaos_pair):
    pred, ref = chaos_pair
    result = compare_label_maps(pred, ref)
    assert list(result) == [1, 2, 3, 4]
    assert [c.name for c in result.values()] == ["liver", "right kidney", "left kidney", "spleen"]
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(ref.to_sitk(), pred.to_sitk())
    for value, c in result.items():
        p, r = pred.binary(value), ref.binary(value)
        assert c.dice == pytest.approx(overlap.GetDiceCoefficient(value), abs=1e-12)
        np.testing.assert_array_equal(c.dice_per_slice, dice_per_slice(p, r))
        assert (c.hd95_mm, c.assd_mm) == surface_distances(p, r, ref.geometry.spacing)
        assert c.voxels_pred == p.sum() and c.voxels_ref == r.sum()
        assert c.true_positives == (p & r).sum()
        assert c.false_positives == (p & ~r).sum() and c.false_negatives == (~p & r).sum()
        overlay = confusion_overlay(p, r)
        assert (overlay == Agreement.FALSE_POSITIVE).sum() == c.false_positives
        assert c.volume_ref_ml == pytest.approx(r.sum() * 1.25 * 1.25 * 7.7 / 1000, rel=1e-6)
        assert c.slices_with_label == sorted(set(pred.slices_with(value)) | set(ref.slices_with(value)))
    assert mean_dice(result.values()) == pytest.approx(np.mean([c.dice for c in result.values()]))
    text = json.dumps([c.to_dict() for c in result.values()], allow_nan=False)
    assert json.loads(text)[0]["dice_per_slice"][0] is None  # slice 0 holds no liver: n/a


def test_compare_selected_absent_and_empty_labels(chaos_pair):
    pred, ref = chaos_pair
    result = compare_label_maps(pred, ref, labels=[2, 9])
    assert list(result) == [2, 9]
    absent = result[9]
    assert math.isnan(absent.dice) and math.isnan(absent.hd95_mm) and math.isnan(absent.assd_mm)
    assert all(math.isnan(d) for d in absent.dice_per_slice)
    assert math.isnan(mean_dice([absent]))
    assert absent.to_dict()["dice"] is None
    only_ref = compare_label_maps(LabelMap.empty(ref.geometry), ref, labels=[1])[1]
    assert only_ref.dice == 0.0 and only_ref.hd95_mm == math.inf and only_ref.assd_mm == math.inf
    assert only_ref.false_negatives == only_ref.voxels_ref > 0
    with pytest.raises(MaskError, match="background"):
        compare_label_maps(pred, ref, labels=[0])


def test_compare_refuses_another_grid(chaos_pair):
    pred, ref = chaos_pair
    moved = Geometry(ref.geometry.size, ref.geometry.spacing, (0.0, 0.0, 0.0), ref.geometry.direction)
    with pytest.raises(GeometryMismatchError, match="origin"):
        compare_label_maps(LabelMap(pred.array, moved), ref)


def test_compare_reports_progress_and_can_be_cancelled(chaos_pair):
    pred, ref = chaos_pair
    reports = []
    compare_label_maps(pred, ref, progress=reports.append)
    assert reports[-1].done == reports[-1].total == ref.shape[0] + 4
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobCancelled):
        compare_label_maps(pred, ref, cancel=token)


def test_compare_is_fast_on_a_typical_mr_volume():
    rng = np.random.default_rng(1)
    z, y, x = np.ogrid[:40, :256, :256]
    ref = np.zeros((40, 256, 256), np.uint8)
    ref[((z - 20) / 15) ** 2 + ((y - 120) / 70) ** 2 + ((x - 100) / 60) ** 2 < 1] = 1
    ref[((z - 18) / 6) ** 2 + ((y - 150) / 20) ** 2 + ((x - 200) / 15) ** 2 < 1] = 2
    pred = np.roll(ref, (1, 3, -2), axis=(0, 1, 2))
    pred[rng.random(pred.shape) > 0.999] = 1  # scattered false positives: many surface voxels
    grid = Geometry.identity(ref.shape, CHAOS_SPACING)
    start = time.perf_counter()
    result = compare_label_maps(LabelMap.from_array(pred, grid), LabelMap.from_array(ref, grid))
    assert time.perf_counter() - start < 10.0  # ~0.3 s on 2 cores; generous for loaded machines
    assert 0.5 < result[1].dice < 1.0 and result[1].hd95_mm > 0
