"""The built-in engine: follow the painted structure slice by slice, fit it to the image, stop where it ends.

A person paints a structure on one to three slices of a study; this engine segments the rest of it and
nothing past it, on any machine (NumPy, SciPy, scikit-image; no model):

1. Appearance: an intensity model "structure versus surroundings" learned from the painted slices
   (:mod:`~sd_fsmis.core.engines.appearance`).
2. Between two painted slices, the structure is followed from each of them towards the other, slice by
   slice, and the two are blended by distance (signed distance maps weighted by how near each painted slice
   is), then fitted once more: both painted slices shape every slice between them.
3. Beyond the outermost painted slices the structure is followed outward one slice at a time, held to the
   previous slice's footprint (it may shrink freely, grow only a few millimetres, and never by more than
   ``max_growth`` in area), and the engine stops where it ends: where the image no longer supports it (the
   fitted area falls below ``stop_area_fraction`` of the painted slice's, or vanishes) or at a blank slice.
4. Every slice is fitted to the image (:func:`~sd_fsmis.core.engines.slice_fit.fit_slice`: the propagated
   shape as prior, the appearance model, a random walker on the image's edges).
5. One coherent 3-D structure: only the 3-D connected parts that reach a painted slice are kept; the
   painted slices are returned exactly as painted.

Supports from another study (``from_query`` False: "use study A's liver to segment study B", EP1/EP2) are
first located in the query (:mod:`~sd_fsmis.core.engines.seeding`: registration onto candidate slices,
the best-matching slice per support becomes a seed) and the same propagation and stopping follow, so the
false positives beyond the structure are suppressed the same way.

The work runs as a core job: progress per slice, cancellation checked before every slice (a slice takes
tens of milliseconds), and independent chains (the gaps between painted slices, the two ends) on a small
thread pool. Each chain is computed the same way whatever the number of threads, so results do not depend
on it (``workers=1`` is the deterministic mode for evaluation; SimpleITK registrations of the seeding use
one thread each).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from sd_fsmis.core.engines.appearance import AppearanceModel, AppearanceSettings
from sd_fsmis.core.engines.base import SegmentationRequest, SegmentationResult
from sd_fsmis.core.engines.slice_fit import FitSettings, fit_slice, signed_distance
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter

log = logging.getLogger(__name__)

ENGINE_NAME = "propagation"
ENGINE_LABEL = "Propagation (painted slices → whole structure) — no model needed"


@dataclass(frozen=True)
class PropagationSettings:
    """The engine's method settings. Physical units (mm); nothing here is specific to a dataset or organ."""

    appearance: AppearanceSettings = field(default_factory=AppearanceSettings)
    #: fitting between two painted slices: the prior may move the boundary by about a centimetre
    between: FitSettings = field(default_factory=FitSettings)
    #: fitting beyond the outermost painted slices: the structure may shrink but hardly grow
    beyond: FitSettings = field(
        default_factory=lambda: FitSettings(tau_out_mm=1.0, tau_in_mm=4.0, margin_mm=4.0)
    )
    #: between painted slices, follow the structure from both sides and blend (False: interpolate the two
    #: painted shapes' signed distances, Slicer's "fill between slices" idea, without following the image)
    both_sides: bool = True
    #: beyond the painted slices, stop where the fitted area falls below this fraction of the painted one's
    #: (0: only where it vanishes, an ablation)
    stop_area_fraction: float = 0.1
    #: beyond the painted slices, a slice whose area grows past this factor is cut to the previous footprint
    max_growth: float = 1.2
    #: with two or more painted slices, beyond the outermost ones, stop where the structure merges into
    #: look-alike tissue: where the regions that look like it (appearance log ratio > 0) and touch it grow
    #: past this factor times what they were on the painted slice (a neighbouring organ entering the
    #: footprint, such as the spleen above a kidney's pole); 0: off. The painted slices then bracket the
    #: structure (a person paints top, middle, bottom), so beyond them it can only taper; with a single
    #: painted slice the chains still cross the body of the structure, where it may touch look-alike
    #: tissue for a slice or two, and only the area rule applies.
    max_spread: float = 2.0
    #: a fitted region smaller than this (mm^2) is nothing
    min_area_mm2: float = 20.0
    #: keep only the 3-D connected parts that reach a painted (or seed) slice
    connected_3d: bool = True


