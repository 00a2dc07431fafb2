"""Classical few-shot segmentation by 2-D image registration: the baseline that needs no model.

For each query slice, the support slice chosen for it is registered onto it (SimpleITK: centred
initialisation, affine with Mattes mutual information over a multi-resolution pyramid, optionally a
B-spline stage) and the support mask is warped with the result (linear interpolation; the warped mask is
the soft output, thresholded at 0.5). Images are 2-D in physical units (the query's in-plane spacing).

When a support slice is a slice of the query volume itself (``SupportExample.from_query``), the mask is
propagated outward from it instead, slice by slice: each neighbour is registered onto the next slice and
the transforms are composed, so the original mask is warped once, through the whole chain. Propagation
stops where the mask vanishes (falls below ``min_area_mm2``); farther slices stay empty.

The work runs as a core job: progress per slice, cancellation between slices, and a small thread pool
over independent slices and propagation chains (the two directions of a support, and several supports,
run at once) within SimpleITK's global thread budget. SimpleITK releases the GIL while it registers, and on
2 cores two single-threaded registrations at once took half the time of one registration at a time with
2 ITK threads (24 liver slices: 5.5-6.9 s versus 11.8-13.2 s; ``bench/bench_classical.py --threads``).

Defaults (CHAOS T2 fold 0, EP1, mean Dice of the 4 organs; seconds per slice on 2 busy cores): affine at
shrink 4, 2: 0.548 (0.25 s); + organ-focused affine stage (30 mm margin): 0.573 (0.28 s, the default);
+ B-spline 4 x 4: 0.586 (0.55 s); full resolution (4, 2, 1) + organ stage: 0.589 (0.56 s).

Over 500 lines: the registration settings, the pool of registrations and the propagation chains are one
engine's parts.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sd_fsmis.core.engines.base import SegmentationRequest, SegmentationResult
from sd_fsmis.core.engines.support import nearest_support_assignment
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter

log = logging.getLogger(__name__)

ENGINE_NAME = "classical"

_INITIALIZERS = {
    "moments": sitk.CenteredTransformInitializerFilter.MOMENTS,
    "geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY,
}


@dataclass(frozen=True)
class RegistrationSettings:
    """How one 2-D registration is done. Defaults: tuned for speed and accuracy on CHAOS T2 (256 x 256).

    Distances are in millimetres (physical units), so that the same settings fit other in-plane spacings.
    """

    #: centred initialisation of the affine: "moments" (centres of mass) or "geometry" (image centres);
    #: "identity" keeps the images where they are (neighbouring slices of one volume)
    initializer: str = "moments"
    histogram_bins: int = 32
    #: fraction of the fixed image's pixels sampled (at random, with ``seed``) by the metric
    sampling_percentage: float = 0.2
    shrink_factors: tuple[int, ...] = (4, 2)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0)
    affine_iterations: int = 100
    learning_rate: float = 2.0
    min_step: float = 1e-3
    #: a second affine stage whose metric sees only the support structure dilated by this margin (mm); 0: off
    local_margin_mm: float = 0.0
    #: control points per side of the B-spline stage's mesh; 0: no B-spline stage
    bspline_mesh: int = 0
    bspline_iterations: int = 20
    bspline_shrink_factors: tuple[int, ...] = (2,)
    #: an affine whose scales leave [1 / max_scale, max_scale] or that mirrors is rejected (its stage undone)
    max_scale: float = 2.0
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.initializer not in (*_INITIALIZERS, "identity"):
            raise ValueError(f"unknown initializer {self.initializer!r}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas):
            raise ValueError("shrink_factors and smoothing_sigmas need one value per level")
        if not 0.0 < self.sampling_percentage <= 1.0:
            raise ValueError("sampling_percentage must be in (0, 1]")


#: Between two patients (or a support study and a query study): global affine, then organ-focused affine.
CROSS_SUBJECT = RegistrationSettings(local_margin_mm=30.0)
#: Between neighbouring slices of one volume (propagation): no re-centring, finer levels, organ-focused.
NEIGHBOUR = RegistrationSettings(
    initializer="identity",
    shrink_factors=(2, 1),
    smoothing_sigmas=(1.0, 0.0),
    affine_iterations=50,
    learning_rate=1.0,
    sampling_percentage=0.3,
    local_margin_mm=20.0,
    bspline_mesh=4,
)


@dataclass
class _Task:
    """One unit of work for the pool: an independent slice, or a propagation chain (sequential)."""

    kind: str  # "slice" | "chain"
    support: int
    #: query slices to produce, in processing order (a chain: outward from the support slice)
    slices: list[int]
    #: for a chain: every slice stepped through, outward (``slices`` is a subset)
    path: list[int] = field(default_factory=list)


class ClassicalEngine:
    """Few-shot segmentation by registering support slices onto query slices (no model needed)."""

    name = ENGINE_NAME
    label = "Classical (registration) — no model needed"

    def __init__(
        self,
        *,
        cross_subject: RegistrationSettings = CROSS_SUBJECT,
        neighbour: RegistrationSettings = NEIGHBOUR,
        vote: bool = False,
        threshold: float = 0.5,
        min_area_mm2: float = 20.0,
        workers: int | None = None,
    ) -> None:
        """``vote``: every slice uses all K supports (mean of the warped masks) instead of the nearest one.
        ``workers``: slices registered at once (default: SimpleITK's global thread count); each
        registration then uses ``global threads // workers`` threads, so the total stays in budget."""
        self.cross_subject = cross_subject
        self.neighbour = neighbour
        self.vote = vote
        self.threshold = threshold
        self.min_area_mm2 = min_area_mm2
        self.workers = workers

    def config(self) -> dict:
        """The engine's settings as plain JSON types (recorded beside evaluation results)."""
        return {
            "name": self.name,
            "cross_subject": asdict(self.cross_subject),
            "neighbour": asdict(self.neighbour),
            "vote": self.vote,
            "threshold": self.threshold,
            "min_area_mm2": self.min_area_mm2,
            "workers": self._budget()[0],
            "threads_per_registration": self._budget()[1],
        }

    # ------------------------------------------------------------------------------------------ the job
    def segment(
        self,
        request: SegmentationRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """Segment ``request.slices``; progress per slice; :class:`JobCancelled` between slices."""
        start = time.perf_counter()
        slices = request.checked_slices()
        uses = self._supports_per_slice(request, slices)
        tasks = self._plan(request, uses)
        soft = np.zeros(request.query.shape, dtype=np.float32)
        contributions: dict[int, list[np.ndarray]] = {z: [] for z in slices}
        reporter = ProgressReporter(len(slices), progress, cancel)
        reporter.report("registering")
        reporter.check()
        pending_per_slice = {z: len(uses[z]) for z in slices}
        self._run(request, tasks, contributions, pending_per_slice, soft, reporter, cancel)
        mask = soft >= self.threshold
        seconds = time.perf_counter() - start
        log.info("classical: %d slices in %.1f s", len(slices), seconds)
        return SegmentationResult(mask=mask, soft=soft, seconds=seconds, info={"engine": self.config()})

    # --------------------------------------------------------------------------------------- planning
    def _supports_per_slice(self, request: SegmentationRequest, slices: list[int]) -> dict[int, list[int]]:
        """Which supports serve each slice: all K (vote), the request's assignment, or the nearest."""
        k = len(request.supports)
        if self.vote:
            return {z: list(range(k)) for z in slices}
        if request.assignment is not None:
            missing = [z for z in slices if z not in request.assignment]
            if missing:
                raise ValueError(f"the assignment has no support for query slices {missing[:5]}")
            out = {z: sorted({int(i) for i in request.assignment[z]}) for z in slices}
            for z, ks in out.items():
                if not ks or any(not 0 <= i < k for i in ks):
                    raise ValueError(f"slice {z}: support indices {ks} are not in 0..{k - 1}")
            return out
        if k == 1:
            return {z: [0] for z in slices}
        return {z: list(v) for z, v in nearest_support_assignment(slices, None, request.supports).items()}

    def _plan(self, request: SegmentationRequest, uses: dict[int, list[int]]) -> list[_Task]:
        """Tasks: chains outward from each support taken from the query, single slices for the others."""
        tasks: list[_Task] = []
        by_support: dict[int, list[int]] = {}
        for z, ks in uses.items():
            for k in ks:
                by_support.setdefault(k, []).append(z)
        for k, zs in sorted(by_support.items()):
            support = request.supports[k]
            if not support.from_query:
                tasks.extend(_Task("slice", k, [z]) for z in sorted(zs))
                continue
            s = support.slice_index
            if s in zs:
                tasks.append(_Task("slice", k, [s]))
            up = sorted(z for z in zs if z > s)
            down = sorted((z for z in zs if z < s), reverse=True)
            if up:
                tasks.append(_Task("chain", k, up, list(range(s + 1, up[-1] + 1))))
            if down:
                tasks.append(_Task("chain", k, down, list(range(s - 1, down[-1] - 1, -1))))
        # Long chains first: they bound the wall time; single slices fill the gaps.
        tasks.sort(key=lambda t: -len(t.path))
        return tasks

    def _budget(self) -> tuple[int, int]:
        """(workers, SimpleITK threads per registration) within the global default thread count."""
        total = _itk_thread_budget()
        workers = max(1, min(self.workers or total, total))
        return workers, max(1, total // workers)

    # -------------------------------------------------------------------------------------- execution
    def _run(
        self,
        request: SegmentationRequest,
        tasks: list[_Task],
        contributions: dict[int, list[np.ndarray]],
        pending: dict[int, int],
        soft: np.ndarray,
        reporter: ProgressReporter,
        cancel: CancelToken | None,
    ) -> None:
        """Run the tasks in a pool; finished slices come back through a queue to this (the caller's) thread,
        which combines them, reports progress and checks for cancellation."""
        workers, threads = self._budget()
        stop = threading.Event()
        results: queue.Queue = queue.Queue()
        spacing_yx = (float(request.spacing_zyx[1]), float(request.spacing_zyx[2]))

        def should_stop() -> bool:
            return stop.is_set() or (cancel is not None and cancel.cancelled)

        def work(task: _Task) -> None:
            try:
                if task.kind == "slice":
                    for z in task.slices:
                        if should_stop():
                            return
                        results.put((z, self._register_one(request, task.support, z, spacing_yx, threads)))
                else:
                    self._propagate(request, task, spacing_yx, threads, results, should_stop)
            except BaseException as exc:  # surfaced in the caller's thread
                results.put(("error", exc))
                raise

        remaining = sum(pending.values())
        with (
            _itk_threads(threads),
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="classical") as pool,
        ):
            futures: list[Future] = [pool.submit(work, t) for t in tasks]
            try:
                while remaining > 0:
                    try:
                        z, value = results.get(timeout=0.1)
                    except queue.Empty:
                        reporter.check()
                        if all(f.done() for f in futures) and results.empty():
                            break
                        continue
                    if z == "error":
                        raise value
                    remaining -= 1
                    contributions[z].append(value)
                    pending[z] -= 1
                    if pending[z] == 0:
                        soft[z] = np.mean(contributions.pop(z), axis=0)
                        reporter.advance(1, f"slice {z}")
            except BaseException:
                stop.set()
                for f in futures:
                    f.cancel()
                raise
        # A chain that stopped early (the mask vanished) leaves its farther slices empty: they count as
        # zeros in their slice's mean, and as done for the progress.
        for z, values in contributions.items():
            if values:
                soft[z] = np.sum(values, axis=0) / (len(values) + pending[z])
        if contributions:
            reporter.advance(len(contributions), "done")
        reporter.check()

    def _register_one(
        self, request: SegmentationRequest, k: int, z: int, spacing_yx: tuple[float, float], threads: int
    ) -> np.ndarray:
        """Soft mask of query slice ``z`` from support ``k``: register support onto query, warp its mask."""
        support = request.supports[k]
        if support.from_query and support.slice_index == z:
            return support.mask.astype(np.float32)
        if np.ptp(request.query[z]) == 0:  # a blank slice (padding at a volume's end) holds no structure
            return np.zeros(request.query.shape[1:], dtype=np.float32)
        fixed = _image2d(request.query[z], spacing_yx)
        moving = _image2d(support.image, support.spacing_yx)
        transform = register_slices(
            fixed, moving, self.cross_subject, moving_structure=support.mask, threads=threads
        )
        return warp_mask(support.mask, moving, fixed, transform)

    def _propagate(
        self,
        request: SegmentationRequest,
        task: _Task,
        spacing_yx: tuple[float, float],
        threads: int,
        results: queue.Queue,
        should_stop,
    ) -> None:
        """Follow the support's mask outward slice by slice, composing neighbour-to-neighbour transforms."""
        support = request.supports[task.support]
        wanted = set(task.slices)
        source_mask = support.mask.astype(np.float32)
        pixel_mm2 = spacing_yx[0] * spacing_yx[1]
        chain: list[sitk.Transform] = []  # fixed (slice z) -> ... -> support slice, innermost last
        previous = support.slice_index
        current = support.mask.astype(bool)
        for z in task.path:
            if should_stop():
                return
            if np.ptp(request.query[z]) == 0:  # a blank slice: nothing to follow the structure into
                if z in wanted:
                    results.put((z, np.zeros(request.query.shape[1:], dtype=np.float32)))
                return
            fixed = _image2d(request.query[z], spacing_yx)
            moving = _image2d(request.query[previous], spacing_yx)
            step = register_slices(fixed, moving, self.neighbour, moving_structure=current, threads=threads)
            chain.insert(0, step)  # applied first: maps slice z to the previous slice
            warped = warp_mask(source_mask, fixed, fixed, _composite(chain))
            current = warped >= self.threshold
            vanished = current.sum() * pixel_mm2 < self.min_area_mm2
            if z in wanted:
                results.put((z, np.zeros_like(warped) if vanished else warped))
            if vanished:
                log.debug("propagation from slice %d stopped at slice %d", support.slice_index, z)
                return  # the farther slices stay empty (counted as zeros by the caller)
            previous = z


# ------------------------------------------------------------------------------------ ITK threads
class _ItkThreadState:
    """SimpleITK's global thread count while classical jobs run (shared by concurrent jobs)."""

    lock = threading.Lock()
    jobs = 0
    budget = 0


def _itk_thread_budget() -> int:
    """SimpleITK's global default thread count: the budget (as it was before the running jobs set theirs)."""
    with _ItkThreadState.lock:
        if _ItkThreadState.jobs:
            return _ItkThreadState.budget
        return max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())


@contextlib.contextmanager
def _itk_threads(per_registration: int):
    """Set SimpleITK's global default threads to ``per_registration`` while the job runs, then restore it.

    ``ImageRegistrationMethod.SetNumberOfThreads`` does not reach every filter of a registration (the
    pyramid, the metric's work units follow the global default). Registrations running side by side then
    share ITK's pool, and the order of their floating-point sums, hence their results, varies from run to
    run. With one thread per registration each is computed exactly as when run alone: results are
    reproducible, and the same on every machine.
    """
    with _ItkThreadState.lock:
        if _ItkThreadState.jobs == 0:
            _ItkThreadState.budget = max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, per_registration))
        _ItkThreadState.jobs += 1
    try:
        yield
    finally:
        with _ItkThreadState.lock:
            _ItkThreadState.jobs -= 1
            if _ItkThreadState.jobs == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_ItkThreadState.budget)


