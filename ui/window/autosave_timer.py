"""Drives :class:`~sd_fsmis.core.session.autosave.AutosaveScheduler` from a Qt timer.

Every second the timer asks the scheduler whether a save is due; the snapshot (copies of the changed masks:
measured 10 ms for two 48 x 256 x 256 masks, about 100 ms for a 300 x 512 x 512 one on a busy 2-core
machine) is taken on the GUI thread, where the session lives, but not during a brush stroke (``hold``), so
painting never stutters; the write (NIfTI compression: 50 ms, and 350 ms for the large mask) runs in a worker
thread. One write at a time; a crash loses at most the last few seconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PySide6 import QtCore
from PySide6.QtCore import Signal

from sd_fsmis.core.session.autosave import AutosaveScheduler, SaveReport
from sd_fsmis.core.session.state import Session

log = logging.getLogger(__name__)


class AutosaveTimer(QtCore.QObject):
    """Autosave of ``session`` into ``folder``: ``start()`` at start-up, ``stop()`` on quit."""

    saved = Signal(object)  # SaveReport
    failed = Signal(str)

    def __init__(
        self,
        session: Session,
        folder: str | os.PathLike[str] | None = None,
        interval_s: float = 3.0,
        tick_ms: int = 1000,
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.scheduler = AutosaveScheduler(session, folder, interval_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autosave")
        self._pending: Future | None = None
        self._running = False
        self.last_snapshot_s = 0.0
        #: True while the snapshot should wait (a stroke is being painted)
        self.hold: Callable[[], bool] = lambda: False
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(int(tick_ms))
        self._timer.timeout.connect(self.tick)

    @property
    def folder(self) -> Path:
        return self.scheduler.folder

    def start(self) -> None:
        """Mark the folder as in use (a crash from now on is detected at the next start) and start polling."""
        try:
            self.scheduler.mark_running()
        except OSError as exc:
            self.failed.emit(f"autosave is off: cannot write to {self.folder} ({exc})")
            return
        self._running = True
        self._timer.start()

    def tick(self) -> None:
        """Collect a finished write; start a new one when changes are due."""
        self._collect()
        if self._pending is not None or not self.scheduler.due() or self.hold():
            return
        start = time.perf_counter()
        try:
            snap = self.scheduler.snapshot()
        except Exception as exc:  # never let the autosave stop the application
            log.exception("autosave snapshot failed")
            self.failed.emit(f"autosave failed: {exc}")
            return
        self.last_snapshot_s = time.perf_counter() - start
        self._pending = self._executor.submit(self.scheduler.write, snap)

    def _collect(self, wait: bool = False) -> None:
        future = self._pending
        if future is None or (not wait and not future.done()):
            return
        self._pending = None
        try:
            report: SaveReport = future.result()
        except Exception as exc:
            log.exception("autosave write failed")
            self.failed.emit(f"autosave failed: {exc}")
            return
        if not report.skipped:
            log.debug(
                "autosave: snapshot %.1f ms, write %.1f ms", 1e3 * self.last_snapshot_s, 1e3 * report.seconds
            )
            self.saved.emit(report)

    def save_now(self) -> SaveReport | None:
        """Save at once, on this thread (after any write in progress)."""
        self._collect(wait=True)
        try:
            report = self.scheduler.save_now()
        except Exception as exc:
            log.exception("autosave failed")
            self.failed.emit(f"autosave failed: {exc}")
            return None
        self.saved.emit(report)
        return report

    def stop(self, clean: bool = True) -> None:
        """Stop polling; on a clean quit, save what is pending and clear the "running" marker."""
        self._timer.stop()
        self._collect(wait=True)
        if self._running and clean:
            try:
                self.scheduler.mark_clean_exit()
            except Exception as exc:
                log.exception("autosave at exit failed")
                self.failed.emit(f"autosave failed: {exc}")
        self._running = False
        self.scheduler.close()
        self._executor.shutdown(wait=True)
