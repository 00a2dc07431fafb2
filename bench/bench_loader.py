"""Benchmark: ``load_volume`` on a DICOM series versus a bare SimpleITK ``ImageSeriesReader``.

Writes a CT-like series (default 300 slices of 512 x 512, int16 with rescale intercept -1024) into a
temporary folder, then times in the same run, alternating the order, a few repetitions of:

- bare: ``GetGDCMSeriesFileNames(folder)`` + ``ImageSeriesReader.Execute()`` + ``GetArrayFromImage``
  (the least one can do to get a numpy volume with its geometry), and the same without the array copy;
- ``load_volume(folder)``: series search, header checks (pydicom), pixels (GDCM), numpy volume.

It prints wall-clock and CPU times (median, min) and the ratios load_volume / bare (target: at most 1.2);
the exit status is 1 when load_volume takes more than 1.2 x the CPU time of the bare image read.

    python bench/bench_loader.py [--slices 300] [--size 512] [--repeats 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_series(folder: Path, n_slices: int, size: int, spacing: float = 0.7, step: float = 1.25) -> None:
    """A CT-like series as SimpleITK's DicomSeriesFromArray example writes one (stored = HU + 1024)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2
    series_uid = "1.2.826.0.1.3680043.8.498.1"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(n_slices):
        hu = np.where(body, 40, -1000) + rng.integers(-20, 20, size=(size, size))
        image = sitk.GetImageFromArray(hu.astype(np.int16))
        image.SetSpacing((spacing, spacing))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{i + 1}",
            "0008|0060": "CT",
            "0008|103e": "benchmark CT",
            "0020|000d": "1.2.826.0.1.3680043.8.498.2",
            "0020|000e": series_uid,
            "0020|0013": str(i + 1),
            "0020|0032": f"-180\\-180\\{i * step:.4f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{step}",
            "0028|1050": "40",
            "0028|1051": "400",
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{i:05d}.dcm"))
        writer.Execute(image)


def bare_read(folder: Path, to_numpy: bool = True):
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    return sitk.GetArrayFromImage(image) if to_numpy else image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each loader (median taken)")
    parser.add_argument("--keep", type=Path, help="write the series into this folder and keep it")
    args = parser.parse_args(argv)

    from sd_fsmis.core.io.loader import load_volume

    with tempfile.TemporaryDirectory(prefix="sd-fsmis-bench-") as tmp:
        folder = args.keep or Path(tmp) / "series"
        if not folder.is_dir() or not any(folder.iterdir()):
            t0 = time.perf_counter()
            write_series(folder, args.slices, args.size)
            print(
                f"wrote {args.slices} slices of {args.size}x{args.size} in {time.perf_counter() - t0:.2f} s"
            )
        # warm the page cache and check that both give the same volume
        volume = load_volume(folder)
        reference = bare_read(folder)
        assert np.array_equal(volume.array, reference), "load_volume and ImageSeriesReader disagree"
        assert not volume.warnings, volume.warnings

        loaders = {
            "bare": lambda: bare_read(folder),
            "bare_no_array": lambda: bare_read(folder, to_numpy=False),
            "load_volume": lambda: load_volume(folder),
        }
        wall: dict[str, list[float]] = {name: [] for name in loaders}
        cpu: dict[str, list[float]] = {name: [] for name in loaders}
        for rep in range(args.repeats):
            order = list(loaders) if rep % 2 == 0 else list(reversed(loaders))
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                result = loaders[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                del result

    shape = f"{args.slices} x {args.size} x {args.size}"
    print(f"series {shape}, loaded as {volume.array.dtype}; {args.repeats} runs of each, order alternating")
    print("  (CPU time is the steadier figure on a busy machine: other processes do not add to it)")
    for name in loaders:
        print(
            f"  {name:14s} wall: median {statistics.median(wall[name]):.3f} s, min {min(wall[name]):.3f} s"
            f"   CPU: median {statistics.median(cpu[name]):.3f} s"
        )
    ratios = {}
    for baseline, what in (("bare", "with its numpy copy"), ("bare_no_array", "SimpleITK image only")):
        ratios[baseline] = {
            "wall median": statistics.median(wall["load_volume"]) / statistics.median(wall[baseline]),
            "wall min": min(wall["load_volume"]) / min(wall[baseline]),
            "CPU median": statistics.median(cpu["load_volume"]) / statistics.median(cpu[baseline]),
        }
        figures = ", ".join(f"{k} {v:.3f}" for k, v in ratios[baseline].items())
        print(f"  load_volume / {baseline} ({what}): {figures}   (target <= 1.2)")
    return 0 if ratios["bare_no_array"]["CPU median"] <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
