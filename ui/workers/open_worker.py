"""Background work of the main window: opening studies and masks, exports, a session restore.

:class:`JobRunner` starts core jobs ``fn(progress=..., cancel=...)`` in
:class:`~sd_fsmis.ui.workers.job_worker.JobWorker` threads, keeps the list of those running (for the status
bar's progress and Cancel) and hands their results back on the GUI thread, where the session may be changed.
:class:`StudyOpener` is the "open a path" flow: list the series in a thread, let the user choose when there
are several, load the chosen ones in a thread, and add each study to the session on the GUI thread: opening
a 300-slice DICOM folder never freezes the window.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PySide6 import QtCore
from PySide6.QtCore import Signal

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.jobs import Progress
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.workers.job_worker import JobWorker, unexpected_error_message

log = logging.getLogger(__name__)

#: ``fn(progress=callback, cancel=token) -> result``: a core job.
Job = Callable[..., Any]


class JobRunner(QtCore.QObject):
    """Starts jobs in :class:`JobWorker` s and keeps them until they end; the callbacks run on the GUI thread.

    A failing job without an ``on_error`` callback emits ``errorOccurred`` with its one-line message (for a
    dialog). Signals for a status bar: ``started(worker)``, ``progressed(worker, Progress)``,
    ``finished(worker)``, ``busyChanged(bool)``.
    """

    busyChanged = Signal(bool)
    started = Signal(object)
    progressed = Signal(object, object)
    finished = Signal(object)
    errorOccurred = Signal(str)

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._workers: list[JobWorker] = []

    @property
    def jobs(self) -> list[JobWorker]:
        """The jobs running now, oldest first."""
        return list(self._workers)

    @property
    def busy(self) -> bool:
        return bool(self._workers)

    def start(
        self,
        job: Job,
        label: str = "",
        *,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
    ) -> JobWorker:
        """Run ``job(progress=, cancel=)`` in a new thread; ``label`` is what the status bar shows."""
        worker = JobWorker(job, name=label or "job", parent=self)
        worker.progress.connect(partial(self._progress, worker))
        worker.finished.connect(partial(self._call, worker, on_done))
        worker.failed.connect(partial(self._failed, worker, on_error))
        worker.cancelled.connect(partial(self._call, worker, on_cancelled))
        worker.done.connect(partial(self._forget, worker))
        was_busy = self.busy
        self._workers.append(worker)
        worker.start()
        self.started.emit(worker)
        if not was_busy:
            self.busyChanged.emit(True)
        return worker

    def cancel_all(self) -> None:
        for worker in self._workers:
            worker.cancel()

    def wait_all(self, timeout_ms: int = 30_000) -> bool:
        """Process events until every job ended and its result was handed over; False on timeout."""
        timer = QtCore.QElapsedTimer()
        timer.start()
        while self._workers and timer.elapsed() < timeout_ms:
            for worker in list(self._workers):
                worker.wait(10)
            QtCore.QCoreApplication.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 10)
        return not self._workers

    def _progress(self, worker: JobWorker, progress: Progress) -> None:
        self.progressed.emit(worker, progress)

    def _call(self, worker: JobWorker, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # a UserError from the GUI-thread part (e.g. a geometry mismatch)
            if not isinstance(exc, UserError):
                log.exception("the result of %r could not be used", worker.name)
            self.errorOccurred.emit(str(exc) if isinstance(exc, UserError) else unexpected_error_message(exc))

    def _failed(self, worker: JobWorker, on_error: Callable[[str], None] | None, message: str, _user: bool):
        if on_error is None:
            self.errorOccurred.emit(message)
        else:
            self._call(worker, on_error, message)

    def _forget(self, worker: JobWorker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
            self.finished.emit(worker)
            worker.deleteLater()
            if not self._workers:
                self.busyChanged.emit(False)


#: Asks the user which series to open: ``(series, path) -> chosen series`` (empty: none, the user cancelled).
SeriesChooser = Callable[[list, str], list]


class StudyOpener(QtCore.QObject):
    """Open a path: list its series (thread), choose (dialog), load (thread), add the studies (GUI thread)."""

    opened = Signal(object)  # the Study, added to the session
    failed = Signal(str, str)  # path, one-line message

    def __init__(
        self,
        session: Session,
        runner: JobRunner,
        choose: SeriesChooser,
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self.runner = runner
        self.choose = choose

    def open(self, path: str | os.PathLike[str]) -> JobWorker:
        """Start opening ``path`` (a DICOM folder, DICOMDIR, NIfTI or other image file)."""
        from sd_fsmis.core.io.listing import list_series

        text = str(path)
        return self.runner.start(
            partial(list_series, text),
            f"Reading {Path(text).name}",
            on_done=partial(self._listed, text),
            on_error=partial(self._failed, text),
        )

    def _failed(self, path: str, message: str) -> None:
        self.failed.emit(path, message)

    def _listed(self, path: str, series: list) -> None:
        if not series:
            self._failed(path, f"{path}: no image found")
            return
        usable = [s for s in series if not s.error]
        if len(series) == 1 or len(usable) == 0:
            chosen = series
        else:
            chosen = list(self.choose(series, path) or [])
        several = len(series) > 1
        for info in chosen:
            if info.error:
                self._failed(path, f"series {info.uid} cannot be loaded: {info.error}")
                continue
            self.runner.start(
                partial(_load_series, info),
                f"Loading {info.description or Path(path).name}",
                on_done=partial(self._loaded, path, info.uid if several else None),
                on_error=partial(self._failed, path),
            )

    def _loaded(self, path: str, series_uid: str | None, volume: object) -> None:
        study = Study(volume, path=path, series_uid=series_uid)  # type: ignore[arg-type]
        self.session.add_study(study)
        self.opened.emit(study)


def _load_series(info: object, *, progress=None, cancel=None) -> object:
    from sd_fsmis.core.io.loader import load_series

    return load_series(info, progress=progress, cancel=cancel)  # type: ignore[arg-type]
