"""Benchmark: SD-FSMIS inference on a query volume, our engine versus the reference implementation's way.

Our engine: support encode / VTCT / support pass once per support set, query slices in batches (SQI over one
shared bank), VAE encode/decode batched, inference mode, bf16 + channels_last + SDPA on CUDA; on the CPU the
decoder's upsamplers as sub-pixel convolutions (the same numbers in fewer operations) and freed memory
reused during the segmentation (``--no-subpixel``, ``--no-memory-reuse``; ``--also-stock`` adds a row without
both, timed in the same rounds).
The reference's way: for every query slice a full episode (support encode, DINOv2, support pass, one query
U-Net call, decode), fp32, batch 1, diffusers' layers as they are.

``--repeats N`` times N rounds, each running ours and then the reference way, so that both see the same load
of a shared machine; the speedups are the medians of the per-round ratios. The "CPU-time x" column (CPU
seconds of the process) is the steadier figure on a machine other programs use.

Random weights of the real architectures (SD 1.5 U-Net with 8 input channels, about 860M parameters;
SD 1.5 VAE; DINOv2-base), built in code: no download. Also reports the agreement (Dice) of our binarised
masks with the reference way's (the same computation, so >= 0.99 at fp32).

    python bench/bench_inference.py --device cpu --slices 8 --shots 1 3 --arch real --also-stock
    python bench/bench_inference.py --device cuda --slices 40 --shots 1 3 --arch real

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak resident set size
(Linux: VmHWM, reset before each measurement through /proc/self/clear_refs; elsewhere ``getrusage``, which
is the process's lifetime peak).
"""

from __future__ import annotations

import os

# A shared or busy CPU makes OpenMP worker threads spin-wait for each other (tens of times slower); passive
# waiting costs nothing measurable when the machine is idle. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sd_fsmis.core.device import default_dtype, describe_device, select_device
from sd_fsmis.core.engines.base import SegmentationRequest, SupportExample
from sd_fsmis.core.model.engine import SDFSMISEngine, binarize
from sd_fsmis.core.model.presets import build_random_pipeline


# -- measurements -------------------------------------------------------------------------------------------
def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        except OSError:
            pass


def _peak_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), "GPU max allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "peak RSS"
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "peak RSS (process lifetime)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


