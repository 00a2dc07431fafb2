"""Run core jobs in a QThread so the window stays usable: throttled progress, Cancel, errors, OOM retry.

A core job is a function taking ``progress`` and ``cancel`` keyword arguments (:mod:`sd_fsmis.core.jobs`).
:class:`JobWorker` runs one in a worker thread with Qt's documented worker-object pattern (a QObject
moved to a QThread, started by ``QThread.started``); the job never touches a widget. Its signals arrive on
the GUI thread::

    worker = JobWorker(partial(segment_volume, query, sources, engine), name="segmentation", parent=self)
    worker.progress.connect(self.show_progress)     # Progress, at most ~20 per second
    worker.finished.connect(self.add_result)        # the job's return value
    worker.failed.connect(self.show_error)          # (message, is_user_error)
    worker.cancelled.connect(self.show_cancelled)
    worker.start()
    ...
    worker.cancel()                                 # the job stops at its next step

Errors: a :class:`~sd_fsmis.core.errors.UserError` gives its one-line message; an accelerator out-of-memory
error (recognised by name and message, without importing torch) is retried once with half the batch size
when the job takes ``batch_size``, then reported with the advice to choose a smaller batch; anything else
is logged with its traceback and reported as one line pointing to the log file.
"""

from __future__ import annotations

import errno
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import QObject, QThread, Signal, Slot

from sd_fsmis.core.errors import JobCancelled, UserError
from sd_fsmis.core.jobs import CancelToken, Progress

log = logging.getLogger(__name__)

#: Minimum seconds between two progress signals (about 20 Hz): enough for a smooth bar, no event flood.
PROGRESS_INTERVAL_S = 0.05

#: Threads started by any JobWorker and not yet known to be finished: a QThread object must outlive its
#: thread ("QThread: Destroyed while thread is still running" aborts the process), even when the widget
#: that started it is deleted first. Entries are dropped once the thread has finished.
_live: dict[int, tuple[QThread, QObject]] = {}
_quit_hook_installed = False


# ------------------------------------------------------------------------------------------ error kinds
def is_out_of_memory(exc: BaseException | None) -> bool:
    """True for an accelerator out-of-memory error (torch's ``OutOfMemoryError``, "CUDA out of memory"...).

    Recognised by the exception's type name or message, along its cause chain, so the GUI need not import
    torch. A plain Python ``MemoryError`` without such a message (host RAM) is not one.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "OutOfMemory" in type(exc).__name__:
            return True
        if isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def smaller_batch(batch_size: int | None) -> int:
    """Half the batch size (at least 1); an automatic batch size (None or 0) becomes 1."""
    return max(1, int(batch_size) // 2) if batch_size else 1


def out_of_memory_message(batch_size: int | None) -> str:
    """What to tell the user when a job ran out of accelerator memory even after the retry."""
    tried = (
        f"{batch_size} slice{'s' if batch_size != 1 else ''} per batch" if batch_size else "a smaller batch"
    )
    return (
        f"Out of GPU memory, even after retrying with {tried}. Choose a smaller batch size (or the CPU), "
        "close other programs that use the GPU, and try again."
    )


def _log_file_hint() -> str:
    try:
        from sd_fsmis.logs import log_file

        return f"details in the log file {log_file()}"
    except Exception:  # the hint must never fail the error report itself
        return "details in the log file"


def unexpected_error_message(exc: BaseException) -> str:
    """One line for an unexpected exception: its type and first line, and where the traceback went."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{text} ({_log_file_hint()})"