class PropagationEngine:
    """Few-shot segmentation by appearance-checked propagation from painted slices (no model needed)."""

    name = ENGINE_NAME
    label = ENGINE_LABEL

    def __init__(self, settings: PropagationSettings | None = None, *, workers: int | None = None) -> None:
        """``workers``: chains computed at once (default: 2, or 1 on a single-core machine); the result is
        the same for any value."""
        self.settings = settings or PropagationSettings()
        self.workers = workers

    def config(self) -> dict:
        """The engine's settings as plain JSON types (recorded beside evaluation results)."""
        return {"name": self.name, "workers": self._workers(), **_jsonable(asdict(self.settings))}

    def _workers(self) -> int:
        return max(1, int(self.workers or min(2, os.cpu_count() or 1)))

    # ------------------------------------------------------------------------------------------ the job
    def segment(
        self,
        request: SegmentationRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """Segment ``request.slices``; progress per slice; :class:`JobCancelled` before any slice."""
        start = time.perf_counter()
        slices = request.checked_slices()
        reporter = ProgressReporter(len(slices), progress, cancel)
        reporter.report("preparing")
        reporter.check()
        spacing_yx = (float(request.spacing_zyx[1]), float(request.spacing_zyx[2]))
        from_query = [s for s in request.supports if s.from_query]
        if from_query:
            seeds: dict[int, np.ndarray] = {}
            for support in from_query:
                z = int(support.slice_index)
                mask = np.asarray(support.mask, dtype=bool)
                seeds[z] = mask if z not in seeds else seeds[z] | mask
            kept = set(seeds)
        else:
            from sd_fsmis.core.engines.seeding import locate_seeds

            seeds = locate_seeds(request, self.settings, cancel=cancel, workers=self._workers())
            kept = set()
        wanted = set(slices)
        masks = self._propagate(request, seeds, spacing_yx, wanted, reporter, cancel)
        volume = np.zeros(request.query.shape, dtype=bool)
        for z, mask in masks.items():
            volume[z] = mask
        if self.settings.connected_3d:
            volume = _connected_to(volume, seeds)
        for z in kept:  # the person's own painting, exactly
            volume[z] = seeds[z]
        out = np.zeros_like(volume)
        out[slices] = volume[slices]
        reporter.done = len(slices)
        reporter.report("done")
        reporter.check()
        seconds = time.perf_counter() - start
        found = np.flatnonzero(out.any(axis=(1, 2)))
        span = [int(found[0]), int(found[-1])] if found.size else []
        log.info("propagation: %d slices in %.2f s, structure on slices %s", len(slices), seconds, span)
        info = {"engine": self.config(), "seeds": sorted(int(z) for z in seeds), "slice_range": span}
        return SegmentationResult(mask=out, soft=None, seconds=seconds, info=info)

    # ------------------------------------------------------------------------------------ propagation
    def _propagate(
        self,
        request: SegmentationRequest,
        seeds: dict[int, np.ndarray],
        spacing_yx: tuple[float, float],
        wanted: set[int],
        reporter: ProgressReporter,
        cancel: CancelToken | None,
    ) -> dict[int, np.ndarray]:
        """Every slice's mask from the seeds: the gaps between seeds and the two ends, as chains in a pool."""
        query = request.query
        order = sorted(seeds)
        model = AppearanceModel.fit(
            [query[z] for z in order], [seeds[z] for z in order], spacing_yx, self.settings.appearance
        )
        ratios: dict[int, np.ndarray] = {}
        lock = threading.Lock()

        def log_ratio(z: int) -> np.ndarray | None:
            with lock:
                cached = ratios.get(z)
            if cached is None:
                cached = model.log_ratio(query[z])
                with lock:
                    ratios[z] = cached
            return cached

        context = _Context(query, spacing_yx, self.settings, log_ratio)
        lo, hi = (min(wanted), max(wanted)) if wanted else (0, -1)
        chains: list[Callable[[Callable[[], bool]], Iterator[tuple[int, np.ndarray]]]] = []
        for a, b in itertools.pairwise(order):
            if b - a > 1 and not (b < lo or a > hi):
                chains.append(lambda stop, a=a, b=b: context.between(a, seeds[a], b, seeds[b], stop))
        bracketed = len(order) >= 2
        if order[0] > lo:
            chains.append(lambda stop: context.beyond(order[0], seeds[order[0]], -1, lo, stop, bracketed))
        if order[-1] < hi:
            chains.append(lambda stop: context.beyond(order[-1], seeds[order[-1]], +1, hi, stop, bracketed))
        # Longest chains first: they bound the wall time.
        out: dict[int, np.ndarray] = {z: seeds[z] for z in order}
        done = {z for z in order if z in wanted}
        reporter.done = len(done)
        reporter.report("propagating")
        self._run(chains, out, wanted, done, reporter, cancel)
        return out

    def _run(
        self,
        chains: list[Callable[[Callable[[], bool]], Iterator[tuple[int, np.ndarray]]]],
        out: dict[int, np.ndarray],
        wanted: set[int],
        done: set[int],
        reporter: ProgressReporter,
        cancel: CancelToken | None,
    ) -> None:
        """Run the chains (generators of ``(slice, mask)``) on the pool; this thread collects the slices,
        reports progress and checks for cancellation."""
        stop = threading.Event()
        results: queue.Queue = queue.Queue()

        def should_stop() -> bool:
            return stop.is_set() or (cancel is not None and cancel.cancelled)

        def work(chain) -> None:
            try:
                for item in chain(should_stop):
                    results.put(item)
                    if should_stop():
                        return
            except BaseException as exc:  # surfaced in the caller's thread
                results.put(("error", exc))
            finally:
                results.put(("end", None))

        workers = min(self._workers(), max(1, len(chains)))
        pending = len(chains)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="propagation") as pool:
            futures = [pool.submit(work, chain) for chain in chains]
            try:
                while pending:
                    try:
                        z, value = results.get(timeout=0.05)
                    except queue.Empty:
                        reporter.check()
                        continue
                    if z == "end":
                        pending -= 1
                        continue
                    if z == "error":
                        raise value
                    out[z] = value
                    if z in wanted and z not in done:
                        done.add(z)
                        reporter.advance(1, f"slice {z + 1}")
            except BaseException:
                stop.set()
                for future in futures:
                    future.cancel()
                raise
        reporter.check()


