"""JobWorker: the job runs off the GUI thread, throttled progress, Cancel, errors, the out-of-memory retry."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from PySide6 import QtCore

from sd_fsmis.core.errors import MaskError
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback, ProgressReporter
from sd_fsmis.ui.workers.job_worker import (
    PROGRESS_INTERVAL_S,
    JobWorker,
    format_seconds,
    is_out_of_memory,
    running_workers,
    shutdown_workers,
    smaller_batch,
)


def counting_job(steps: int, seconds_per_step: float, record: dict | None = None):
    """A core job: ``steps`` steps, progress after each, cancellation checked between them."""

    def job(*, progress: ProgressCallback, cancel: CancelToken) -> int:
        reporter = ProgressReporter(steps, progress, cancel)
        if record is not None:
            record["thread"] = threading.current_thread()
        for _ in range(steps):
            time.sleep(seconds_per_step)
            reporter.advance(1)
            if record is not None:
                record["done"] = reporter.done
        return steps

    return job


@pytest.fixture
def start(qtbot):
    workers: list[JobWorker] = []

    def start_(job, **options) -> JobWorker:
        worker = JobWorker(job, **options)
        workers.append(worker)
        return worker

    yield start_
    for worker in workers:
        assert worker.shutdown(10_000)
    assert running_workers() == 0


def test_job_runs_in_a_worker_thread_with_throttled_progress(qtbot, start):
    record: dict = {}
    worker = start(counting_job(120, 0.003, record), name="count")
    reports: list[Progress] = []
    worker.progress.connect(reports.append)
    ticks = []
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(10)
    started = time.monotonic()
    with qtbot.waitSignal(worker.finished, timeout=10_000) as blocker:
        worker.start()
        assert worker.is_running()
    elapsed = time.monotonic() - started
    timer.stop()
    assert blocker.args == [120] and worker.outcome == "finished" and not worker.is_running()
    assert record["thread"] is not threading.main_thread()
    # the GUI thread kept running its event loop meanwhile (the window stays usable)
    assert len(ticks) >= max(3, 0.25 * elapsed / 0.010)
    # ~20 reports a second, not 120; the last one always comes
    assert reports[-1].done == reports[-1].total == 120
    assert len(reports) <= elapsed / PROGRESS_INTERVAL_S + 3
    assert len(reports) < 120
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert worker.wait(5000)
    with pytest.raises(RuntimeError):
        worker.start()  # a worker runs once


def test_cancel_stops_the_job_at_its_next_step(qtbot, start):
    record: dict = {}
    worker = start(counting_job(200, 0.01, record), name="long")
    finished = []
    worker.finished.connect(finished.append)
    at_cancel: list[int] = []

    def cancel(_progress: Progress) -> None:  # Cancel after the first report
        if not at_cancel:
            at_cancel.append(record.get("done", 0))
            worker.cancel()

    worker.progress.connect(cancel)
    with qtbot.waitSignal(worker.cancelled, timeout=30_000):
        worker.start()
    assert worker.outcome == "cancelled" and worker.cancel_requested
    # stopped at the next check after Cancel (a step under way finishes), far from the end
    assert record["done"] <= at_cancel[0] + 2 < 200
    assert finished == []
    assert worker.wait(5000)


def test_user_error_gives_its_message(qtbot, start):
    def job(*, progress, cancel):
        raise MaskError("the support mask is empty: paint the structure first")

    worker = start(job)
    with qtbot.waitSignal(worker.failed, timeout=5000) as blocker:
        worker.start()
    assert blocker.args == ["the support mask is empty: paint the structure first", True]


def test_a_full_disk_is_one_clear_line_not_an_internal_error(qtbot, start):
    import errno
    import os

    def job(*, progress, cancel):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/liver/checkpoints/checkpoint-500")

    worker = start(job)
    with qtbot.waitSignal(worker.failed, timeout=5000) as blocker:
        worker.start()
    message, is_user_error = blocker.args
    assert is_user_error and "No space left on device" in message and "checkpoint-500" in message
    assert "Free some space" in message and "log file" not in message


def test_unexpected_error_is_logged_and_points_to_the_log(qtbot, start, caplog):
    def job(*, progress, cancel):
        raise ValueError("shapes (3,) and (4,) not aligned")

    worker = start(job, name="broken job")
    with (
        caplog.at_level(logging.ERROR, logger="sd_fsmis.ui.workers.job_worker"),
        qtbot.waitSignal(worker.failed, timeout=5000) as blocker,
    ):
        worker.start()
    message, is_user_error = blocker.args
    assert not is_user_error
    assert message.startswith("ValueError: shapes (3,) and (4,) not aligned")
    assert "details in the log file" in message
    record = next(r for r in caplog.records if "broken job failed" in r.getMessage())
    assert record.exc_info is not None  # the traceback goes to the log


def test_out_of_memory_is_retried_once_with_half_the_batch(qtbot, start):
    calls: list[int | None] = []

    def job(*, progress, cancel, batch_size):
        calls.append(batch_size)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.2 GiB total)")
        return f"done with {batch_size}"

    worker = start(job, retry_on_oom=True, batch_size=8)
    retrying = []
    worker.retrying.connect(retrying.append)
    with qtbot.waitSignal(worker.finished, timeout=5000) as blocker:
        worker.start()
    assert calls == [8, 4] and blocker.args == ["done with 4"]
    assert retrying == ["Out of GPU memory: retrying with 4 slices per batch"]
    assert worker.batch_size == 4


def test_out_of_memory_twice_suggests_a_smaller_batch(qtbot, start):
    calls: list[int | None] = []

    class OutOfMemoryError(RuntimeError):  # what torch raises, recognised by its name
        pass

    def job(*, progress, cancel, batch_size):
        calls.append(batch_size)
        raise OutOfMemoryError("Tried to allocate 20.00 MiB")

    worker = start(job, retry_on_oom=True, batch_size=None)  # automatic batch: the retry uses 1
    with qtbot.waitSignal(worker.failed, timeout=5000) as blocker:
        worker.start()
    message, is_user_error = blocker.args
    assert calls == [None, 1]
    assert is_user_error and "Choose a smaller batch size" in message and "1 slice per batch" in message


def test_out_of_memory_detection_and_helpers():
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_out_of_memory(OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 1 GiB"))
    assert is_out_of_memory(MemoryError("out of memory on NVIDIA H200 (139.8 GiB)"))
    try:
        try:
            raise OutOfMemoryError("inner")
        except OutOfMemoryError as inner:
            raise MemoryError("the model failed") from inner
    except MemoryError as outer:
        assert is_out_of_memory(outer)  # through the cause
    assert not is_out_of_memory(MemoryError())  # host RAM, no accelerator message
    assert not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(None)
    assert (smaller_batch(8), smaller_batch(3), smaller_batch(1), smaller_batch(None)) == (4, 1, 1, 1)
    assert format_seconds(3.4) == "3 s"
    assert format_seconds(80) == "1 min 20 s"
    assert format_seconds(3725) == "1 h 02 min"


def test_threads_are_joined_when_the_application_closes(qtbot):
    worker = JobWorker(counting_job(1000, 0.01), name="endless")
    with qtbot.waitSignal(worker.progress, timeout=5000):
        worker.start()
    assert running_workers() == 1
    assert shutdown_workers(10_000)  # what aboutToQuit runs: cancel all, join all
    assert running_workers() == 0
    qtbot.waitUntil(lambda: not worker.is_running(), timeout=5000)  # the cancelled signal still arrives
    assert worker.outcome == "cancelled"
    # the thread has finished: its QThread may now be destroyed (no "Destroyed while thread is still running")
