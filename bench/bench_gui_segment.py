"""Benchmark: does the window stay usable while a segmentation runs? (offscreen, the Segment panel)

Run: ``QT_QPA_PLATFORM=offscreen python bench/bench_gui_segment.py [--model classical|NAME] [--device auto]``.
Segments the demo phantom's liver (48 x 256 x 256, one support slice) through the Segment panel's worker
while a 10 ms timer ticks on the GUI thread, and reports the event loop's latency during the run (the
largest gap between ticks beyond 10 ms, and the 99th percentile), the number of progress signals per second
(throttled to ~20 Hz) and how long Cancel takes to stop a second run. Target: latency < 100 ms.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("SD_FSMIS_HOME", tempfile.mkdtemp(prefix="sd-fsmis-bench-"))

import numpy as np
from PySide6 import QtCore, QtWidgets

from sd_fsmis.core.io.demo import LIVER, make_demo_phantom
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.ui.panels.segment import SegmentPanel

TARGET_MS = 100.0


def wait(condition, timeout_s: float = 900.0) -> None:
    """Run the Qt event loop (as ``app.exec()`` would, without spinning) until ``condition()`` holds."""
    loop = QtCore.QEventLoop()
    end = time.monotonic() + timeout_s
    poll = QtCore.QTimer()
    poll.timeout.connect(lambda: loop.quit() if condition() or time.monotonic() > end else None)
    poll.start(20)
    if not condition():
        loop.exec()
    poll.stop()
    if not condition():
        raise TimeoutError("the run did not end in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="classical", help="engine: classical or a stored model's name")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (models only)")
    args = parser.parse_args()

    _app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    volume, labels = make_demo_phantom()
    session = Session()
    study = session.add_study(Study(volume, name="demo"))
    layer = study.add_layer("liver", labels={LIVER: "liver"})
    z = int(np.flatnonzero((labels.array == LIVER).any(axis=(1, 2))).mean())
    support = (labels.array[z : z + 1] == LIVER).astype(np.uint8)
    layer.set_region((slice(z, z + 1), slice(None), slice(None)), support)
    session.add_support(study, layer, z)

    panel = SegmentPanel(session)
    panel.show()
    wait(lambda: not panel.models_loading())
    if not panel.select_engine(args.model):
        print(f"engine {args.model!r} is not available (see 'sd-fsmis models list')")
        return 2
    panel.set_device(args.device)

    ticks: list[float] = []
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    progress_count = 0

    def count(_progress) -> None:
        nonlocal progress_count
        progress_count += 1

    timer.start(10)
    start = time.perf_counter()
    panel.segment()
    panel.worker.progress.connect(count)
    wait(lambda: not panel.is_running())
    seconds = time.perf_counter() - start
    timer.stop()
    run = session.runs[-1]
    gaps_ms = np.diff(np.asarray(ticks)) * 1000.0 - 10.0
    worst = float(gaps_ms.max()) if gaps_ms.size else float("nan")
    p99 = float(np.percentile(gaps_ms, 99)) if gaps_ms.size else float("nan")
    print(f"engine {args.model}: run {run.status} in {seconds:.1f} s, {volume.shape[0]} slices")
    print(f"GUI event loop latency during the run: worst {worst:.1f} ms, p99 {p99:.1f} ms")
    print(f"(target < {TARGET_MS:.0f} ms; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f})")
    print(f"progress signals: {progress_count} ({progress_count / max(seconds, 1e-9):.1f} per second)")

    # Cancel: how long from the click to the run's end
    panel.segment()
    wait(lambda: panel.worker.last_progress is not None and panel.worker.last_progress.done > 0)
    clicked = time.perf_counter()
    panel.cancel()
    wait(lambda: not panel.is_running())
    print(f"cancel took {1000 * (time.perf_counter() - clicked):.0f} ms; run {session.runs[-1].status}")
    panel.shutdown()
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
