"""A few real, timed training steps on the chosen device: what the wizard's estimate is calibrated with.

:func:`sd_fsmis.core.training.estimate.estimate_training` predicts from parameter counts and a matmul
benchmark; on a CPU, or with a model whose step is dominated by overheads, that can be many times off (a
tiny model's step took 20 times the prediction). :func:`calibrate_training` runs the trainer itself
(:func:`~sd_fsmis.core.training.trainer.train`, the same code, data and settings as the run) for one warm-up
step and ``timed_steps`` more, times each optimiser step, reads the device's peak memory on CUDA, and
stops right after the last timed step, saving nothing (the run folder is a temporary one, removed).
:meth:`Calibration.apply` turns an estimate into a measured one with its uncertainty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.core.training.config import TrainingConfig

log = logging.getLogger(__name__)

#: the relative uncertainty never shown smaller than this: a few steps do not see everything a long run
#: meets (validation, checkpoints, other load on the machine)
MIN_RELATIVE_SPREAD = 0.15


@dataclass(frozen=True)
class Calibration:
    """Seconds per optimiser step measured on the device, and the CUDA peak memory of those steps."""

    seconds_per_step: float
    #: fastest and slowest timed step (s)
    fastest_s: float
    slowest_s: float
    timed_steps: int
    #: peak allocated device memory (bytes) over the steps on CUDA; None on other devices
    peak_memory_bytes: int | None
    #: seconds the calibration took in all (loading the model included)
    total_s: float

    @property
    def relative_spread(self) -> float:
        """Half the range of the timed steps relative to their median, at least ``MIN_RELATIVE_SPREAD``."""
        half_range = (self.slowest_s - self.fastest_s) / 2 / self.seconds_per_step
        return max(MIN_RELATIVE_SPREAD, half_range)

    def apply(self, estimate):
        """``estimate`` (a ResourceEstimate) with the measured time, its range, and the measured memory."""
        spread = self.relative_spread
        total = self.seconds_per_step * estimate.steps
        changes = {
            "seconds_per_step": self.seconds_per_step,
            "total_seconds": total,
            "total_seconds_range": (total * (1 - spread), total * (1 + spread)),
            "calibrated": True,
        }
        from sd_fsmis.core.training.estimate import format_duration

        changes["suggestions"] = [
            f"no GPU: {format_duration(total)} at this speed; a CUDA GPU is ~100x faster"
            if text.startswith("no GPU:")
            else text
            for text in estimate.suggestions
        ]
        if self.peak_memory_bytes is not None:
            peak = max(self.peak_memory_bytes, estimate.peak_memory_bytes // 4)
            changes["peak_memory_bytes"] = peak
            available = estimate.available_memory_bytes
            changes["fits"] = available is None or peak <= available
        return dataclasses.replace(estimate, **changes)


class _Enough(Exception):
    """Raised from the progress callback after the last timed step: stop without saving anything."""


def calibrate_training(
    config: TrainingConfig,
    *,
    timed_steps: int = 3,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Calibration:
    """Run ``config`` (its data, model, device and settings) for 1 + ``timed_steps`` optimiser steps.

    Validation, held-out episodes and checkpoints are off; the run folder is temporary. A core job:
    progress says which step is being timed; ``cancel`` stops it (JobCancelled).
    """
    from sd_fsmis.core.training.trainer import train

    if timed_steps < 1:
        raise ValueError("timed_steps must be at least 1")
    steps = 1 + timed_steps
    stamps: list[float] = []
    report = progress or (lambda p: None)
    started = time.perf_counter()
    cuda = _reset_cuda_peak(config.device)

    def on_progress(p: Progress) -> None:
        if "loss" in p.extra:
            stamps.append(time.perf_counter())
            done = len(stamps)
            report(Progress(done, steps, f"timing training step {done} of {steps} on the device"))
            if done >= steps:
                raise _Enough
        else:
            report(Progress(len(stamps), steps, p.message or "loading the model"))

    with tempfile.TemporaryDirectory(prefix="sd-fsmis-calibration-") as tmp:
        trial = dataclasses.replace(
            config,
            out=str(Path(tmp) / "run"),
            steps=steps,
            validate_every=0,
            dice_validation=False,
            validate_before=False,
            heldout_episodes=0,
            checkpoint_every=steps + 1,
            copy_frozen=False,
            resume=False,
        )
        with contextlib.suppress(_Enough):
            train(trial, progress=on_progress, cancel=cancel)
    if len(stamps) < 2:
        raise RuntimeError("the calibration ended before a step could be timed")
    durations = [b - a for a, b in itertools.pairwise(stamps)]
    peak = _cuda_peak() if cuda else None
    result = Calibration(
        seconds_per_step=statistics.median(durations),
        fastest_s=min(durations),
        slowest_s=max(durations),
        timed_steps=len(durations),
        peak_memory_bytes=peak,
        total_s=time.perf_counter() - started,
    )
    log.info("calibration: %.3f s/step (%d steps), peak %s", result.seconds_per_step, len(durations), peak)
    return result


def _reset_cuda_peak(device: str) -> bool:
    """Reset CUDA's peak-memory counter when the run will use CUDA; True when it will."""
    import torch

    if device not in ("auto", "cuda") and not str(device).startswith("cuda"):
        return False
    if not torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


def _cuda_peak() -> int:
    import torch

    return int(torch.cuda.max_memory_allocated())
