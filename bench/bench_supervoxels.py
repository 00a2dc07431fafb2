"""Supervoxels computed by the application vs the ones CHAOS ships (issue 15, items 4 and 5).

Prints Markdown tables:

1. per volume: supervoxel count, size distribution (voxels: 5th, 50th, 95th percentile), the fraction of
   the body's voxels in supervoxels that span two or more slices (what episodes are drawn from), boundary
   recall against the organ labels (organ boundary pixels within ``--tolerance`` pixels of a supervoxel
   boundary, slice by slice), and seconds to compute ours;
2. per organ: the best Dice a union of supervoxels reaches (supervoxels added in order of the fraction of
   them inside the organ, the best prefix kept), ours vs shipped;
3. speed: seconds per volume and per 256 x 256 x 40 volume, with 1 and 2 threads allowed;
4. (unless ``--no-training``) the tiny random SD-FSMIS model trained self-supervised on ours vs on the
   shipped supervoxels, CHAOS fold 0 held out: the held-out episode loss (organ episodes of the held-out
   volumes, the same fixed episodes for both) at every validation, side by side.

The organ labels are used only to measure, never to choose a parameter.

    python bench/bench_supervoxels.py                       # all 20 volumes, training 200 steps
    python bench/bench_supervoxels.py --ids 1,2 --no-training
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHAOS = ROOT.parent / "shared" / "data" / "chaos-t2"
ORGANS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


def read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def boundary_recall(supervoxels: np.ndarray, labels: np.ndarray, tolerance: float) -> float:
    """Fraction of the organ boundary pixels (between two different label values, slice by slice) lying
    within ``tolerance`` pixels of a supervoxel boundary."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    hit = total = 0
    for sv, lb in zip(supervoxels, labels, strict=True):
        if not lb.any():
            continue
        organ_edge = find_boundaries(lb, mode="inner") & (lb > 0)
        if not organ_edge.any():
            continue
        sv_edge = find_boundaries(sv, mode="thick")
        if sv_edge.any():
            distance = ndimage.distance_transform_edt(~sv_edge)
            hit += int((distance[organ_edge] <= tolerance).sum())
        total += int(organ_edge.sum())
    return hit / total if total else float("nan")


def best_union_dice(supervoxels: np.ndarray, organ: np.ndarray) -> float:
    """The best Dice of a union of supervoxels with ``organ`` (those most inside it first)."""
    if not organ.any():
        return float("nan")
    ids = supervoxels.ravel()
    size = np.bincount(ids, minlength=ids.max() + 1).astype(float)
    inside = np.bincount(ids, weights=organ.ravel().astype(float), minlength=ids.max() + 1)
    size[0] = inside[0] = 0.0  # outside the body is never part of a union
    keep = size > 0
    order = np.argsort(-(inside[keep] / size[keep]), kind="stable")
    cum_in, cum_size = np.cumsum(inside[keep][order]), np.cumsum(size[keep][order])
    dice = 2 * cum_in / (cum_size + organ.sum())
    return float(dice.max()) if len(dice) else 0.0


def multi_slice_fraction(supervoxels: np.ndarray) -> float:
    """Fraction of the labelled voxels in supervoxels present on two or more slices."""
    z = np.nonzero(supervoxels)[0]
    ids = supervoxels[supervoxels > 0]
    if ids.size == 0:
        return float("nan")
    first = np.full(ids.max() + 1, np.iinfo(np.int64).max)
    last = np.full(ids.max() + 1, -1)
    np.minimum.at(first, ids, z)
    np.maximum.at(last, ids, z)
    return float(np.mean(last[ids] > first[ids]))


def stats(supervoxels: np.ndarray) -> tuple[int, np.ndarray]:
    ids, counts = np.unique(supervoxels[supervoxels > 0], return_counts=True)
    return len(ids), counts