@dataclass
class _Context:
    """What the chains share: the query, the settings and the (cached) appearance of each slice."""

    query: np.ndarray
    spacing_yx: tuple[float, float]
    settings: PropagationSettings
    log_ratio: Callable[[int], np.ndarray | None]

    def fit(self, z: int, prior: np.ndarray, fit: FitSettings) -> np.ndarray:
        if np.ptp(self.query[z]) == 0:  # a blank slice (padding at a volume's end) holds no structure
            return np.zeros(self.query.shape[1:], dtype=bool)
        return fit_slice(self.query[z], self.log_ratio(z), prior, fit, self.spacing_yx)

    def distance(self, mask: np.ndarray) -> np.ndarray:
        return signed_distance(mask, self.spacing_yx)

    def spread(self, z: int, mask: np.ndarray) -> float:
        """Area of the look-alike regions (appearance log ratio > 0) that touch ``mask`` on slice ``z``, over
        the area of ``mask``: about 1 for a structure set apart from its surroundings, more where it touches
        tissue that looks the same."""
        ratio = self.log_ratio(z)
        if ratio is None or not mask.any():
            return 1.0
        labels, _ = ndimage.label(ratio > 0)
        touched = np.unique(labels[mask])
        touched = touched[touched > 0]
        return float(np.isin(labels, touched).sum()) / float(mask.sum())

    def between(
        self, a: int, mask_a: np.ndarray, b: int, mask_b: np.ndarray, stop: Callable[[], bool]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Slices ``a+1 .. b-1``: followed from each side, blended by distance, fitted once more."""
        fit = self.settings.between
        d_a, d_b = self.distance(mask_a), self.distance(mask_b)
        from_a: dict[int, np.ndarray] = {}
        from_b: dict[int, np.ndarray] = {}
        if self.settings.both_sides:
            previous = mask_a
            for z in range(a + 1, b):
                if stop():
                    return
                previous = from_a[z] = self.fit(z, self.distance(previous), fit)
            previous = mask_b
            for z in range(b - 1, a, -1):
                if stop():
                    return
                previous = from_b[z] = self.fit(z, self.distance(previous), fit)
        for z in range(a + 1, b):
            if stop():
                return
            w = (b - z) / (b - a)  # the weight of slice a
            if self.settings.both_sides:
                prior = w * self.distance(from_a[z]) + (1 - w) * self.distance(from_b[z])
            else:
                prior = w * d_a + (1 - w) * d_b
            yield z, self.fit(z, prior, fit)

    def beyond(
        self,
        start: int,
        mask: np.ndarray,
        step: int,
        last: int,
        stop: Callable[[], bool],
        bracketed: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Outward from the outermost seed ``start`` (``step`` -1 or +1) up to slice ``last``, while the image
        supports the structure; ``bracketed``: there are seeds on both sides of the structure's body (the
        look-alike spread rule applies)."""
        fit = self.settings.beyond
        pixel_mm2 = self.spacing_yx[0] * self.spacing_yx[1]
        painted_area = float(mask.sum())
        check_spread = bracketed and self.settings.max_spread > 0
        spread_limit = self.settings.max_spread * max(1.0, self.spread(start, mask)) if check_spread else 0.0
        previous = mask
        z = start + step
        while (z >= last if step < 0 else z <= last) and 0 <= z < self.query.shape[0]:
            if stop():
                return
            prior = self.distance(previous)
            current = self.fit(z, prior, fit)
            area = float(current.sum())
            if area * pixel_mm2 < self.settings.min_area_mm2:
                log.debug("structure ends after slice %d (nothing found on %d)", z - step, z)
                return
            if area < self.settings.stop_area_fraction * painted_area:
                log.debug("structure ends after slice %d (area %.0f of %.0f)", z - step, area, painted_area)
                return
            if check_spread and self.spread(z, current) > spread_limit:
                log.debug("structure ends after slice %d (it merges into look-alike tissue)", z - step)
                return
            if area > self.settings.max_growth * float(previous.sum()):
                current = current & (prior < 0)
            yield z, current
            previous = current
            z += step


def _connected_to(volume: np.ndarray, seeds: dict[int, np.ndarray]) -> np.ndarray:
    """The 3-D connected parts of ``volume`` (face connectivity) that touch a seed slice's structure."""
    labels, n = ndimage.label(volume)
    if n <= 1:
        return volume
    keep: set[int] = set()
    for z, mask in seeds.items():
        keep.update(int(v) for v in np.unique(labels[z][mask]) if v)
    if not keep:
        return volume
    return np.isin(labels, sorted(keep))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["ENGINE_LABEL", "ENGINE_NAME", "PropagationEngine", "PropagationSettings"]
