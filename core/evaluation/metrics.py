"""Agreement between a predicted and a reference mask: Dice (3-D and per slice), HD95 and ASSD in mm.

Conventions (the same in the GUI's comparison view, ``sd-fsmis dice`` and ``sd-fsmis evaluate``):

- Dice = 2 TP / (2 TP + FP + FN) = 2 |P ∩ R| / (|P| + |R|), over the whole volume or one slice (first
  array axis).
- Both masks empty: Dice is NaN, "not applicable". Agreement on nothing says nothing about a
  segmentation, and a 1.0 there would inflate every average (an organ absent from most slices would push
  the per-slice mean towards 1). NaN is what nnU-Net and MONAI (``ignore_empty=True``) report; averages
  use ``np.nanmean`` and skip it. Callers that want the clinical-tool convention pass ``both_empty=1.0``.
  One mask empty: Dice 0.0.
- Surface distances are taken between the surface voxels of the two masks (a voxel of the mask with a
  face-neighbour outside it, the image border counting as outside: SimpleITK's LabelContour), from each
  surface voxel to the nearest surface voxel of the other mask (exact Euclidean, scipy k-d tree), in
  millimetres with the grid's (anisotropic) spacing: medpy's definition, and the same values as
  SignedMaurerDistanceMap-based code (the tests check both).
- HD95 follows medpy (``medpy.metric.binary.hd95``, the definition the few-shot literature cites): the
  larger of the two directed 95th percentiles, max(P95(d(P->R)), P95(d(R->P))). MONAI's pooled
  percentile of both directions is usually a little smaller.
- ASSD is the mean of all surface distances of both directions pooled (Heimann et al. 2009, the SLIVER07
  and CHAOS challenges, MONAI ``symmetric=True``); medpy instead averages the two directed means, which
  differs when the two surfaces have different numbers of voxels.
- Both masks empty: HD95 and ASSD are NaN (not applicable). One mask empty: they are ``inf`` (no surface
  to measure to: the worst possible value, so that it shows in a table rather than vanishing from a mean).
  :meth:`LabelComparison.to_dict` writes NaN and inf as ``null`` (strict JSON); the voxel counts beside
  them say which case it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import SimpleITK as sitk
from scipy.spatial import cKDTree

from sd_fsmis.core.errors import MaskError
from sd_fsmis.core.io.labelmap import MAX_LABEL, LabelMap, default_name
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter

#: The percentile of HD95.
HD_PERCENTILE = 95.0


class Agreement(IntEnum):
    """Values of :func:`confusion_overlay`."""

    NONE = 0
    TRUE_POSITIVE = 1
    FALSE_POSITIVE = 2
    FALSE_NEGATIVE = 3


def dice(pred: np.ndarray, ref: np.ndarray, *, both_empty: float = math.nan) -> float:
    """Dice of two bool masks of the same shape; ``both_empty`` (NaN) when neither has a voxel."""
    pred, ref = _check_pair(pred, ref)
    tp = int(np.count_nonzero(pred & ref))
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return _dice_from_counts(tp, total, both_empty)


def dice_per_slice(pred: np.ndarray, ref: np.ndarray, *, both_empty: float = math.nan) -> np.ndarray:
    """Dice of every slice (first axis) of two 3-D bool masks, float64 ``[Z]``; NaN where both are empty."""
    pred, ref = _check_pair(pred, ref)
    if pred.ndim < 2:
        raise ValueError(f"per-slice Dice needs arrays of at least 2 dimensions, got {pred.shape}")
    axes = tuple(range(1, pred.ndim))
    tp = np.count_nonzero(pred & ref, axis=axes)
    total = np.count_nonzero(pred, axis=axes) + np.count_nonzero(ref, axis=axes)
    return _dice_array(tp, total, both_empty)


def surface_distances(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_xyz: Sequence[float],
    *,
    percentile: float = HD_PERCENTILE,
) -> tuple[float, float]:
    """``(hd95_mm, assd_mm)`` between two 3-D bool masks ``(slice, row, column)``.

    ``spacing_xyz`` is the ITK-order spacing (column, row, slice) in mm, as in ``Geometry.spacing``.
    ``percentile=100`` gives the (surface) Hausdorff distance. Empty masks: see the module docstring.
    """
    pred, ref = _check_pair(pred, ref)
    if pred.ndim != 3:
        raise ValueError(f"surface distances need 3-D masks, got shape {pred.shape}")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return math.nan, math.nan
    if not has_pred or not has_ref:
        return math.inf, math.inf
    d_pr, d_rp = directed_surface_distances(pred, ref, spacing_xyz)
    hd = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
    assd = float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size))
    return hd, assd


def directed_surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm, float64) from each surface voxel of ``pred`` to ``ref``'s surface, and back.

    Both masks must be non-empty. Surfaces are extracted on the bounding box of their union only, so large
    volumes with small organs cost little.
    """
    pred, ref = _check_pair(pred, ref)
    (p_lo, p_hi), (r_lo, r_hi) = _bounding_box(pred), _bounding_box(ref)
    crop = tuple(slice(min(a, c), max(b, d)) for a, b, c, d in zip(p_lo, p_hi, r_lo, r_hi))
    spacing_zyx = np.asarray(spacing_xyz, dtype=np.float64)[::-1]
    surface_p = _surface_points_mm(pred[crop], spacing_zyx)  # [Np, 3] mm
    surface_r = _surface_points_mm(ref[crop], spacing_zyx)  # [Nr, 3] mm
    # Exact Euclidean nearest-surface distances with k-d trees over the surface points: 3x faster than
    # dense distance maps (SignedMaurerDistanceMap) of the bounding box on large organs, same values.
    d_pr = cKDTree(surface_r).query(surface_p, workers=-1)[0]
    d_rp = cKDTree(surface_p).query(surface_r, workers=-1)[0]
    return d_pr, d_rp


