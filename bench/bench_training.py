"""Training-step cost of SD-FSMIS: time per optimiser step and peak memory for the trainer's options.

Variants (one episode, K = 1, batch 1, AdamW over the U-Net, ``conv_in_ref`` and the mapper, as the trainer):

- ``fp32``:  fp32, attention through SDPA's plain "math" kernel (no fused attention, as the reference);
- ``bf16``:  bf16 autocast (what ``Accelerator(mixed_precision="bf16")`` does) + fused SDPA;
- ``bf16-ckpt``: ``bf16`` + gradient checkpointing (the trainer's SQI-safe checkpointing function);
- ``lora``:  ``bf16`` + LoRA rank 16 on to_q/to_k/to_v/to_out.0 (U-Net frozen except the input conv);
- ``lora-ckpt``: ``lora`` + gradient checkpointing (the smallest setting the fine-tune wizard offers).

On CUDA the real-size architecture (SD 1.5 U-Net + VAE, DINOv2-base, random weights) runs at 256 x 256; on
the CPU the tiny preset (64 x 64) runs, and the real size only with ``--real-cpu`` (minutes per step).

    python bench/bench_training.py [--device cpu|cuda] [--arch tiny|real] [--steps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("fp32", "bf16", "bf16-ckpt", "lora", "lora-ckpt")


def one_variant(arch: str, device: torch.device, variant: str, steps: int) -> dict:
    """Build a fresh pipeline, run ``1 + steps`` optimiser steps, return seconds/step and peak memory."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sd_fsmis.core.model.presets import build_random_pipeline
    from sd_fsmis.core.training.networks import EpisodeLoss, add_lora, sqi_checkpointing

    where = device if device.type == "cuda" else None  # random weights made on the GPU: seconds, not a minute
    pipeline = build_random_pipeline(arch, seed=0, device=where).to(
        device, torch.float32, channels_last=False
    )
    bf16 = variant != "fp32"
    if variant.startswith("lora"):
        add_lora(pipeline.unet, rank=16, alpha=16.0)
    if variant.endswith("-ckpt"):
        pipeline.unet.enable_gradient_checkpointing(sqi_checkpointing(pipeline.bank))
    pipeline.vae.requires_grad_(False)
    pipeline.image_encoder.requires_grad_(False)
    if bf16 and device.type == "cuda":  # frozen parts in the compute dtype, as the trainer does
        pipeline.vae.to(dtype=torch.bfloat16)
        pipeline.image_encoder.to(dtype=torch.bfloat16)
    model = EpisodeLoss(pipeline).train()
    unet_params = [
        p for p in [*pipeline.unet.parameters(), *pipeline.conv_in_ref.parameters()] if p.requires_grad
    ]
    optimizer = torch.optim.AdamW(
        [{"params": unet_params, "lr": 1e-5}, {"params": list(pipeline.mapper.parameters()), "lr": 5e-5}],
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
    )
    size = pipeline.config.preprocessing.image_size
    gen = torch.Generator().manual_seed(0)
    s_img = torch.rand(1, 1, size, size, generator=gen).to(device)
    q_img = torch.rand(1, 1, size, size, generator=gen).to(device)
    mask = torch.zeros(1, 1, size, size, device=device)
    mask[..., size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def step() -> float:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        kernel = sdpa_kernel(SDPBackend.MATH) if variant == "fp32" else contextlib.nullcontext()
        with autocast, kernel:
            loss = model(s_img, mask, q_img, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up (kernel selection, optimiser state allocation)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # what the allocator held at most (allocated + its cache): what a card must have, besides the context
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
    result = {
        "arch": arch,
        "variant": variant,
        "device": str(device),
        "image_size": size,
        "seconds_per_step": seconds,
        "steps_per_second": 1.0 / seconds,
        "peak_memory_gib": peak,
        "peak_reserved_gib": reserved,
        "trainable_parameters": trainable,
        "threads": torch.get_num_threads(),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--arch", choices=["tiny", "real"], help="default: real on CUDA, tiny on the CPU")
    parser.add_argument("--real-cpu", action="store_true", help="allow the real size on the CPU (slow)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 CUDA / 30 tiny CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    arch = args.arch or ("real" if device.type == "cuda" else "tiny")
    if arch == "real" and device.type == "cpu" and not args.real_cpu:
        parser.error("the real size on the CPU takes minutes per step: add --real-cpu to run it anyway")
    steps = args.steps or (10 if device.type == "cuda" else (30 if arch == "tiny" else 1))
    header = {
        "torch": torch.__version__,
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "CPU",
    }
    results = []
    print(f"# training step, {arch} architecture on {header['machine']} (torch {torch.__version__})")
    print("| variant | s/step | steps/s | peak GiB | trainable params |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        r = one_variant(arch, device, variant, steps)
        gc.collect()  # the variant's networks and optimiser state go before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results.append(r)
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        print(
            f"| {variant} | {r['seconds_per_step']:.3f} | {r['steps_per_second']:.2f} | {peak} | "
            f"{r['trainable_parameters'] / 1e6:.1f} M |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
