"""Benchmark of the classical (registration) engine on CHAOS T2: protocol tables, threading choice.

The benchmark *is* the command line (so anyone can rerun it)::

    sd-fsmis evaluate --model classical --data ../shared/data/chaos-t2 --fold all --protocol ep1 \\
        --out bench-ep1.json
    sd-fsmis evaluate --model classical --data ../shared/data/chaos-t2 --fold all --protocol ep2 \\
        --out bench-ep2.json

This script runs both and prints their tables and wall times. ``--threads`` instead times the same
registrations run one at a time with SimpleITK's threads versus a pool of single-threaded registrations
(the engine's choice: ``ClassicalEngine(workers=...)``).

Usage: ``python bench/bench_classical.py [--data DIR] [--out-dir DIR] [--fold all] [--threads]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-t2"


def run_protocols(data: Path, out_dir: Path, fold: str) -> None:
    from sd_fsmis.cli import main

    out_dir.mkdir(parents=True, exist_ok=True)
    for protocol in ("ep1", "ep2"):
        out = out_dir / f"classical-{protocol}.json"
        argv = ["evaluate", "--model", "classical", "--data", str(data), "--fold", fold]
        argv += ["--protocol", protocol, "--out", str(out)]
        print("$ sd-fsmis " + " ".join(argv), flush=True)
        start = time.perf_counter()
        code = main(argv)
        wall = time.perf_counter() - start
        report = json.loads(out.read_text()) if out.exists() else {}
        slices = sum(len(q["slices"]) for q in report.get("queries", []))
        print(f"exit {code}; wall {wall:.0f} s; {slices} slices ({wall / max(1, slices):.3f} s per slice)\n")


def compare_threading(data: Path, n_pairs: int = 24) -> None:
    """Time ``n_pairs`` cross-patient registrations: SimpleITK threads versus a pool of one-thread workers."""
    import numpy as np
    import SimpleITK as sitk

    from sd_fsmis.core.engines.base import SegmentationRequest
    from sd_fsmis.core.engines.classical import ClassicalEngine
    from sd_fsmis.core.engines.support import (
        default_support_slice,
        make_support_examples,
        normalize_intensities,
    )

    def load(case_id: int):
        image = sitk.ReadImage(str(data / "images" / f"image_{case_id}.nii.gz"))
        labels = sitk.ReadImage(str(data / "labels" / f"label_{case_id}.nii.gz"))
        return normalize_intensities(sitk.GetArrayFromImage(image)), sitk.GetArrayFromImage(labels) == 1

    support, support_mask = load(3)
    query, query_mask = load(1)
    middle = default_support_slice(support_mask)
    examples = make_support_examples(support, support_mask, [middle], spacing_yx=(1.25, 1.25))
    slices = list(np.flatnonzero(query_mask.any(axis=(1, 2))))[:n_pairs]
    request = SegmentationRequest(query, examples, slices=slices, spacing_zyx=(7.7, 1.25, 1.25))
    total = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    for workers in (1, total, 1, total):
        engine = ClassicalEngine(workers=workers)
        start = time.perf_counter()
        engine.segment(request)
        wall = time.perf_counter() - start
        _, threads = engine.config()["workers"], engine.config()["threads_per_registration"]
        print(f"workers {workers} x SimpleITK threads {threads}: {wall:.2f} s for {len(slices)} slices")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    parser.add_argument("--fold", default="all")
    parser.add_argument("--threads", action="store_true", help="compare the threading strategies instead")
    args = parser.parse_args()
    if args.threads:
        compare_threading(args.data)
    else:
        run_protocols(args.data, args.out_dir, args.fold)


if __name__ == "__main__":
    main()