def io_error_message(exc: OSError) -> str:
    """One line for a file that could not be read or written (``[Errno 28] No space left on device``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    hint = " Free some space and try again." if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"Could not read or write a file ({reason}){where}.{hint}"


# ---------------------------------------------------------------------------------------------- runner
class _JobRunner(QObject):
    """The object that lives in the worker thread and calls the job (no GUI access from here)."""

    progressed = Signal(object)
    succeeded = Signal(object)
    failed = Signal(str, bool)
    cancelled = Signal()
    retrying = Signal(str)

    def __init__(
        self,
        job: Callable[..., Any],
        token: CancelToken,
        *,
        name: str,
        retry_on_oom: bool,
        batch_size: int | None,
    ) -> None:
        super().__init__()
        self._job = job
        self._token = token
        self._name = name
        self._retry_on_oom = retry_on_oom
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._last_emit: float | None = None
        self._latest: Progress | None = None
        self._latest_sent = True

    # -- progress, throttled: the first report, one every PROGRESS_INTERVAL_S, the last one always
    def report(self, progress: Progress) -> None:
        now = time.monotonic()
        with self._lock:
            self._latest = progress
            due = (
                self._last_emit is None
                or now - self._last_emit >= PROGRESS_INTERVAL_S
                or (progress.total > 0 and progress.done >= progress.total)
            )
            if due:
                self._last_emit = now
            self._latest_sent = due
        if due:
            self.progressed.emit(progress)

    def _flush_progress(self) -> None:
        with self._lock:
            latest, sent = self._latest, self._latest_sent
            self._latest_sent = True
        if latest is not None and not sent:
            self.progressed.emit(latest)

    @Slot()
    def run(self) -> None:
        try:
            self._run()
        finally:
            self._job = None  # drop the job's references (arrays, models) in this thread
            thread = self.thread()
            if thread is not None:
                thread.quit()

    def _run(self) -> None:
        retried = False
        while True:
            kwargs: dict[str, Any] = {"progress": self.report, "cancel": self._token}
            if self._retry_on_oom:
                kwargs["batch_size"] = self.batch_size
            oom = False
            try:
                result = self._job(**kwargs)
            except JobCancelled:
                self._flush_progress()
                self.cancelled.emit()
                return
            except UserError as exc:
                log.info("%s: %s", self._name, exc)
                self._flush_progress()
                self.failed.emit(str(exc), True)
                return
            except Exception as exc:
                if is_out_of_memory(exc):
                    if self._retry_on_oom and not retried and not self._token.cancelled:
                        oom = True  # retried below, once the failed attempt's memory can be freed
                        log.warning(
                            "%s ran out of memory (%s); retrying with a smaller batch", self._name, exc
                        )
                    else:
                        log.exception("%s ran out of memory", self._name)
                        self._flush_progress()
                        self.failed.emit(out_of_memory_message(self.batch_size), True)
                        return
                elif isinstance(exc, MemoryError):
                    log.exception("%s ran out of memory (RAM)", self._name)
                    self._flush_progress()
                    self.failed.emit(
                        "Not enough memory (RAM) for this job: close other studies or programs, or process "
                        "fewer slices.",
                        True,
                    )
                    return
                elif isinstance(exc, OSError):  # a full disk, a permission, a vanished drive: not a bug
                    log.exception("%s: I/O error", self._name)
                    self._flush_progress()
                    self.failed.emit(io_error_message(exc), True)
                    return
                else:
                    log.exception("%s failed", self._name)
                    self._flush_progress()
                    self.failed.emit(unexpected_error_message(exc), False)
                    return
            if not oom:
                self._flush_progress()
                self.succeeded.emit(result)
                return
            # Out of memory: the exception (and the frames holding the failed attempt's model and tensors)
            # is gone now that the except block is left; collect it before the retry.
            retried = True
            gc.collect()
            self.batch_size = smaller_batch(self.batch_size)
            self.retrying.emit(
                f"Out of GPU memory: retrying with {self.batch_size} slice"
                f"{'s' if self.batch_size != 1 else ''} per batch"
            )


# ---------------------------------------------------------------------------------------------- worker
class JobWorker(QObject):
    """Runs one core job in a worker thread; its signals arrive on the GUI thread.

    ``job`` is called as ``job(progress=..., cancel=...)`` (plus ``batch_size=...`` when ``retry_on_oom``:
    on an out-of-memory error it is called once more with half the batch size). A worker runs once.

    Signals: ``progress(Progress)`` (at most ~20 per second; the last report always comes),
    ``finished(object)`` (the job's return value), ``failed(str message, bool is_user_error)``,
    ``cancelled()``, ``retrying(str)`` (out of memory, retrying), ``done()`` after any of the three ends.
    """

    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str, bool)
    cancelled = Signal()
    retrying = Signal(str)
    done = Signal()

    def __init__(
        self,
        job: Callable[..., Any],
        *,
        name: str = "job",
        retry_on_oom: bool = False,
        batch_size: int | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.name = name
        self.token = CancelToken()
        self._job = job
        self._retry_on_oom = retry_on_oom
        self._batch_size = batch_size
        self._thread: QThread | None = None
        self._runner: _JobRunner | None = None
        self._running = False
        self._started = False
        #: "finished", "failed", "cancelled" once the job ended; None before
        self.outcome: str | None = None
        self.result: Any = None
        self.error: tuple[str, bool] | None = None
        self.last_progress: Progress | None = None

    # -- control
    def start(self) -> None:
        """Start the job in a new thread (once)."""
        if self._started:
            raise RuntimeError("a JobWorker runs its job once; make a new one")
        self._started = True
        _reap_finished_threads()
        _install_quit_hook()
        thread = QThread()
        thread.setObjectName(f"sd-fsmis {self.name}")
        runner = _JobRunner(
            self._job,
            self.token,
            name=self.name,
            retry_on_oom=self._retry_on_oom,
            batch_size=self._batch_size,
        )
        self._job = None
        runner.moveToThread(thread)
        # receivers are methods of this object (GUI thread): queued connections
        runner.progressed.connect(self._on_progress)
        runner.succeeded.connect(self._on_succeeded)
        runner.failed.connect(self._on_failed)
        runner.cancelled.connect(self._on_cancelled)
        runner.retrying.connect(self._on_retrying)
        thread.started.connect(runner.run)
        self._thread, self._runner = thread, runner
        _live[id(thread)] = (thread, runner)
        self._running = True
        thread.start()

    def cancel(self) -> None:
        """Ask the job to stop at its next step (it then emits ``cancelled``)."""
        self.token.cancel()

    @property
    def cancel_requested(self) -> bool:
        return self.token.cancelled

    def is_running(self) -> bool:
        """True from :meth:`start` until the job's end was signalled."""
        return self._running

    @property
    def batch_size(self) -> int | None:
        """The batch size of the last attempt (halved after an out-of-memory retry)."""
        return self._runner.batch_size if self._runner is not None else self._batch_size

    def wait(self, timeout_ms: int | None = None) -> bool:
        """Block until the thread has finished (True) or ``timeout_ms`` passed (False)."""
        thread = self._thread
        if thread is None:
            return True
        finished = thread.wait() if timeout_ms is None else thread.wait(int(timeout_ms))
        if finished:
            _reap_finished_threads()
        return bool(finished)

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel and join the thread (for a window being closed); True when it has finished."""
        self.cancel()
        return self.wait(timeout_ms)

    # -- runner signals (GUI thread)
    @Slot(object)
    def _on_progress(self, progress: Progress) -> None:
        if self._running:
            self.last_progress = progress
            self.progress.emit(progress)

    @Slot(str)
    def _on_retrying(self, message: str) -> None:
        self.retrying.emit(message)

    @Slot(object)
    def _on_succeeded(self, result: Any) -> None:
        self._end("finished")
        self.result = result
        self.finished.emit(result)
        self.done.emit()

    @Slot(str, bool)
    def _on_failed(self, message: str, is_user_error: bool) -> None:
        self._end("failed")
        self.error = (message, is_user_error)
        self.failed.emit(message, is_user_error)
        self.done.emit()

    @Slot()
    def _on_cancelled(self) -> None:
        self._end("cancelled")
        self.cancelled.emit()
        self.done.emit()

    def _end(self, outcome: str) -> None:
        self._running = False
        self.outcome = outcome


def running_workers() -> int:
    """Number of worker threads still running (any widget's)."""
    _reap_finished_threads()
    return sum(1 for thread, _ in _live.values() if thread.isRunning())


def shutdown_workers(timeout_ms: int = 30_000) -> bool:
    """Cancel every running job and join its thread; True when all have finished (application exit)."""
    deadline = time.monotonic() + timeout_ms / 1000.0
    for _thread, runner in list(_live.values()):
        token = getattr(runner, "_token", None)
        if token is not None:
            token.cancel()
    ok = True
    for thread, _runner in list(_live.values()):
        left = max(0, int((deadline - time.monotonic()) * 1000))
        ok = bool(thread.wait(left)) and ok
    _reap_finished_threads()
    return ok


def _reap_finished_threads() -> None:
    for key, (thread, _runner) in list(_live.items()):
        if thread.isFinished():
            del _live[key]


def _install_quit_hook() -> None:
    """Join the worker threads when the application quits (no thread outlives its QThread object)."""
    global _quit_hook_installed
    app = QtCore.QCoreApplication.instance()
    if _quit_hook_installed or app is None:
        return
    app.aboutToQuit.connect(shutdown_workers)
    _quit_hook_installed = True


# ---------------------------------------------------------------------------------------------- dialogs
def error_box(
    parent: QtWidgets.QWidget | None, title: str, message: str, *, warning: bool = True
) -> QtWidgets.QMessageBox:
    """Show ``message`` in a window-modal box that does not block the caller (``open()``, not ``exec()``)."""
    box = QtWidgets.QMessageBox(parent)
    box.setIcon(QtWidgets.QMessageBox.Icon.Warning if warning else QtWidgets.QMessageBox.Icon.Information)
    box.setWindowTitle(title)
    box.setText(message)
    box.setStandardButtons(QtWidgets.QMessageBox.StandardButton.Ok)
    box.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


def qt_alive(obj: QObject) -> bool:
    """False once the C++ side of ``obj`` was deleted (core events may still reach its Python wrapper)."""
    try:
        from shiboken6 import isValid
    except ImportError:  # pragma: no cover - shiboken6 ships with PySide6
        return True
    return bool(isValid(obj))


def format_seconds(seconds: float | None) -> str:
    """``"3 s"``, ``"1 min 20 s"``, ``"1 h 02 min"``; "" for None."""
    if seconds is None:
        return ""
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"
