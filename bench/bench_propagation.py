"""Benchmark of the propagation engine (the built-in default) on CHAOS T2: seconds per volume and structure,
and the protocol tables.

Timing (default): every structure of a few CHAOS volumes (256 x 256 x 31..46) painted on 1 and on 3 slices
(1/2, or 1/6 1/2 5/6 of its slices, as a person paints them), the whole volume segmented as the GUI does, with
1 and with 2 worker threads; prints one row per run and the mean and worst seconds. The engine gives the
same masks for any number of threads (checked here too).

``--protocols`` instead runs the commands behind the README's baseline table and prints their tables::

    sd-fsmis evaluate --model propagation --data ../shared/data/chaos-t2 --protocol clinical --shots 3
    sd-fsmis evaluate --model propagation --data ../shared/data/chaos-t2 --protocol clinical --shots 1
    sd-fsmis evaluate --model propagation --data ../shared/data/chaos-t2 --protocol ep1 --fold all
    sd-fsmis evaluate --model propagation --data ../shared/data/chaos-t2 --protocol ep2 --fold all

``--ablation`` measures each ingredient: the clinical protocol (1 and 3 painted slices, Dice over the whole
volume, the painted slices excluded) with the engine as it is, then with one ingredient removed at a time
(``--ids all`` for every volume).

Usage: ``python bench/bench_propagation.py [--data DIR] [--ids 1,3,5,8] [--protocols --out-dir DIR]
[--ablation]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-t2"
NAMES = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


def time_volumes(data: Path, ids: list[int], workers: list[int]) -> None:
    import numpy as np

    from sd_fsmis.core.engines.propagation import PropagationEngine
    from sd_fsmis.core.engines.segmentation import SupportSource, build_request
    from sd_fsmis.core.engines.support import chunk_middle_slices, labelled_slices
    from sd_fsmis.core.io.labelmap import LabelMap
    from sd_fsmis.core.io.loader import load_volume

    print(f"CPU cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    head = "| volume | size | structure | painted | " + " | ".join(f"s ({w} thr)" for w in workers)
    print(head + " | found on | true range |")
    print("|" + "---|" * (6 + len(workers)))
    seconds: dict[int, list[float]] = {w: [] for w in workers}
    for case_id in ids:
        volume = load_volume(data / "images" / f"image_{case_id}.nii.gz")
        labels = LabelMap.load(data / "labels" / f"label_{case_id}.nii.gz")
        size = "x".join(str(n) for n in reversed(volume.shape))
        for value, name in NAMES.items():
            mask = labels.binary(value)
            if not mask.any():
                continue
            for shots in (1, 3):
                painted = chunk_middle_slices(labelled_slices(mask), shots)
                source = SupportSource(volume=volume, mask=mask, slices=painted, is_query=True)
                request = build_request(volume, [source])
                masks = []
                row = []
                for w in workers:
                    start = time.perf_counter()
                    result = PropagationEngine(workers=w).segment(request)
                    elapsed = time.perf_counter() - start
                    seconds[w].append(elapsed)
                    masks.append(result.mask)
                    row.append(f"{elapsed:.2f}")
                if any(not np.array_equal(masks[0], m) for m in masks[1:]):
                    raise SystemExit("the masks differ between thread counts")
                found = labelled_slices(masks[0])
                true = labelled_slices(mask)
                print(
                    f"| {case_id} | {size} | {name} | {shots} | "
                    + " | ".join(row)
                    + f" | {found[0]}-{found[-1]} "
                    f"| {true[0]}-{true[-1]} |",
                    flush=True,
                )
    for w in workers:
        values = seconds[w]
        print(
            f"{w} thread(s): mean {np.mean(values):.2f} s, worst {np.max(values):.2f} s per volume, structure"
        )


def ablation_variants() -> dict[str, object]:
    """``{name: PropagationSettings}``: the engine as it is, then without one ingredient at a time."""
    from dataclasses import replace

    from sd_fsmis.core.engines.propagation import PropagationSettings

    full = PropagationSettings()
    no_appearance = {"appearance": False}
    no_walker = {"random_walker": False}
    return {
        "propagation (all ingredients)": full,
        "no appearance model (shape prior only)": replace(
            full, between=replace(full.between, **no_appearance), beyond=replace(full.beyond, **no_appearance)
        ),
        "no random walker (sign of the log-odds)": replace(
            full, between=replace(full.between, **no_walker), beyond=replace(full.beyond, **no_walker)
        ),
        "between painted slices: shape interpolation only": replace(full, both_sides=False),
        "beyond: no stop rule (only where nothing is found)": replace(
            full, stop_area_fraction=0.0, max_spread=0.0
        ),
        "beyond: no look-alike spread rule": replace(full, max_spread=0.0),
        "beyond: as loose as between": replace(full, beyond=full.between),
        "no 3-D connectivity": replace(full, connected_3d=False),
    }


def run_ablation(data: Path, ids: list[int] | None) -> None:
    import math

    from sd_fsmis.core.engines.propagation import PropagationEngine
    from sd_fsmis.core.evaluation.protocols import evaluate
    from sd_fsmis.core.io.datasets import FewShotDataset

    dataset = FewShotDataset.open(data)
    print("| variant | 3 painted: L / RK / LK / S | mean | 1 painted: L / RK / LK / S | mean | s/volume |")
    print("|---|---|---|---|---|---|")
    for name, settings in ablation_variants().items():
        cells = []
        seconds = []
        for shots in (3, 1):
            engine = PropagationEngine(settings, workers=1)
            report = evaluate(dataset, engine, protocol="clinical", ids=ids, shots=shots, surface=False)
            dice = report.class_dice()
            cells.append(
                " / ".join("-" if math.isnan(dice[k]) else f"{100 * dice[k]:.1f}" for k in sorted(dice))
            )
            cells.append(f"{100 * report.mean_dice():.2f}")
            seconds.append(report.seconds_per_volume())
        print(f"| {name} | " + " | ".join(cells) + f" | {sum(seconds) / len(seconds):.2f} |", flush=True)


def run_protocols(data: Path, out_dir: Path) -> None:
    from sd_fsmis.cli import main

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [
        ("clinical-3", ["--protocol", "clinical", "--shots", "3"]),
        ("clinical-1", ["--protocol", "clinical", "--shots", "1"]),
        ("ep1", ["--protocol", "ep1", "--fold", "all"]),
        ("ep2", ["--protocol", "ep2", "--fold", "all"]),
    ]
    for name, extra in runs:
        out = out_dir / f"propagation-{name}.json"
        argv = ["evaluate", "--model", "propagation", "--data", str(data), *extra, "--out", str(out)]
        print("$ sd-fsmis " + " ".join(argv), flush=True)
        start = time.perf_counter()
        code = main(argv)
        wall = time.perf_counter() - start
        report = json.loads(out.read_text()) if out.exists() else {}
        summary = report.get("summary", {})
        print(f"exit {code}; wall {wall:.0f} s; {summary.get('seconds_per_volume')} s per volume and class\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ids", default="1,3,5,8", help="CHAOS volumes to time")
    parser.add_argument("--workers", default="1,2", help="thread counts to compare")
    parser.add_argument("--protocols", action="store_true", help="run the protocol commands instead")
    parser.add_argument("--ablation", action="store_true", help="measure each ingredient (clinical protocol)")
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    if args.protocols:
        run_protocols(args.data, args.out_dir)
    elif args.ablation:
        run_ablation(args.data, None if args.ids == "all" else [int(v) for v in args.ids.split(",") if v])
    else:
        ids = [int(v) for v in args.ids.split(",") if v]
        time_volumes(args.data, ids, [int(v) for v in args.workers.split(",") if v])


if __name__ == "__main__":
    main()