# -- data ---------------------------------------------------------------------------------------------------
def phantom_volume(slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A query volume ``[Z, size, size]`` in [0, 1]: a textured ellipsoid "organ" in a body, with noise."""
    rng = np.random.default_rng(seed)
    z = np.linspace(-1.0, 1.0, slices, dtype=np.float32)[:, None, None]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size * 2.0 - 1.0
    body = (rows / 0.9) ** 2 + (cols / 0.8) ** 2 < 1.0
    organ = ((rows - 0.1) / 0.45) ** 2 + ((cols + 0.15) / 0.35) ** 2 + (z / 0.8) ** 2 < 1.0  # [Z, S, S]
    texture = 0.05 * np.sin(12 * rows + 3 * z) * np.cos(9 * cols)
    volume = 0.1 + 0.3 * body + 0.35 * organ + texture + 0.04 * rng.standard_normal(organ.shape)
    volume = (volume - volume.min()) / (volume.max() - volume.min())
    return volume.astype(np.float32), organ


def make_request(volume: np.ndarray, organ: np.ndarray, shots: int) -> SegmentationRequest:
    """K support slices spread over the organ (from the query volume itself, as a user paints them)."""
    present = np.flatnonzero(organ.reshape(organ.shape[0], -1).any(axis=1))
    quantiles = [0.5] if shots == 1 else np.linspace(0.25, 0.75, shots)
    picks = [present[round(q * (len(present) - 1))] for q in quantiles]
    supports = [SupportExample(volume[z], organ[z], slice_index=int(z), from_query=True) for z in picks]
    return SegmentationRequest(query=volume, supports=supports)


# -- the two ways -------------------------------------------------------------------------------------------
@dataclass
class Row:
    method: str
    dtype: str
    shots: int
    slices: int
    batch: int
    seconds: float
    #: CPU time of this process (user + system): on a shared CPU, less sensitive to other load than wall time
    cpu_seconds: float
    peak_bytes: int
    peak_kind: str
    dice_vs_reference: float | None = None
    speedup: float | None = None
    cpu_speedup: float | None = None


def run_ours(
    engine: SDFSMISEngine, request: SegmentationRequest, device: torch.device, subpixel: bool = True
) -> tuple[Row, np.ndarray]:
    engine.pipeline.subpixel_upsampling = subpixel  # the pipeline may be shared with other rows
    _reset_peak(device)
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = engine.segment(request)
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak, kind = _peak_bytes(device)
    row = Row(
        method=f"ours ({engine.name})",
        dtype=str(engine.dtype).replace("torch.", ""),
        shots=len(request.supports),
        slices=request.query.shape[0],
        batch=int(result.info["batch_size"]),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        peak_bytes=peak,
        peak_kind=kind,
    )
    return row, result.mask


def run_reference_way(pipeline, request: SegmentationRequest, device: torch.device) -> tuple[Row, np.ndarray]:
    """A full episode per query slice, batch 1, as the reference runs inference: diffusers' layers as they
    are (no sub-pixel upsampling) and the C library's default handling of freed memory."""
    images = [s.image for s in request.supports]
    masks = [s.mask for s in request.supports]
    soft = np.zeros(request.query.shape, np.float32)
    subpixel, pipeline.subpixel_upsampling = pipeline.subpixel_upsampling, False
    try:
        _reset_peak(device)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for z in range(request.query.shape[0]):
            soft[z] = pipeline.segment_slices(images, masks, request.query[z : z + 1])[0]
        _sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        pipeline.subpixel_upsampling = subpixel
    peak, kind = _peak_bytes(device)
    mask = binarize(soft, pipeline.config.postprocessing)
    row = Row(
        method="reference way (episode per slice)",
        dtype=str(pipeline.dtype).replace("torch.", ""),
        shots=len(request.supports),
        slices=request.query.shape[0],
        batch=1,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        peak_bytes=peak,
        peak_kind=kind,
    )
    return row, mask


def _median(values: list[float]) -> float:
    return float(np.median(values))


# -- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    parser.add_argument("--slices", type=int, default=40, help="query slices per volume (default 40)")
    parser.add_argument("--size", type=int, default=256, help="query slice size in pixels (default 256)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 3], help="support slices (default 1 3)")
    parser.add_argument("--arch", choices=["real", "tiny"], default="real")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="ours")
    parser.add_argument("--batch-size", type=int, default=None, help="ours; default: automatic")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        default="auto",
        help="NHWC layout for ours (auto: on CUDA only; the reference way keeps PyTorch's default layout)",
    )
    parser.add_argument("--skip-reference", action="store_true", help="time our engine only")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed rounds, ours then the reference way in each (interleaved: both see the same load of a "
        "shared machine); times and ratios are the medians over the rounds",
    )
    parser.add_argument(
        "--no-subpixel", action="store_true", help="ours: decode with diffusers' upsamplers as they are"
    )
    parser.add_argument(
        "--no-memory-reuse",
        action="store_true",
        help="ours: the C library's default handling of freed memory",
    )
    parser.add_argument(
        "--also-stock",
        action="store_true",
        help="also time ours at fp32 with neither sub-pixel upsampling nor memory reuse (their share)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    dtype = default_dtype(device, args.dtype)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the engine does; TF32 matmuls stay off (PyTorch default)
    print(
        f"# {args.arch} architecture, random weights; device {describe_device(device)}; "
        f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
        f"{platform.processor() or platform.machine()}",
        flush=True,
    )
    t0 = time.perf_counter()
    # random weights made on a GPU directly (seconds instead of a minute on one CPU core); the same seed on
    # the same device gives both pipelines the same weights
    where = device if device.type == "cuda" else None
    # the reference way: fp32 in PyTorch's default (NCHW) layout, batch 1
    fp32 = build_random_pipeline(args.arch, seed=0, device=where)
    fp32 = fp32.to(device, torch.float32, channels_last=False).eval()
    layout = {"auto": device.type == "cuda", "on": True, "off": False}[args.channels_last]
    if dtype == torch.float32 and not layout:
        ours_pipe = fp32
    else:
        ours_pipe = build_random_pipeline(args.arch, seed=0, device=where)
        ours_pipe = ours_pipe.to(device, dtype, channels_last=layout).eval()
    params = sum(p.numel() for p in fp32.unet.parameters()) / 1e6
    print(f"# built in {time.perf_counter() - t0:.1f} s (U-Net {params:.0f}M parameters)", flush=True)
    reuse = not args.no_memory_reuse
    # (engine, sub-pixel upsampling)
    engines = [
        (
            SDFSMISEngine(ours_pipe, name="engine", batch_size=args.batch_size, reuse_cpu_memory=reuse),
            not args.no_subpixel,
        )
    ]
    if dtype != torch.float32:  # agreement must hold at fp32: time ours at fp32 too (NCHW)
        engines.append(
            (
                SDFSMISEngine(fp32, name="engine fp32", batch_size=args.batch_size, reuse_cpu_memory=reuse),
                not args.no_subpixel,
            )
        )
    if args.also_stock:
        stock = SDFSMISEngine(
            fp32, name="engine fp32, stock", batch_size=args.batch_size, reuse_cpu_memory=False
        )
        engines.append((stock, False))

    volume, organ = phantom_volume(args.slices, args.size)
    rows: list[Row] = []
    for shots in args.shots:
        request = make_request(volume, organ, shots)
        # warm-up: kernels, allocator, and on CUDA cuDNN's autotuning (cudnn.benchmark), once per new shape:
        # there the timed request itself (its batch shapes), and a slice of the reference way (batch 1)
        warm = (
            request
            if device.type == "cuda"
            else SegmentationRequest(query=volume[:2], supports=request.supports)
        )
        for engine, subpixel in engines:
            engine.pipeline.subpixel_upsampling = subpixel
            engine.segment(warm)
        if not args.skip_reference:
            run_reference_way(fp32, SegmentationRequest(query=volume[:1], supports=request.supports), device)
        ours_runs: list[list[tuple[Row, np.ndarray]]] = [[] for _ in engines]
        ref_runs: list[tuple[Row, np.ndarray]] = []
        for round_ in range(args.repeats):
            for runs, (engine, subpixel) in zip(ours_runs, engines):
                runs.append(run_ours(engine, request, device, subpixel))
                row = runs[-1][0]
                print(f"# round {round_ + 1}: {row.method} {shots}-shot: {row.seconds:.2f} s", flush=True)
            if args.skip_reference:
                continue
            ref_runs.append(run_reference_way(fp32, request, device))
            ref = ref_runs[-1][0]
            ratios = ", ".join(f"{ref.seconds / runs[-1][0].seconds:.2f}x" for runs in ours_runs)
            print(
                f"# round {round_ + 1}: reference way {shots}-shot: {ref.seconds:.2f} s (ours {ratios})",
                flush=True,
            )
        for runs in ours_runs:
            row = runs[0][0]
            row.seconds = _median([r.seconds for r, _ in runs])
            row.cpu_seconds = _median([r.cpu_seconds for r, _ in runs])
            row.peak_bytes = max(r.peak_bytes for r, _ in runs)
            if ref_runs:
                ref_mask = ref_runs[0][1]
                row.dice_vs_reference = min(dice(m, ref_mask) for _, m in runs)
                # the ratio of each round (same load), then the median over the rounds
                row.speedup = _median([ref.seconds / r.seconds for (r, _), (ref, _) in zip(runs, ref_runs)])
                row.cpu_speedup = _median(
                    [ref.cpu_seconds / max(r.cpu_seconds, 1e-9) for (r, _), (ref, _) in zip(runs, ref_runs)]
                )
            rows.append(row)
        if ref_runs:
            ref_row = ref_runs[0][0]
            ref_row.seconds = _median([r.seconds for r, _ in ref_runs])
            ref_row.cpu_seconds = _median([r.cpu_seconds for r, _ in ref_runs])
            ref_row.peak_bytes = max(r.peak_bytes for r, _ in ref_runs)
            rows.append(ref_row)

    print()
    header = (
        f"{'method':<36} {'dtype':<9} {'K':>2} {'slices':>6} {'batch':>5} {'s/volume':>9} {'ms/slice':>9} "
        f"{'CPU s':>8} {'peak MiB':>9} {'speedup':>8} {'CPU-time x':>10} {'Dice vs ref':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        speed = f"{r.speedup:.2f}x" if r.speedup else "-"
        cpu_speed = f"{r.cpu_speedup:.2f}x" if r.cpu_speedup else "-"
        agree = f"{r.dice_vs_reference:.4f}" if r.dice_vs_reference is not None else "-"
        print(
            f"{r.method:<36} {r.dtype:<9} {r.shots:>2} {r.slices:>6} {r.batch:>5} {r.seconds:>9.2f} "
            f"{1000 * r.seconds / r.slices:>9.0f} {r.cpu_seconds:>8.1f} {r.peak_bytes / 2**20:>9.0f} "
            f"{speed:>8} {cpu_speed:>10} {agree:>11}"
        )
    print(f"(peak memory: {rows[0].peak_kind})" if rows else "")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "device": describe_device(device), "rows": [asdict(r) for r in rows]}, f
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
