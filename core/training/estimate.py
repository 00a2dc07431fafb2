"""The memory and time fine-tuning a model needs on this machine, before starting (the wizard's estimate).

:func:`estimate_training` reads the model folder without loading any weights (the safetensors headers give
every tensor's shape) and combines exact parameter counts with rules of thumb for what cannot be counted.
It is an estimate to warn early and to suggest LoRA or gradient checkpointing, not a measurement.

Memory (peak, per process):

- trained parameters: fp32 weights 4 B + gradients 4 B + AdamW's two moments 8 B = 16 B each. Full
  fine-tuning trains the U-Net, the support input convolution ``conv_in_ref`` and the VTCT mapper; with LoRA
  only the adapters (``rank * (in + out)`` for every ``to_q``/``to_k``/``to_v``/``to_out.0`` projection of
  the U-Net, as :func:`sd_fsmis.core.training.networks.add_lora` adds them), the U-Net's ``conv_in``,
  ``conv_in_ref`` and the mapper are trained;
- frozen weights: the VAE and DINOv2 in the mixed-precision dtype on a GPU (fp32 otherwise; an fp16 VAE that
  asks for ``force_upcast`` stays fp32), the frozen U-Net weights under LoRA in fp32 (as the trainer keeps
  them, autocast computes in half precision);
- activations kept for the backward pass: one episode runs the U-Net on the K support slices (recording
  the SQI bank) and on the query slice, both with gradients (:meth:`SDFSMISPipeline.training_loss`), so
  ``K + 1`` U-Net samples per micro-batch. Rule of thumb used: Stable Diffusion 1.5's U-Net at 64x64
  latents, batch 1, half-precision autocast and memory-efficient attention keeps about
  :data:`SD15_ACTIVATION_BYTES` (5 GiB) of activations without checkpointing — community reports for SD 1.5
  LoRA training at 512 px, batch 1, fp16, without checkpointing peak at 7-8 GB, of which about 2 GB are the
  frozen weights and 0.5 GB the CUDA context. It is scaled by the number of latent pixels
  ``(latent / 64)^2``, by the U-Net's width and depth relative to SD 1.5 (``sum(block_out_channels) / 3520
  * layers_per_block / 2``) and doubled in fp32. Gradient checkpointing keeps only block inputs and
  recomputes one block at a time: activations divided by :data:`CHECKPOINTING_FACTOR` (4, an assumption);
- transient frozen work: the VAE encodes ``2K + 2`` images (support and query images and masks) and DINOv2
  sees the K support images, without gradients; their largest feature maps are counted;
- on CUDA, :data:`CUDA_CONTEXT_BYTES` for the context and allocator slack.

Time: the U-Net forward pass of SD 1.5 at 64x64 latents costs about 339 GMACs = 678 GFLOPs per sample
(BK-SDM, Kim et al. 2023, table 1), scaled by ``(latent / 64)^2`` and by the U-Net's parameter count relative
to 860M; forward + backward is 3x the forward (2x with LoRA: no weight gradients for the frozen layers), +1x
with gradient checkpointing (the recomputation); the VAE encoder's and DINOv2's forward FLOPs are computed
from their configs. The sum, times ``K + 1`` samples and the accumulation steps, is divided by the device's
dense matmul throughput measured with a short benchmark in the training dtype (``measure=True``; cached per
device and dtype for the process) times :data:`EFFICIENCY` (0.35: the share of peak matmul speed a U-Net
training step reaches with its convolutions, normalisations and memory-bound element-wise work; an
assumption). On a GPU, :data:`GPU_OVERHEAD_PER_MICRO_STEP_S` is added per micro-step for kernel launches
(small models are bound by it). Validation and checkpoints are not included.

Over 500 lines: the memory and the time model share the parameter counts and the device probe; split apart,
each would need the other's internals.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_fsmis.core.errors import DeviceError, ModelError

log = logging.getLogger(__name__)

GiB = 1024**3
#: activations of SD 1.5's U-Net, 64x64 latents, one sample, half precision, no checkpointing (see above)
SD15_ACTIVATION_BYTES = 5 * GiB
#: sum(block_out_channels) * layers_per_block of SD 1.5's U-Net
SD15_UNET_WIDTH = (320 + 640 + 1280 + 1280) * 2
SD15_UNET_PARAMS = 860e6
#: forward FLOPs of SD 1.5's U-Net per sample at 64x64 latents (BK-SDM: 339 GMACs)
SD15_UNET_FORWARD_FLOPS = 2 * 339e9
#: activations are divided by this with gradient checkpointing
CHECKPOINTING_FACTOR = 4.0
#: CUDA context and allocator fragmentation
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
#: share of the measured matmul throughput a training step reaches
EFFICIENCY = 0.35
#: fixed cost of one micro-step on a GPU (kernel launches and Python for the two U-Net calls forward and
#: backward, the VAE, DINOv2, the optimiser step): small models are bound by it, not by FLOPs (an assumption)
GPU_OVERHEAD_PER_MICRO_STEP_S = 0.05
#: memory left unused for safety when judging whether an estimate fits
HEADROOM = 0.9
#: trained parameter: fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq
BYTES_PER_TRAINED_PARAM = 16
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: throughput used when not measuring (FLOP/s): conservative guesses
DEFAULT_THROUGHPUT = {"cuda": 50e12, "mps": 5e12, "cpu": 50e9}

_throughput_cache: dict[tuple[str, str], float] = {}


@dataclass
class ResourceEstimate:
    """Memory and time a training run with given settings needs on one device."""

    #: "cuda:0 NVIDIA H200", "mps", "cpu"
    device: str
    peak_memory_bytes: int
    #: GPU memory (CUDA), physical RAM (CPU), the recommended limit (MPS); None when unknown
    available_memory_bytes: int | None
    seconds_per_step: float
    total_seconds: float
    fits: bool
    suggestions: list[str] = field(default_factory=list)
    #: bytes by part: weights, gradients, optimizer, activations, frozen, frozen_activations, runtime
    breakdown: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    #: "bf16", "fp16" or "fp32": the dtype the U-Net computes in
    compute_dtype: str = "fp32"
    #: measured (or assumed) dense matmul FLOP/s of the device in that dtype
    throughput_flops: float = 0.0
    measured: bool = False
    trained_parameters: int = 0
    total_parameters: int = 0
    #: the time calibrated with real, timed steps (:mod:`sd_fsmis.core.training.calibration`)
    calibrated: bool = False
    #: the total time's likely range (s), from the spread of the timed steps (None: not calibrated)
    total_seconds_range: tuple[float, float] | None = None

    def time_text(self) -> str:
        """ "~9 min (8-11 min) for 1000 steps, 0.57 s/step measured" or an uncalibrated "~26 s ..."."""
        if self.total_seconds_range is not None:
            low, high = self.total_seconds_range
            span = f" ({format_duration(low)} to {format_duration(high)})"
        else:
            span = ""
        how = "measured on the device" if self.calibrated else "predicted, not measured: press Measure"
        return (
            f"~{format_duration(self.total_seconds)}{span} for {self.steps} steps "
            f"({self.seconds_per_step:.2f} s/step, {how})"
        )

    def summary(self) -> str:
        """One or two lines for the wizard: memory against what the device has, and the time."""
        memory = f"~{_gb(self.peak_memory_bytes)} of memory"
        if self.available_memory_bytes is not None:
            memory += f" (of {_gb(self.available_memory_bytes)} on {self.device})"
        else:
            memory += f" on {self.device}"
        verdict = "" if self.fits else " — does NOT fit"
        return f"{memory}{verdict}\n{self.time_text()}"


def _gb(n: float) -> str:
    return f"{n / GiB:.1f} GB"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# -- reading the model without loading it ------------------------------------------------------------------
def tensor_shapes(folder: str | os.PathLike[str], library: str = "diffusers") -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of a component folder, from the safetensors headers (no weights read)."""
    from safetensors import safe_open

    from sd_fsmis.core.model.folder import safetensors_files

    shapes: dict[str, tuple[int, ...]] = {}
    for path in safetensors_files(Path(folder), library):
        try:
            with safe_open(str(path), framework="numpy") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    shapes[key] = tuple(int(d) for d in f.get_slice(key).get_shape())
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot read the weights' header of {path}: {exc}") from None
    return shapes


