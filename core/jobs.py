"""Long operations as jobs: progress through a callback, cancellation through a token.

A job is a plain function taking ``progress`` and ``cancel`` keyword arguments. The GUI runs it in a
QThread worker, the CLI with a terminal progress bar: one implementation, two front ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sd_fsmis.core.errors import JobCancelled


@dataclass(frozen=True)
class Progress:
    """One progress report: ``done`` of ``total`` units, with a short message."""

    done: int
    total: int
    message: str = ""
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)

    @property
    def eta_s(self) -> float | None:
        """Seconds left, extrapolated linearly; None before the first unit is done."""
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed_s * (self.total - self.done) / self.done


ProgressCallback = Callable[[Progress], None]


def human_bytes(n: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 KB``, ``5 B`` (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def no_progress(_: Progress) -> None:
    """A progress callback that ignores every report."""


class CancelToken:
    """Thread-safe cancellation and pause flags, checked by a job between its steps.

    ``pause()`` / ``resume()`` are honoured by jobs that can stop at a boundary and wait (the trainer does,
    after an optimiser step); :meth:`wait_while_paused` returns when resumed or cancelled, so ``cancel()``
    also wakes a paused job.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._condition = threading.Condition()
        self._paused = False

    def cancel(self) -> None:
        self._event.set()
        with self._condition:
            self._condition.notify_all()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise JobCancelled("cancelled by the user")

    def pause(self) -> None:
        """Ask the job to wait at its next boundary (a no-op for jobs that do not pause)."""
        with self._condition:
            self._paused = True
            self._condition.notify_all()

    def resume(self) -> None:
        """Let a paused job continue."""
        with self._condition:
            self._paused = False
            self._condition.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def wait_while_paused(self, poll_s: float = 0.1) -> None:
        """Block while paused; return once resumed or cancelled."""
        with self._condition:
            while self._paused and not self._event.is_set():
                self._condition.wait(poll_s)


class ProgressReporter:
    """Helper for jobs: counts units, stamps elapsed time, checks cancellation at each step."""

    def __init__(
        self,
        total: int,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.total = total
        self.done = 0
        self._progress = progress or no_progress
        self._cancel = cancel
        self._start = time.perf_counter()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the token was set."""
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()

    def advance(self, units: int = 1, message: str = "", **extra: object) -> None:
        """Record ``units`` more done, report, then check cancellation."""
        self.done += units
        self.report(message, **extra)
        self.check()

    def report(self, message: str = "", **extra: object) -> None:
        self._progress(
            Progress(
                done=self.done,
                total=self.total,
                message=message,
                elapsed_s=time.perf_counter() - self._start,
                extra=dict(extra),
            )
        )