def confusion_overlay(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """uint8 array: 0 neither, 1 true positive, 2 false positive, 3 false negative (:class:`Agreement`)."""
    pred, ref = _check_pair(pred, ref)
    # code = pred + 2 ref: 0 neither, 1 pred only (FP), 2 ref only (FN), 3 both (TP)
    table = np.array(
        [Agreement.NONE, Agreement.FALSE_POSITIVE, Agreement.FALSE_NEGATIVE, Agreement.TRUE_POSITIVE],
        dtype=np.uint8,
    )
    code = pred.view(np.uint8) + (ref.view(np.uint8) << 1)
    return table[code]


@dataclass
class LabelComparison:
    """How a predicted label agrees with the reference's same label."""

    label: int
    name: str
    dice: float
    #: one value per slice (first axis); NaN where neither mask has the label on that slice
    dice_per_slice: list[float] = field(repr=False)
    hd95_mm: float
    assd_mm: float
    voxels_pred: int
    voxels_ref: int
    true_positives: int
    false_positives: int
    false_negatives: int
    #: voxel volume in millilitres (mm^3 / 1000)
    voxel_ml: float = 0.0

    @property
    def volume_pred_ml(self) -> float:
        return self.voxels_pred * self.voxel_ml

    @property
    def volume_ref_ml(self) -> float:
        return self.voxels_ref * self.voxel_ml

    @property
    def slices_with_label(self) -> list[int]:
        """Slices where the prediction or the reference has the label (where per-slice Dice is defined)."""
        return [z for z, d in enumerate(self.dice_per_slice) if not math.isnan(d)]

    def to_dict(self) -> dict:
        """Plain JSON types; NaN and inf become ``None`` (see the module docstring)."""
        return {
            "label": self.label,
            "name": self.name,
            "dice": _json_float(self.dice),
            "hd95_mm": _json_float(self.hd95_mm),
            "assd_mm": _json_float(self.assd_mm),
            "voxels_pred": self.voxels_pred,
            "voxels_ref": self.voxels_ref,
            "volume_pred_ml": _json_float(self.volume_pred_ml),
            "volume_ref_ml": _json_float(self.volume_ref_ml),
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "dice_per_slice": [_json_float(d) for d in self.dice_per_slice],
        }


def compare_label_maps(
    pred: LabelMap,
    ref: LabelMap,
    labels: Iterable[int] | None = None,
    *,
    surface: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[int, LabelComparison]:
    """Compare two label maps label by label: ``{label: LabelComparison}``, labels ascending.

    ``labels``: which values to compare; by default every non-zero value in either map. The maps must
    share a grid (:class:`GeometryMismatchError` otherwise). Names come from the reference's table, else
    the prediction's (the first that is not a default "Label N"). ``surface=False`` skips HD95/ASSD
    (NaN). A job: reports progress, can be cancelled.
    """
    pred.geometry.require_match(ref.geometry, what="prediction", of="reference")
    if labels is None:
        wanted = sorted(set(pred.present_labels()) | set(ref.present_labels()))
    else:
        wanted = sorted({_check_label(v) for v in labels})
    n_slices = pred.shape[0]
    reporter = ProgressReporter(n_slices + len(wanted), progress, cancel)
    counts = _confusion_per_slice(pred.array, ref.array, wanted, reporter)  # [Z, K+1, K+1]
    spacing = pred.geometry.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    result: dict[int, LabelComparison] = {}
    for i, value in enumerate(wanted, start=1):
        tp_z = counts[:, i, i]
        pred_z = counts[:, i, :].sum(axis=1)
        ref_z = counts[:, :, i].sum(axis=1)
        tp, n_pred, n_ref = int(tp_z.sum()), int(pred_z.sum()), int(ref_z.sum())
        if not surface:
            hd95 = assd = math.nan
        elif n_pred and n_ref:
            z = np.flatnonzero(pred_z + ref_z)
            zs = slice(int(z[0]), int(z[-1]) + 1)  # only the slices holding the label
            hd95, assd = surface_distances(pred.array[zs] == value, ref.array[zs] == value, spacing)
        else:
            hd95 = assd = math.nan if not (n_pred or n_ref) else math.inf
        name = _label_name(value, ref, pred)
        result[value] = LabelComparison(
            label=value,
            name=name,
            dice=_dice_from_counts(tp, n_pred + n_ref, math.nan),
            dice_per_slice=[float(d) for d in _dice_array(tp_z, pred_z + ref_z, math.nan)],
            hd95_mm=hd95,
            assd_mm=assd,
            voxels_pred=n_pred,
            voxels_ref=n_ref,
            true_positives=tp,
            false_positives=n_pred - tp,
            false_negatives=n_ref - tp,
            voxel_ml=voxel_ml,
        )
        reporter.advance(1, f"{name}: Dice {result[value].dice:.3f}")
    return result


def mean_dice(comparisons: Iterable[LabelComparison]) -> float:
    """Mean 3-D Dice over labels, skipping NaN (labels in neither mask); NaN when none is defined."""
    values = [c.dice for c in comparisons if not math.isnan(c.dice)]
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------------------------- helpers
def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"the masks differ in shape: {pred.shape} vs {ref.shape}")
    return pred.astype(bool, copy=False), ref.astype(bool, copy=False)


def _check_label(value: int) -> int:
    v = int(value)
    if v == 0:
        raise MaskError("label 0 is the background; compare labels 1 and above")
    if not 0 < v <= MAX_LABEL:
        raise MaskError(f"label {value} is outside 1..{MAX_LABEL}")
    return v


def _label_name(value: int, *maps: LabelMap) -> str:
    """The first given (non-default) name of ``value`` in ``maps``, else the default "Label N"."""
    for label_map in maps:
        label = label_map.labels.get(value)
        if label is not None and label.name != default_name(value):
            return label.name
    return default_name(value)


def _dice_from_counts(tp: int, total: int, both_empty: float) -> float:
    return float(both_empty) if total == 0 else 2.0 * tp / total


def _dice_array(tp: np.ndarray, total: np.ndarray, both_empty: float) -> np.ndarray:
    out = np.full(tp.shape, float(both_empty), dtype=np.float64)
    defined = total > 0
    out[defined] = 2.0 * tp[defined] / total[defined]
    return out


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _bounding_box(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """``([z0, y0, x0], [z1, y1, x1])`` (end exclusive) of a non-empty 3-D mask."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return lo, hi


def _surface_points_mm(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Positions ``[N, 3]`` (z, y, x, in mm from the crop's corner) of the mask's surface voxels.

    The surface is SimpleITK's LabelContour with face connectivity, on the mask padded with one voxel of
    background so that voxels on the image border count as surface (as medpy's erosion does).
    """
    image = sitk.GetImageFromArray(np.pad(mask.view(np.uint8), 1))
    contour = sitk.LabelContour(image, fullyConnected=False, backgroundValue=0)  # keep: the view needs it
    return (np.argwhere(sitk.GetArrayViewFromImage(contour)) - 1) * spacing_zyx


def _confusion_per_slice(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], reporter: ProgressReporter
) -> np.ndarray:
    """``counts[z, i, j]``: voxels of slice z with prediction class i and reference class j.

    Class 0 is "background or a label not asked for", class k is ``labels[k - 1]``. One pass over the
    volumes, one slice at a time (memory stays at a few slices).
    """
    k = len(labels) + 1
    size = max(int(pred.max(initial=0)), int(ref.max(initial=0)), *labels, 0) + 1
    lut = np.zeros(size, dtype=np.intp)
    lut[list(labels)] = np.arange(1, k)
    counts = np.zeros((pred.shape[0], k, k), dtype=np.int64)
    step = max(1, pred.shape[0] // 20)
    for z in range(pred.shape[0]):
        code = lut[pred[z]] * k + lut[ref[z]]
        counts[z] = np.bincount(code.ravel(), minlength=k * k).reshape(k, k)
        if (z + 1) % step == 0 or z + 1 == pred.shape[0]:
            reporter.advance((z + 1) - reporter.done, "counting voxels")
    return counts