def count_parameters(shapes: dict[str, tuple[int, ...]]) -> int:
    """Total number of elements of ``shapes``."""
    return sum(math.prod(shape) for shape in shapes.values())


def lora_parameters(unet_shapes: dict[str, tuple[int, ...]], rank: int) -> int:
    """Parameters of rank-``rank`` LoRA adapters on the U-Net's attention projections (``A: r x in``,
    ``B: out x r``), for the modules :func:`sd_fsmis.core.training.networks.add_lora` targets."""
    total = 0
    for key, shape in unet_shapes.items():
        if not key.endswith(".weight") or len(shape) != 2:
            continue
        module = key[: -len(".weight")]
        if any(module == t or module.endswith("." + t) for t in LORA_TARGETS):
            out_features, in_features = shape
            total += rank * (in_features + out_features)
    return total


@dataclass
class ModelSizes:
    """Parameter counts of a model folder's components and the configs the estimate needs."""

    params: dict[str, int]
    unet_shapes: dict[str, tuple[int, ...]]
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    dino_config: dict[str, Any]
    image_size: int


def read_model_sizes(model: str | os.PathLike[str]) -> ModelSizes:
    """Parameter counts of the model ``model`` (store name or folder) without loading its weights."""
    from sd_fsmis.core.model.folder import COMPONENT_LIBRARY, component_dirs, validate_model_folder
    from sd_fsmis.core.model.store import resolve_model

    folder = resolve_model(model)
    config = validate_model_folder(folder)
    dirs = component_dirs(folder, config)
    params: dict[str, int] = {}
    unet_shapes: dict[str, tuple[int, ...]] = {}
    for name, path in dirs.items():
        shapes = tensor_shapes(path, COMPONENT_LIBRARY[name])
        params[name] = count_parameters(shapes)
        if name == "unet":
            unet_shapes = shapes
    return ModelSizes(
        params=params,
        unet_shapes=unet_shapes,
        unet_config=_read_json(dirs["unet"] / "config.json"),
        vae_config=_read_json(dirs["vae"] / "config.json"),
        dino_config=_read_json(dirs["image_encoder"] / "config.json"),
        image_size=int(config.preprocessing.image_size),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


# -- FLOPs of the frozen parts -----------------------------------------------------------------------------
def vae_encoder_flops(vae_config: dict[str, Any], image_size: int) -> float:
    """Forward FLOPs of a diffusers VAE encoder on one ``image_size`` image (3x3 convolutions of its
    resnets and downsamplers, the mid block's attention; norms and activations ignored)."""
    channels = [int(c) for c in vae_config.get("block_out_channels", (128, 256, 512, 512))]
    layers = int(vae_config.get("layers_per_block", 2))
    size = float(image_size)
    macs = size * size * int(vae_config.get("in_channels", 3)) * channels[0] * 9  # conv_in
    previous = channels[0]
    for i, width in enumerate(channels):
        for j in range(layers):
            c_in = previous if j == 0 else width
            macs += size * size * 9 * (c_in * width + width * width)
            if c_in != width:
                macs += size * size * c_in * width  # 1x1 shortcut
        previous = width
        if i < len(channels) - 1:
            size /= 2
            macs += size * size * 9 * width * width  # stride-2 downsampling conv
    width, tokens = channels[-1], size * size
    macs += 2 * tokens * 9 * 2 * width * width  # two mid-block resnets
    macs += 4 * tokens * width * width + 2 * tokens * tokens * width  # mid-block attention
    return 2.0 * macs


def vit_flops(dino_config: dict[str, Any], image_size: int = 224) -> float:
    """Forward FLOPs of a ViT (DINOv2) on one image: 2 x parameters-per-token x tokens + attention."""
    hidden = int(dino_config.get("hidden_size", 768))
    layers = int(dino_config.get("num_hidden_layers", 12))
    mlp = float(dino_config.get("mlp_ratio", 4))
    patch = int(dino_config.get("patch_size", 14))
    tokens = (image_size // patch) ** 2 + 1
    per_layer_macs = tokens * (4 * hidden * hidden + 2 * mlp * hidden * hidden) + 2 * tokens * tokens * hidden
    return 2.0 * layers * per_layer_macs


# -- the device --------------------------------------------------------------------------------------------
def _resolve_device(device: str):
    from sd_fsmis.core.device import select_device

    return select_device(device)


def _compute_dtype(device_type: str, precision: str) -> str:
    """The trainer's mixed precision (see :func:`sd_fsmis.core.training.trainer.mixed_precision_for`) as a
    name."""
    import torch

    text = (precision or "auto").lower()
    if text not in ("auto", "fp32", "bf16", "fp16"):
        raise DeviceError(f"unknown precision '{precision}' (choose auto, fp32, bf16 or fp16)")
    if text == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if text == "fp16" and device_type != "cuda":
        raise DeviceError("fp16 mixed precision needs a CUDA GPU; use --precision fp32 or bf16")
    return text


def device_label(dev: Any) -> str:
    """``cuda:0 NVIDIA H200``, ``mps`` or ``cpu``."""
    if dev.type == "cuda":
        import torch

        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_properties(index).name}"
    return dev.type


def available_memory(dev: Any) -> int | None:
    """Total GPU memory (CUDA), the recommended working set (MPS) or physical RAM (CPU); None if unknown."""
    import torch

    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    if dev.type == "mps":
        getter = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
        try:
            return int(getter()) if getter is not None else None
        except RuntimeError:
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def matmul_throughput(dev: Any, dtype_name: str, *, seconds: float = 0.3) -> float:
    """Dense matmul FLOP/s of ``dev`` in ``dtype_name``, measured for about ``seconds`` (cached)."""
    import torch

    key = (str(dev), dtype_name)
    if key in _throughput_cache:
        return _throughput_cache[key]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name, torch.float32)
    if dev.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    n = 4096 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()

    with torch.no_grad():
        (a @ b).sum().item()  # warm-up (kernel selection, lazy init)
        sync()
        count, start = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            if count % 4 == 0:
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
    value = 2.0 * n**3 * count / elapsed
    _throughput_cache[key] = value
    return value


