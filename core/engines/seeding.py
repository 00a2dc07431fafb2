"""Locating supports from another study in the query: one seed slice per support, for the propagation engine.

A support slice painted on another study (another patient, "use study A's liver to segment study B", the
EP1/EP2 protocols) says what the structure looks like, not where it is in the query. Each support is
registered onto candidate query slices (SimpleITK, the classical engine's cross-subject affine: centred
initialisation, then an organ-focused stage) and its mask warped there. Each candidate is scored by how
well the query agrees with the warped structure:

- appearance contrast: the support's intensity model (:mod:`~sd_fsmis.core.engines.appearance`) applied to
  the query slice after histogram matching to the support slice (scikit-image), inside the warped mask
  minus in a 1 cm ring around it;
- mutual information between the support and the query in the neighbourhood of the structure.

The two scores are standardised over the candidates, summed and smoothed along the slices (a structure
spans several slices; a single slice that happens to match is less likely to be it), and the best
candidate becomes the seed: the warped mask, fitted to the query slice with an intensity model learned
from the query itself (the warped mask as provisional label). The propagation engine then follows it
through the query and stops where it ends, exactly as from painted slices.

Candidates: the slices the request assigns to the support (EP1's chunks), or every requested slice (every
other one when there are more than ``dense_limit``). Registrations run on a small thread pool, one
SimpleITK thread each, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from skimage.exposure import match_histograms

from sd_fsmis.core.engines import classical
from sd_fsmis.core.engines.appearance import AppearanceModel
from sd_fsmis.core.engines.base import SegmentationRequest, SupportExample
from sd_fsmis.core.engines.slice_fit import fit_slice, signed_distance
from sd_fsmis.core.errors import JobCancelled
from sd_fsmis.core.jobs import CancelToken

log = logging.getLogger(__name__)

#: with more candidate slices than this, every other one is registered
DENSE_LIMIT = 12
#: the ring around the warped structure where the appearance contrast is measured (mm)
RING_MM = 10.0
#: the neighbourhood of the structure where mutual information is measured (mm)
MI_MARGIN_MM = 10.0


@dataclass
class _Candidate:
    slice_index: int
    warped: np.ndarray
    contrast: float
    mutual_information: float


def locate_seeds(
    request: SegmentationRequest,
    settings,
    *,
    cancel: CancelToken | None = None,
    workers: int = 1,
) -> dict[int, np.ndarray]:
    """``{query slice: seed mask}``: where each support from another study is found in the query."""
    spacing_yx = (float(request.spacing_zyx[1]), float(request.spacing_zyx[2]))
    requested = request.slice_indices
    seeds: dict[int, tuple[float, np.ndarray]] = {}
    for k, support in enumerate(request.supports):
        if request.assignment is None:
            candidates = list(requested)
        else:
            candidates = [z for z in requested if k in request.assignment.get(z, [])]
        candidates = [z for z in candidates if np.ptp(request.query[z]) > 0]
        if not candidates:
            continue
        if len(candidates) > DENSE_LIMIT:
            candidates = candidates[::2]
        scored = _score_candidates(request.query, support, candidates, spacing_yx, cancel, workers)
        if not scored:
            continue
        best, score = _best(scored)
        seed = _fit_seed(request.query[best.slice_index], best.warped, spacing_yx, settings)
        if not seed.any():
            continue
        z = best.slice_index
        if z not in seeds or seeds[z][0] < score:
            seeds[z] = (score, seed)
        log.debug("support %d located on query slice %d (score %.2f)", k, z, score)
    if not seeds:
        # Nothing matched anywhere (every warp left the image): fall back on the first support warped onto
        # the middle requested slice, so that the engine still returns its best guess.
        z = requested[len(requested) // 2]
        support = request.supports[0]
        warped = _register(request.query[z], support, spacing_yx)
        if warped is None or not warped.any():
            return {}
        return {z: _fit_seed(request.query[z], warped, spacing_yx, settings)}
    return {z: mask for z, (_, mask) in seeds.items()}


def _score_candidates(
    query: np.ndarray,
    support: SupportExample,
    candidates: list[int],
    spacing_yx: tuple[float, float],
    cancel: CancelToken | None,
    workers: int,
) -> list[_Candidate]:
    model = AppearanceModel.fit([support.image], [support.mask], support.spacing_yx)

    def score(z: int) -> _Candidate | None:
        if cancel is not None and cancel.cancelled:
            return None
        fixed = classical._image2d(query[z], spacing_yx)
        moving = classical._image2d(support.image, support.spacing_yx)
        transform = classical.register_slices(
            fixed, moving, classical.CROSS_SUBJECT, moving_structure=support.mask, threads=1
        )
        warped = classical.warp_mask(support.mask, moving, fixed, transform) >= 0.5
        if warped.sum() < 4:
            return None
        matched = match_histograms(query[z], support.image)
        log_ratio = model.log_ratio(matched)
        distance = signed_distance(warped, spacing_yx)
        ring = (distance > 0) & (distance <= RING_MM)
        contrast = float(log_ratio[warped].mean() - (log_ratio[ring].mean() if ring.any() else 0.0))
        return _Candidate(z, warped, contrast, _mutual_information(fixed, moving, transform, support))

    with classical._itk_threads(1), ThreadPoolExecutor(max(1, workers), thread_name_prefix="seeding") as pool:
        results = list(pool.map(score, candidates))
    if cancel is not None and cancel.cancelled:
        raise JobCancelled("cancelled by the user")
    return [r for r in results if r is not None]


def _mutual_information(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, support: SupportExample
) -> float:
    """Mattes mutual information of the registered pair around the support's structure (higher: better)."""
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(1)
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricMovingMask(classical._structure_mask(support.mask, MI_MARGIN_MM, support.spacing_yx))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    try:
        return -float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # too few samples in the overlap
        return 0.0


def _best(scored: list[_Candidate]) -> tuple[_Candidate, float]:
    """The candidate with the highest smoothed, standardised contrast + mutual information."""
    scored = sorted(scored, key=lambda c: c.slice_index)
    contrast = _standardised(np.array([c.contrast for c in scored]))
    information = _standardised(np.array([c.mutual_information for c in scored]))
    total = contrast + information
    padded = np.pad(total, 1, mode="edge")
    smooth = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    i = int(np.argmax(smooth))
    return scored[i], float(smooth[i])


def _standardised(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def _register(
    image: np.ndarray, support: SupportExample, spacing_yx: tuple[float, float]
) -> np.ndarray | None:
    fixed = classical._image2d(image, spacing_yx)
    moving = classical._image2d(support.image, support.spacing_yx)
    with classical._itk_threads(1):
        transform = classical.register_slices(
            fixed, moving, classical.CROSS_SUBJECT, moving_structure=support.mask, threads=1
        )
    return classical.warp_mask(support.mask, moving, fixed, transform) >= 0.5


def _fit_seed(image: np.ndarray, warped: np.ndarray, spacing_yx: tuple[float, float], settings) -> np.ndarray:
    """The warped structure fitted to the query slice, with an intensity model learned from the query itself
    (the warped mask as provisional label)."""
    model = AppearanceModel.fit([image], [warped], spacing_yx, settings.appearance)
    fitted = fit_slice(
        image, model.log_ratio(image), signed_distance(warped, spacing_yx), settings.between, spacing_yx
    )
    return fitted if fitted.any() else warped
