"""Compute devices: choose one (CUDA, then Apple MPS, then CPU), its default precision, and describe it.

A device the user asked for but that is missing raises :class:`~sd_fsmis.core.errors.DeviceError` with one
line saying why and what to do, never a torch traceback.
"""

from __future__ import annotations

import torch

from sd_fsmis.core.errors import DeviceError

#: Names accepted by :func:`select_device` (``cuda:N`` too).
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
#: Names accepted by :func:`default_dtype`.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")

_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for ``name``: ``auto`` picks CUDA, then MPS, then CPU.

    ``cuda``, ``cuda:N`` and ``mps`` raise :class:`DeviceError` when that device is not available.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceError(
                "device 'mps' was asked for but Apple MPS is not available; use --device auto or cpu"
            )
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            reason = (
                "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            )
            raise DeviceError(f"device '{text}' was asked for but {reason}; use --device auto or cpu")
        index = torch.cuda.current_device()
        if ":" in text:
            try:
                index = int(text.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"unknown device '{name}' (expected cuda:N with N a number)") from None
            if not 0 <= index < torch.cuda.device_count():
                raise DeviceError(
                    f"device '{text}' was asked for but only {torch.cuda.device_count()} CUDA GPU(s) "
                    "are visible"
                )
        return torch.device("cuda", index)
    raise DeviceError(f"unknown device '{name}' (choose one of: {', '.join(DEVICE_CHOICES)})")


def default_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Inference precision: bf16 on CUDA GPUs that support it (else fp16), fp32 on CPU and MPS.

    ``precision`` (``fp32``, ``bf16``, ``fp16``) forces a choice; half precision on the CPU is refused
    because it is slower than fp32 there and not what the published numbers used.
    """
    text = (precision or "auto").strip().lower()
    if text not in PRECISION_CHOICES:
        raise DeviceError(f"unknown precision '{precision}' (choose one of: {', '.join(PRECISION_CHOICES)})")
    if text != "auto":
        dtype = _PRECISIONS[text]
        if device.type == "cpu" and dtype == torch.float16:
            raise DeviceError("fp16 is not supported on the CPU; use fp32 (or bf16)")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def describe_device(device: torch.device) -> str:
    """A short description for the status bar, e.g. ``"NVIDIA H200 (139.8 GiB)"`` or ``"CPU"``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return "CPU"


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (``torch.cuda.mem_get_info``); None elsewhere."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def empty_cache(device: torch.device) -> None:
    """Give cached blocks back to the driver (after an out-of-memory error)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an accelerator out-of-memory error (CUDA, MPS)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