def compare(ids: list[int], tolerance: float) -> dict[int, dict]:
    from sd_fsmis.core.training.supervoxels import compute_supervoxels

    rows: dict[int, dict] = {}
    print(
        "| volume | slices | ours: count | shipped: count | ours: size p5/p50/p95 | shipped: size p5/p50/p95 "
        "| ours: in 2+ slices | shipped: in 2+ slices | ours: boundary recall | shipped: boundary recall "
        "| ours: s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case_id in ids:
        image, spacing = read(CHAOS / "images" / f"image_{case_id}.nii.gz")
        labels, _ = read(CHAOS / "labels" / f"label_{case_id}.nii.gz")
        shipped, _ = read(CHAOS / "supervoxels" / f"supervoxel_{case_id}.nii.gz")
        shipped = shipped.astype(np.int64)
        start = time.perf_counter()
        ours = compute_supervoxels(image, spacing).labels.astype(np.int64)
        seconds = time.perf_counter() - start
        row = {"seconds": seconds, "slices": image.shape[0], "shape": image.shape}
        for name, sv in (("ours", ours), ("shipped", shipped)):
            count, sizes = stats(sv)
            row[name] = {
                "count": count,
                "sizes": np.percentile(sizes, [5, 50, 95]) if count else np.zeros(3),
                "multi": multi_slice_fraction(sv),
                "recall": boundary_recall(sv, labels, tolerance),
                "dice": {k: best_union_dice(sv, labels == k) for k in ORGANS},
            }
        rows[case_id] = row
        o, s = row["ours"], row["shipped"]

        def fmt(p):
            return "/".join(f"{v:.0f}" for v in p)

        print(
            f"| {case_id} | {row['slices']} | {o['count']} | {s['count']} | {fmt(o['sizes'])} | "
            f"{fmt(s['sizes'])} | {100 * o['multi']:.0f} % | {100 * s['multi']:.0f} % | "
            f"{100 * o['recall']:.1f} % | {100 * s['recall']:.1f} % | {seconds:.2f} |",
            flush=True,
        )
    o_counts = [r["ours"]["count"] for r in rows.values()]
    s_counts = [r["shipped"]["count"] for r in rows.values()]
    print(
        f"| **mean** | | {np.mean(o_counts):.0f} | {np.mean(s_counts):.0f} | | | "
        f"{100 * np.nanmean([r['ours']['multi'] for r in rows.values()]):.0f} % | "
        f"{100 * np.nanmean([r['shipped']['multi'] for r in rows.values()]):.0f} % | "
        f"{100 * np.nanmean([r['ours']['recall'] for r in rows.values()]):.1f} % | "
        f"{100 * np.nanmean([r['shipped']['recall'] for r in rows.values()]):.1f} % | "
        f"{np.mean([r['seconds'] for r in rows.values()]):.2f} |"
    )
    print()
    print("Best Dice of a union of supervoxels per organ (mean over the volumes, %):")
    print()
    print("| supervoxels | " + " | ".join(ORGANS.values()) + " | mean |")
    print("|---|" + "---|" * (len(ORGANS) + 1))
    for name in ("ours", "shipped"):
        per = [np.nanmean([r[name]["dice"][k] for r in rows.values()]) for k in ORGANS]
        print(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in per) + f" | {100 * np.mean(per):.2f} |")
    print()
    return rows


def speed(ids: list[int]) -> None:
    """Seconds per volume with 1 and 2 threads allowed (the work is one thread: both should agree)."""
    import subprocess

    code = (
        "import sys,time,numpy as np,SimpleITK as sitk\n"
        "from sd_fsmis.core.training.supervoxels import compute_supervoxels\n"
        "rows=[]\n"
        "for p in sys.argv[1:]:\n"
        "    im=sitk.ReadImage(p); a=sitk.GetArrayFromImage(im)\n"
        "    t=time.perf_counter(); compute_supervoxels(a, im.GetSpacing()); s=time.perf_counter()-t\n"
        "    rows.append((s, a.shape[0]))\n"
        "print(' '.join(f'{s}:{z}' for s,z in rows))\n"
    )
    paths = [str(CHAOS / "images" / f"image_{i}.nii.gz") for i in ids]
    print("| threads allowed | s per volume (mean) | worst | s per 256x256x40 volume |")
    print("|---|---|---|---|")
    for threads in (1, 2):
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            OPENBLAS_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
        )
        cmd = ["taskset", "-c", ",".join(str(c) for c in range(threads)), sys.executable, "-c", code, *paths]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()
        pairs = [tuple(float(v) for v in item.split(":")) for item in out]
        per = [s for s, _ in pairs]
        per40 = [s / z * 40 for s, z in pairs]
        print(f"| {threads} | {np.mean(per):.2f} | {max(per):.2f} | {np.mean(per40):.2f} |")
    print()


