"""Benchmark of the slice viewer (offscreen): showing a new slice, and one brush dab with its overlay refresh.

Run: ``QT_QPA_PLATFORM=offscreen python bench/bench_viewer.py [--repeats 100]``. A 512 x 512 x 300 int16
CT-like volume with a uint8 label array; medians over ``--repeats`` runs. "+ paint" includes a full
repaint of the widget (``widget.grab()``), i.e. the QImage conversion and drawing a frame. Target: < 16 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
from PySide6 import QtWidgets

from sd_fsmis.ui.viewer.ortho_viewer import OrthoViewer
from sd_fsmis.ui.viewer.slice_view import SliceView

SHAPE = (300, 512, 512)
TARGET_MS = 16.0


class _Grid:
    """A minimal geometry (spacing and direction in ITK order), as core.geometry.Geometry provides."""

    spacing = (0.8, 0.8, 2.5)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    origin = (0.0, 0.0, 0.0)

    def index_to_mm(self, zyx):
        z, y, x = zyx
        return (x * self.spacing[0], y * self.spacing[1], z * self.spacing[2])


def make_volume(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (body ellipse, organ, noise) and an empty uint8 label array."""
    rng = np.random.default_rng(0)
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    body = ((x - nx / 2) / (nx * 0.42)) ** 2 + ((y - ny / 2) / (ny * 0.33)) ** 2 <= 1
    organ = ((x - nx * 0.38) / (nx * 0.12)) ** 2 + ((y - ny * 0.45) / (ny * 0.1)) ** 2 <= 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[organ] = 90
    volume = np.empty(shape, np.int16)
    for z in range(nz):
        volume[z] = plane
    volume += rng.integers(-20, 20, size=(1, ny, nx), dtype=np.int16)
    return volume, np.zeros(shape, np.uint8)


def disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius * radius


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn(i)`` over ``repeats`` calls (after 3 warm-up calls)."""
    for i in range(3):
        fn(i)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def run(repeats: int = 100) -> dict[str, float]:
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    volume, labels = make_volume()
    grid = _Grid()
    results: dict[str, float] = {}

    for name in ("axial", "coronal"):
        view = SliceView(name)
        view.resize(800, 800)
        view.show()
        view.set_volume(volume, grid, window=(40.0, 400.0))
        view.set_labels(labels, {1: (255, 0, 0)}, 0.5)
        app.processEvents()
        n = view.slice_count

        results[f"{name}: new slice (set_slice)"] = timed(
            lambda i, v=view, n=n: v.set_slice((i * 7) % n), repeats
        )
        results[f"{name}: new slice + paint"] = timed(
            lambda i, v=view, n=n: (v.set_slice((i * 7 + 3) % n), v.grab()), repeats
        )
        view.close()

    view = SliceView("axial")
    view.resize(800, 800)
    view.show()
    view.set_volume(volume, grid, window=(40.0, 400.0))
    view.set_labels(labels, {1: (255, 0, 0)}, 0.5)
    app.processEvents()
    footprint = disk(10)  # a 20-px (21 x 21) brush
    rng = np.random.default_rng(1)
    centres = rng.integers(40, 470, size=(repeats + 10, 2))
    z = view.slice_index

    def dab(i: int) -> None:
        r, c = centres[i]
        region = (slice(z, z + 1), slice(r - 10, r + 11), slice(c - 10, c + 11))
        labels[region][0][footprint] = 1 + (i % 2)
        view.refresh_overlay(region)

    results["axial: brush dab + refresh_overlay(bbox)"] = timed(dab, repeats)
    results["axial: brush dab + refresh + paint"] = timed(lambda i: (dab(i), view.grab()), repeats)
    view.set_label_style(mode="outline")
    results["axial: dab + refresh (outline mode)"] = timed(dab, repeats)
    view.close()

    viewer = OrthoViewer()
    viewer.resize(1200, 800)
    viewer.show()
    viewer.set_volume(volume, grid, modality="CT")
    viewer.set_labels(labels, {1: (255, 0, 0), 2: (0, 255, 0)}, 0.5)
    app.processEvents()
    results["3 views: go_to (3 new slices)"] = timed(
        lambda i: viewer.go_to((i * 7) % 300, (i * 11) % 512, (i * 13) % 512), repeats
    )
    results["3 views: go_to + paint"] = timed(
        lambda i: (viewer.go_to((i * 7) % 300, (i * 11) % 512, (i * 13) % 512), viewer.grab()), repeats
    )
    viewer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    results = run(args.repeats)
    print(f"slice viewer, volume {SHAPE[0]} x {SHAPE[1]} x {SHAPE[2]}, median of {args.repeats} (ms):")
    for name, ms in results.items():
        flag = "ok" if ms < TARGET_MS else "SLOW"
        print(f"  {name:44s} {ms:7.2f}  {flag}")


if __name__ == "__main__":
    main()
