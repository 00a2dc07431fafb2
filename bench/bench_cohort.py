"""Benchmark of cohort segmentation (``sd-fsmis segment --queries``): studies per hour.

Every study is a CHAOS T2 volume (256 x 256 x 31..46; the ids are cycled when more studies are asked for,
each as its own link), segmented with one support set (patient ``--support-id``, the liver painted on 3
slices: 1/6, 1/2, 5/6 of its slices) into a fresh output folder by the core cohort job, as the command does.

- ``cpu`` (default): the built-in propagation engine with 1 and with 2 worker processes, and a tiny
  random-weight SD-FSMIS model with and without a DataLoader worker reading the next studies, on 2 CPU
  cores (``taskset``-like affinity is not changed: run it on a 2-core machine or pin it yourself);
- ``gpu`` (needs CUDA): a real-size SD-FSMIS model with random weights (SD 1.5 U-Net, VAE, DINOv2-base;
  bf16) in 1 process, then in ``--processes`` processes sharing the GPU (each its own model, every n-th
  study: the shards ``accelerate launch`` makes), plus the time to build the model once.

Columns: studies, processes, wall seconds of the segmentation (model loading excluded, shown apart),
seconds per study, studies per hour. Masks are checked to exist for every study.

Usage: ``python bench/bench_cohort.py [--mode cpu|gpu|all] [--studies 8] [--processes 2]
[--data DIR] [--support-id 8]``; ``--mode gpu --arch tiny --device cpu`` checks the gpu part on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-t2"
ENGINE_NAME = "bench-random-model"


def _cohort(data: Path, support_id: int, count: int, folder: Path):
    """``count`` studies (links to CHAOS volumes other than the support's) and the cohort's support."""
    from sd_fsmis.core.cohort.studies import SupportSpec, open_cohort

    ids = sorted(int(p.name[6:-7]) for p in (data / "images").glob("image_*.nii.gz"))
    ids = [i for i in ids if i != support_id] or ids  # one volume only (the GPU check's data): itself
    studies = folder / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        case = ids[k % len(ids)]
        link = studies / f"s{k:03d}_image_{case}.nii.gz"
        if not link.exists():
            link.symlink_to(data / f"images/image_{case}.nii.gz")
    support = SupportSpec(
        mask=str(data / f"labels/label_{support_id}.nii.gz"),
        image=str(data / f"images/image_{support_id}.nii.gz"),
        slices=_three_slices(data, support_id),
    )
    return open_cohort(studies), support


def _three_slices(data: Path, case: int) -> tuple[int, ...]:
    import numpy as np
    import SimpleITK as sitk

    from sd_fsmis.core.engines.support import chunk_middle_slices, labelled_slices

    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(data / f"labels/label_{case}.nii.gz"))) == 1
    return tuple(chunk_middle_slices(labelled_slices(np.asarray(liver)), 3))


def _run(cohort, support, engine: str, out: Path, *, workers: int, device: str = "cpu", shard=None) -> float:
    from sd_fsmis.core.cohort.run import CohortSettings, Shard, run_cohort

    settings = CohortSettings(engine=engine, label=1, support=support, device=device, workers=workers)
    start = time.perf_counter()
    report = run_cohort(cohort, out, settings, shard=shard or Shard())
    seconds = time.perf_counter() - start
    failed = report.failed
    if failed:
        raise SystemExit(f"{len(failed)} studies failed, e.g. {failed[0]['study']}: {failed[0]['error']}")
    return seconds


def _row(name: str, studies: int, processes: int, seconds: float, note: str = "") -> None:
    print(
        f"| {name} | {studies} | {processes} | {seconds:.1f} | {seconds / studies:.2f} | "
        f"{3600 * studies / seconds:.0f} | {note} |",
        flush=True,
    )


def _header() -> None:
    print("| run | studies | processes | wall s | s/study | studies/hour | note |")
    print("|---|---|---|---|---|---|---|")


def _register_random_model(arch: str, device: str) -> float:
    """Build a random-weight SD-FSMIS model of ``arch`` on ``device`` and offer it as ENGINE_NAME."""

    from sd_fsmis.core.device import default_dtype, select_device
    from sd_fsmis.core.engines.registry import register_engine
    from sd_fsmis.core.model.engine import SDFSMISEngine
    from sd_fsmis.core.model.presets import build_random_pipeline

    start = time.perf_counter()
    torch_device = select_device(device)
    pipeline = build_random_pipeline(arch, seed=0, device=torch_device)
    pipeline.to(torch_device, default_dtype(torch_device, "auto"))
    engine = SDFSMISEngine(pipeline, name=ENGINE_NAME)
    register_engine(ENGINE_NAME, lambda: engine)
    return time.perf_counter() - start


def bench_cpu(data: Path, support_id: int, count: int, folder: Path) -> None:
    import torch

    cohort, support = _cohort(data, support_id, count, folder)
    print(f"\nCPU ({os.cpu_count()} cores seen), {count} CHAOS studies, one support (3 painted slices)\n")
    _header()
    for workers in (1, 2):
        seconds = _run(cohort, support, "propagation", folder / f"prop-{workers}", workers=workers)
        _row("propagation (built-in)", count, workers, seconds, "worker processes" if workers > 1 else "")
    torch.set_num_threads(
        1
    )  # tiny networks: OpenMP threads spin-waiting on a shared 2-core machine cost more
    build = _register_random_model("tiny", "cpu")
    for workers in (0, 1):
        seconds = _run(cohort, support, ENGINE_NAME, folder / f"tiny-{workers}", workers=workers)
        note = "DataLoader: 1 reader" if workers else "studies read in turn"
        _row("tiny SD-FSMIS (random)", count, 1, seconds, f"{note}; model built in {build:.1f} s")


def bench_gpu(
    data: Path, support_id: int, count: int, processes: int, folder: Path, arch: str, device: str
) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("\nGPU: skipped (no CUDA device)")
        return
    if device == "cpu":
        torch.set_num_threads(1)
    cohort, support = _cohort(data, support_id, count, folder)
    where = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (a check of this part)"
    print(f"\n{where}, {count} CHAOS studies, {arch} random model\n")
    _header()
    build = _register_random_model(arch, device)
    _run(cohort, support, ENGINE_NAME, folder / "warm", workers=2, device=device)  # cuDNN autotune, caches
    seconds = _run(cohort, support, ENGINE_NAME, folder / "gpu-1", workers=2, device=device)
    _row(f"{arch} SD-FSMIS", count, 1, seconds, f"model built in {build:.1f} s (excluded)")
    if device == "cuda":
        torch.cuda.empty_cache()
    out = folder / f"gpu-{processes}"
    command = [
        sys.executable,
        __file__,
        "--shard-worker",
        "--data",
        str(data),
        "--support-id",
        str(support_id),
    ]
    command += [
        "--studies",
        str(count),
        "--folder",
        str(folder),
        "--out",
        str(out),
        "--processes",
        str(processes),
        "--arch",
        arch,
        "--device",
        device,
    ]
    workers = [
        subprocess.Popen([*command, "--index", str(i)], stdout=subprocess.PIPE) for i in range(processes)
    ]
    results = [json.loads(w.communicate()[0].decode().strip().splitlines()[-1]) for w in workers]
    if any(w.returncode for w in workers):
        raise SystemExit("a shard process failed")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    builds = max(r["build"] for r in results)
    _row(
        f"{arch} SD-FSMIS",
        count,
        processes,
        wall,
        f"sharing the device; each built its model in {builds:.0f} s",
    )
    missing = [s.id for s in cohort.studies if not (out / f"{s.id}.nii.gz").is_file()]
    if missing:
        raise SystemExit(f"no mask for {missing}")


def shard_worker(args: argparse.Namespace) -> None:
    """One of the processes sharing the GPU: its own model, every n-th study (as under a launcher)."""
    from sd_fsmis.core.cohort.run import Shard

    cohort, support = _cohort(args.data, args.support_id, args.studies, Path(args.folder))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        import torch

        torch.set_num_threads(1)
    build = _register_random_model(args.arch, args.device)
    shard = Shard(args.index, args.processes)
    _run(cohort, support, ENGINE_NAME, Path(args.out) / "warm", workers=1, device=args.device, shard=shard)
    start = time.time()
    _run(cohort, support, ENGINE_NAME, Path(args.out), workers=1, device=args.device, shard=shard)
    print(json.dumps({"start": start, "end": time.time(), "build": build}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["cpu", "gpu", "all"], default="all")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--support-id", type=int, default=8)
    parser.add_argument("--arch", choices=["real", "tiny"], default="real", help="the gpu part's model")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="the gpu part's device")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shard-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard_worker:
        shard_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        if args.mode in ("cpu", "all"):
            bench_cpu(args.data, args.support_id, args.studies, Path(tmp) / "cpu")
        if args.mode in ("gpu", "all"):
            bench_gpu(
                args.data,
                args.support_id,
                args.studies,
                args.processes,
                Path(tmp) / "gpu",
                args.arch,
                args.device,
            )


if __name__ == "__main__":
    main()