# -- the estimate ------------------------------------------------------------------------------------------
@dataclass
class _Memory:
    parts: dict[str, int]

    @property
    def peak(self) -> int:
        return sum(self.parts.values())


def _memory(
    sizes: ModelSizes,
    *,
    shots: int,
    batch_size: int,
    lora: bool,
    lora_rank: int,
    checkpointing: bool,
    dtype_name: str,
    device_type: str,
) -> tuple[_Memory, int]:
    """Bytes by part and the number of trained parameters."""
    p = sizes.params
    half = device_type == "cuda" and dtype_name in ("bf16", "fp16")
    frozen_bytes = 2 if half else 4
    if lora:
        conv_in = count_parameters({k: v for k, v in sizes.unet_shapes.items() if k.startswith("conv_in.")})
        trained = lora_parameters(sizes.unet_shapes, lora_rank) + conv_in + p["conv_in_ref"] + p["mapper"]
        frozen_unet = 4 * (p["unet"] - conv_in)  # the trainer keeps the frozen U-Net in fp32
    else:
        trained = p["unet"] + p["conv_in_ref"] + p["mapper"]
        frozen_unet = 0
    vae_bytes = 4 if (dtype_name == "fp16" and sizes.vae_config.get("force_upcast")) else frozen_bytes
    frozen = frozen_unet + vae_bytes * p["vae"] + frozen_bytes * p["image_encoder"]

    latent = sizes.image_size / 8
    unet_cfg = sizes.unet_config
    width = sum(int(c) for c in unet_cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    width *= int(unet_cfg.get("layers_per_block", 2))
    per_sample = SD15_ACTIVATION_BYTES * (latent / 64) ** 2 * (width / SD15_UNET_WIDTH)
    if dtype_name == "fp32":
        per_sample *= 2
    if checkpointing:
        per_sample /= CHECKPOINTING_FACTOR
    activations = int(per_sample * (shots + 1) * batch_size)

    # transient, no gradients: the VAE's largest feature maps for 2K+2 images, DINOv2 for K images
    vae_channels = [int(c) for c in sizes.vae_config.get("block_out_channels", (128, 256, 512, 512))]
    vae_maps = 3 * vae_channels[0] * sizes.image_size**2 * vae_bytes
    hidden = int(sizes.dino_config.get("hidden_size", 768))
    dino_maps = 6 * 257 * hidden * frozen_bytes
    frozen_activations = int(((2 * shots + 2) * vae_maps + shots * dino_maps) * batch_size)

    parts = {
        "weights": 4 * trained,
        "gradients": 4 * trained,
        "optimizer": 8 * trained,
        "activations": activations,
        "frozen": int(frozen),
        "frozen_activations": frozen_activations,
        "runtime": CUDA_CONTEXT_BYTES if device_type == "cuda" else 0,
    }
    return _Memory(parts), trained


def _step_flops(
    sizes: ModelSizes, *, shots: int, batch_size: int, accumulation: int, lora: bool, checkpointing: bool
) -> float:
    latent = sizes.image_size / 8
    unet_forward = SD15_UNET_FORWARD_FLOPS * (latent / 64) ** 2 * (sizes.params["unet"] / SD15_UNET_PARAMS)
    factor = (2.0 if lora else 3.0) + (1.0 if checkpointing else 0.0)
    trained_path = unet_forward * factor * (shots + 1)
    frozen = (2 * shots + 2) * vae_encoder_flops(sizes.vae_config, sizes.image_size)
    frozen += shots * vit_flops(sizes.dino_config)
    return (trained_path + frozen) * batch_size * accumulation


def estimate_training(
    model: str | os.PathLike[str],
    *,
    steps: int,
    batch_size: int = 1,
    accumulation: int,
    shots: int,
    lora: bool,
    lora_rank: int,
    gradient_checkpointing: bool,
    precision: str,
    device: str = "auto",
    measure: bool = True,
) -> ResourceEstimate:
    """Estimate peak memory and time of training ``model`` with these settings on ``device``.

    Nothing is loaded but the safetensors headers and configs; ``measure`` runs a ~0.3 s matmul benchmark
    on the device (once per device and dtype in a process). See the module docstring for the rules used.
    ModelError for an unusable model folder, DeviceError for a device that is not there.
    """
    if steps < 0 or batch_size < 1 or accumulation < 1 or shots < 1 or lora_rank < 1:
        raise ModelError("steps, batch size, accumulation, shots and LoRA rank must be positive")
    sizes = read_model_sizes(model)
    dev = _resolve_device(device)
    dtype_name = _compute_dtype(dev.type, precision)
    kwargs = dict(shots=shots, batch_size=batch_size, dtype_name=dtype_name, device_type=dev.type)
    memory, trained = _memory(
        sizes, lora=lora, lora_rank=lora_rank, checkpointing=gradient_checkpointing, **kwargs
    )
    if measure:
        throughput, measured = matmul_throughput(dev, dtype_name), True
    else:
        throughput, measured = DEFAULT_THROUGHPUT.get(dev.type, DEFAULT_THROUGHPUT["cpu"]), False
    flops = _step_flops(
        sizes,
        shots=shots,
        batch_size=batch_size,
        accumulation=accumulation,
        lora=lora,
        checkpointing=gradient_checkpointing,
    )
    seconds_per_step = flops / (throughput * EFFICIENCY)
    if dev.type in ("cuda", "mps"):
        seconds_per_step += GPU_OVERHEAD_PER_MICRO_STEP_S * accumulation * batch_size
    available = available_memory(dev)
    peak = memory.peak
    fits = available is None or peak <= HEADROOM * available

    suggestions: list[str] = []
    tight = available is not None and peak > 0.8 * available
    if not fits or tight:
        if not lora:
            with_lora, _ = _memory(
                sizes, lora=True, lora_rank=lora_rank, checkpointing=gradient_checkpointing, **kwargs
            )
            suggestions.append(f"LoRA (--lora) trains ~{_gb(peak - with_lora.peak)} less")
        if not gradient_checkpointing:
            with_ckpt, _ = _memory(sizes, lora=lora, lora_rank=lora_rank, checkpointing=True, **kwargs)
            suggestions.append(
                f"gradient checkpointing (--gradient-checkpointing) saves ~{_gb(peak - with_ckpt.peak)}, "
                "about a third slower"
            )
        if dtype_name == "fp32" and dev.type == "cuda":
            suggestions.append("bf16 mixed precision (--precision bf16) halves the activations")
        smallest, _ = _memory(sizes, lora=True, lora_rank=lora_rank, checkpointing=True, **kwargs)
        if not fits and available is not None and smallest.peak > HEADROOM * available:
            suggestions.append(
                f"even with LoRA and gradient checkpointing this needs ~{_gb(smallest.peak)}, more than "
                f"{_gb(available)}: use fewer shots or a device with more memory"
            )
    if available is None:
        suggestions.append(f"the memory of {device_label(dev)} is unknown: the estimate cannot be checked")
    if dev.type == "cpu":
        suggestions.append(
            f"no GPU: {format_duration(seconds_per_step * steps)} at this speed; a CUDA GPU is ~100x faster"
        )
    return ResourceEstimate(
        device=device_label(dev),
        peak_memory_bytes=peak,
        available_memory_bytes=available,
        seconds_per_step=seconds_per_step,
        total_seconds=seconds_per_step * steps,
        fits=fits,
        suggestions=suggestions,
        breakdown=dict(memory.parts),
        steps=steps,
        compute_dtype=dtype_name,
        throughput_flops=throughput,
        measured=measured,
        trained_parameters=trained,
        total_parameters=sum(sizes.params.values()),
    )