# ----------------------------------------------------------------------------------- registration
def _image2d(array: np.ndarray, spacing_yx: Sequence[float]) -> sitk.Image:
    """A 2-D float32 SimpleITK image of a ``[H, W]`` array with spacing (x, y) in mm, origin 0."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing((float(spacing_yx[1]), float(spacing_yx[0])))
    return image


def _structure_mask(structure: np.ndarray, margin_mm: float, spacing_yx: Sequence[float]) -> sitk.Image:
    """The structure dilated by ``margin_mm`` (elliptic in pixels for anisotropic spacing), as uint8."""
    distance = ndimage.distance_transform_edt(~structure.astype(bool), sampling=spacing_yx)
    image = sitk.GetImageFromArray((distance <= margin_mm).astype(np.uint8))
    image.SetSpacing((float(spacing_yx[1]), float(spacing_yx[0])))
    return image


def _method(settings: RegistrationSettings, threads: int, shrink, sigmas, learning_rate: float):
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_percentage, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=settings.min_step,
        numberOfIterations=settings.affine_iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _plausible(transform: sitk.AffineTransform, max_scale: float) -> bool:
    """False for a mirroring, collapsing or exploding affine (a registration that went astray)."""
    matrix = np.asarray(transform.GetMatrix(), dtype=float).reshape(2, 2)
    if not np.all(np.isfinite(matrix)) or np.linalg.det(matrix) <= 0:
        return False
    scales = np.linalg.svd(matrix, compute_uv=False)
    return bool(scales.max() <= max_scale and scales.min() >= 1.0 / max_scale)


def register_slices(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: RegistrationSettings,
    *,
    moving_structure: np.ndarray | None = None,
    threads: int = 1,
) -> sitk.Transform:
    """The transform mapping ``fixed`` points to ``moving`` points (what ``sitk.Resample`` takes).

    Affine (centred initialisation, multi-resolution, Mattes MI), then an optional organ-focused affine
    (``local_margin_mm``, metric restricted to ``moving_structure`` dilated) and an optional B-spline stage.
    A stage that fails (the images stop overlapping) or gives an implausible affine is undone.
    """
    spacing_yx = (moving.GetSpacing()[1], moving.GetSpacing()[0])
    if settings.initializer == "identity":
        affine = sitk.AffineTransform(2)
        affine.SetCenter(
            fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
        )
    else:
        affine = _centred_affine(fixed, moving, settings.initializer)
    start = sitk.AffineTransform(affine)
    method = _method(
        settings, threads, settings.shrink_factors, settings.smoothing_sigmas, settings.learning_rate
    )
    method.SetInitialTransform(affine, inPlace=True)
    if not _execute(method, fixed, moving) or not _plausible(affine, settings.max_scale):
        affine = start
    structure_mask = None
    if moving_structure is not None and moving_structure.any() and (settings.local_margin_mm > 0):
        structure_mask = _structure_mask(moving_structure, settings.local_margin_mm, spacing_yx)
        local = sitk.AffineTransform(affine)
        levels = settings.shrink_factors[-2:]
        sigmas = settings.smoothing_sigmas[-2:]
        method = _method(settings, threads, levels, sigmas, settings.learning_rate / 2)
        method.SetMetricMovingMask(structure_mask)
        method.SetInitialTransform(local, inPlace=True)
        if _execute(method, fixed, moving) and _plausible(local, settings.max_scale):
            affine = local
    if settings.bspline_mesh <= 0:
        return affine
    bspline = sitk.BSplineTransformInitializer(fixed, [settings.bspline_mesh] * 2)
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_percentage, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=settings.bspline_iterations,
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=4 * settings.bspline_iterations,
        costFunctionConvergenceFactor=1e7,
    )
    n = len(settings.bspline_shrink_factors)
    method.SetShrinkFactorsPerLevel(list(settings.bspline_shrink_factors))
    method.SetSmoothingSigmasPerLevel([1.0] * (n - 1) + [0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetMovingInitialTransform(affine)
    if structure_mask is not None:
        method.SetMetricMovingMask(structure_mask)
    method.SetInitialTransform(bspline, inPlace=True)
    if not _execute(method, fixed, moving):
        return affine
    return sitk.CompositeTransform([affine, bspline])


def _centred_affine(fixed: sitk.Image, moving: sitk.Image, initializer: str) -> sitk.AffineTransform:
    """The initial affine: centres of mass (or of the images) aligned; image centres when an image has no
    mass (an all-black slice at a volume's end)."""
    try:
        return sitk.AffineTransform(
            sitk.CenteredTransformInitializer(
                fixed, moving, sitk.AffineTransform(2), _INITIALIZERS[initializer]
            )
        )
    except RuntimeError:
        return sitk.AffineTransform(
            sitk.CenteredTransformInitializer(
                fixed, moving, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.GEOMETRY
            )
        )


def _execute(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image) -> bool:
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:  # e.g. "All samples map outside moving image buffer"
        log.debug("registration stage failed: %s", str(exc).strip().splitlines()[-1] if str(exc) else exc)
        return False
    return True


def _composite(chain: list[sitk.Transform]) -> sitk.Transform:
    """One transform applying ``chain[0]`` first, then ``chain[1]``, ... (SimpleITK applies the last added
    transform of a CompositeTransform first)."""
    if len(chain) == 1:
        return chain[0]
    return sitk.CompositeTransform(list(reversed(chain)))


def warp_mask(
    mask: np.ndarray, moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform
) -> np.ndarray:
    """``mask`` (on the grid of ``moving``) resampled onto ``reference`` through ``transform`` (linear):
    float32 ``[H, W]`` in [0, 1]."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.float32))
    image.CopyInformation(moving)
    warped = sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.clip(sitk.GetArrayFromImage(warped), 0.0, 1.0)


__all__ = [
    "CROSS_SUBJECT",
    "ENGINE_NAME",
    "NEIGHBOUR",
    "ClassicalEngine",
    "RegistrationSettings",
    "register_slices",
    "warp_mask",
]