def training(steps: int, validate_every: int, seed: int) -> None:
    """The tiny model trained on ours vs the shipped supervoxels; held-out episode loss side by side."""
    import torch

    from sd_fsmis.core.model.create import create_preset_model
    from sd_fsmis.core.training.config import TrainingConfig
    from sd_fsmis.core.training.trainer import train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-supervoxels-") as tmp:
        tmp = Path(tmp)
        base = create_preset_model("tiny", out=tmp / "base", seed=0)
        # CHAOS without its supervoxels/ (links, read in place): ours are computed, into tmp's cache
        ours_data = tmp / "chaos-without-supervoxels"
        for sub in ("images", "labels"):
            (ours_data / sub).mkdir(parents=True)
            for f in (CHAOS / sub).iterdir():
                (ours_data / sub / f.name).symlink_to(f)
        curves = {}
        for name, data in (("ours", ours_data), ("shipped", CHAOS)):
            config = TrainingConfig(
                model=str(base),
                data=str(data),
                out=str(tmp / f"run-{name}"),
                fold=0,
                source="supervoxels",
                supervoxel_cache=str(tmp / "cache"),
                steps=steps,
                accumulation=1,
                validate_every=validate_every,
                dice_validation=False,
                heldout_episodes=16,
                checkpoint_every=steps,
                device="cpu",
                precision="fp32",
                seed=seed,
                copy_frozen=False,
            )
            start = time.perf_counter()
            result = train(config)
            curves[name] = result.heldout_losses
            print(
                f"{name}: {steps} steps in {time.perf_counter() - start:.0f} s; training loss first 20 steps "
                f"{np.mean(result.losses[:20]):.4f}, last 20 {np.mean(result.losses[-20:]):.4f}",
                flush=True,
            )
    print()
    print("Held-out episode loss (16 fixed organ episodes of the fold-0 volumes), tiny random model:")
    print()
    print("| step | trained on ours | trained on shipped |")
    print("|---|---|---|")
    for step in sorted(set(curves["ours"]) | set(curves["shipped"])):
        a, b = curves["ours"].get(step), curves["shipped"].get(step)
        print(f"| {step} | {'' if a is None else f'{a:.4f}'} | {'' if b is None else f'{b:.4f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", default="all", help="CHAOS ids (default all 20)")
    parser.add_argument("--tolerance", type=float, default=2.0, help="boundary recall tolerance, pixels")
    parser.add_argument("--no-training", action="store_true", help="skip the tiny-model comparison")
    parser.add_argument("--no-speed", action="store_true", help="skip the 1/2-thread speed table")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run (default 200)")
    parser.add_argument("--validate-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not (CHAOS / "supervoxels").is_dir():
        sys.exit(f"CHAOS data not found at {CHAOS}")
    all_ids = sorted(
        int(p.name.split("_")[1].split(".")[0]) for p in (CHAOS / "images").glob("image_*.nii.gz")
    )
    ids = all_ids if args.ids == "all" else [int(v) for v in args.ids.split(",")]
    print(f"CHAOS T2, {len(ids)} volumes; boundary recall within {args.tolerance:g} pixels\n")
    compare(ids, args.tolerance)
    if not args.no_speed:
        speed(ids)
    if not args.no_training:
        training(args.steps, args.validate_every, args.seed)


if __name__ == "__main__":
    main()
