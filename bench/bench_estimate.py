"""How good is the fine-tune wizard's estimate? ``estimate_training`` against a measured training step.

For each variant of ``bench_training.py`` (fp32, bf16, bf16 + gradient checkpointing, LoRA, LoRA + gradient
checkpointing), a random-weight model of the chosen architecture is saved as a model folder, the wizard's
estimate is computed for it (:func:`sd_fsmis.core.training.estimate.estimate_training`: parameter counts
from the safetensors headers, the device's measured matmul throughput), and the same training step is
measured in a fresh process
(:func:`bench_training.one_variant`): seconds per step, and peak memory (CUDA: the allocator's peak; CPU:
the child process's peak resident set, which also holds Python, torch and the frozen networks).

    python bench/bench_estimate.py [--device cpu|cuda] [--arch tiny|real] [--real-cpu] [--variants ...]
        [--model DIR] [--json FILE]

``--model DIR``: estimate for this model folder (of the ``--arch`` architecture) instead of saving a new
random one (saves writing the 4 GB of a real-size model again).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: bench_training variant -> the wizard's settings
SETTINGS = {
    "fp32": dict(precision="fp32", lora=False, gradient_checkpointing=False),
    "bf16": dict(precision="bf16", lora=False, gradient_checkpointing=False),
    "bf16-ckpt": dict(precision="bf16", lora=False, gradient_checkpointing=True),
    "lora": dict(precision="bf16", lora=True, gradient_checkpointing=False),
    "lora-ckpt": dict(precision="bf16", lora=True, gradient_checkpointing=True),
}


def measure(arch: str, device: str, variant: str, steps: int, threads: int | None) -> dict:
    """One variant's measured step (runs in a child process: its peak RSS is its own)."""
    import bench_training

    if threads:
        torch.set_num_threads(threads)
    result = bench_training.one_variant(arch, torch.device(device), variant, steps)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--arch", choices=["tiny", "real"], help="default: real on CUDA, tiny on the CPU")
    parser.add_argument("--real-cpu", action="store_true", help="allow the real size on the CPU (slow)")
    parser.add_argument("--variants", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5 CUDA / 10 tiny / 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (both sides)")
    parser.add_argument("--model", metavar="DIR", help="estimate for this model folder (default: save one)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = args.arch or ("real" if device == "cuda" else "tiny")
    if arch == "real" and device == "cpu" and not args.real_cpu:
        parser.error("the real size on the CPU takes minutes per step: add --real-cpu to run it anyway")
    steps = args.steps or (5 if device == "cuda" else (10 if arch == "tiny" else 1))

    from sd_fsmis.core.model.folder import save_pipeline
    from sd_fsmis.core.model.presets import build_random_pipeline
    from sd_fsmis.core.training.estimate import estimate_training

    machine = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    print(f"# the wizard's estimate vs a measured step: {arch}, {machine}, torch {torch.__version__}")
    print("| variant | est. s/step | measured s/step | ratio | est. peak GiB | measured peak GiB |")
    print("|---|---|---|---|---|---|")
    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sd-fsmis-bench-estimate-") as tmp:
        if args.model:
            folder = Path(args.model)
        else:
            folder = save_pipeline(
                build_random_pipeline(arch, seed=0), Path(tmp) / arch, name=f"bench-{arch}"
            )
        for variant in args.variants:
            estimate = estimate_training(
                folder,
                steps=1,
                accumulation=1,
                shots=1,
                lora_rank=16,
                device=device,
                **SETTINGS[variant],
            )
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                measured = pool.submit(measure, arch, device, variant, steps, args.threads).result()
            peak = measured["peak_memory_gib"] if device == "cuda" else measured["peak_rss_gib"]
            seconds = measured["seconds_per_step"]
            print(
                f"| {variant} | {estimate.seconds_per_step:.3f} | {seconds:.3f} | "
                f"{seconds / estimate.seconds_per_step:.2f} | {estimate.peak_memory_bytes / 2**30:.2f} | "
                f"{peak:.2f}{'' if device == 'cuda' else ' (RSS)'} |",
                flush=True,
            )
            rows.append(
                {
                    **measured,
                    "settings": SETTINGS[variant],
                    "estimate_seconds_per_step": estimate.seconds_per_step,
                    "estimate_peak_gib": estimate.peak_memory_bytes / 2**30,
                    "measured_peak_gib": peak,
                    "peak_kind": "GPU max allocated" if device == "cuda" else "peak RSS",
                }
            )
    if args.json:
        header = {"arch": arch, "device": device, "machine": machine, "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
