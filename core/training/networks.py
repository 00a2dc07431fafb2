"""The networks of a training step: the episode loss module, LoRA adapters (added, merged), and gradient
checkpointing that replays the SQI support bank.

Gradient checkpointing: the SQI attention processors read the support bank's mode when called; a
recomputation during the backward pass would see the bank already cleared. :func:`sqi_checkpointing`
restores the bank's mode and entries around each recomputation (``context_fn`` of ``torch.utils.checkpoint``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


# ------------------------------------------------------------------------------------------ the networks
class EpisodeLoss(torch.nn.Module):
    """The trained networks as one module; ``forward`` is the pipeline's episode loss (for ``prepare``)."""

    def __init__(self, pipeline: Any) -> None:
        super().__init__()
        self.unet = pipeline.unet
        self.conv_in_ref = pipeline.conv_in_ref
        self.mapper = pipeline.mapper
        self._pipeline = [pipeline]  # not a sub-module: the frozen VAE / DINOv2 stay out of the state

    @property
    def pipeline(self) -> Any:
        return self._pipeline[0]

    def forward(
        self,
        support_images01: torch.Tensor,
        support_masks01: torch.Tensor,
        query_images01: torch.Tensor,
        query_masks01: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.pipeline.training_loss(
            support_images01, support_masks01, query_images01, query_masks01, generator=generator
        )


def sqi_checkpointing(bank: Any) -> Callable[..., Any]:
    """A diffusers ``gradient_checkpointing_func`` that replays the SQI bank's state on recomputation."""
    from torch.utils.checkpoint import checkpoint

    def func(module: torch.nn.Module, *args: Any) -> Any:
        state = bank.snapshot()  # the bank as the forward pass saw it, replayed when the layer is recomputed
        return checkpoint(
            module.__call__,
            *args,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), bank.replay(state)),
        )

    return func


def add_lora(unet: torch.nn.Module, rank: int, alpha: float) -> None:
    """Freeze the U-Net except LoRA adapters on its attention projections and the input convolution."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    )
    unet.conv_in.requires_grad_(True)


def merged_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``unet`` with any LoRA adapters merged into plain layers (for the model folder)."""
    from peft.tuners.lora import LoraLayer

    if not any(isinstance(m, LoraLayer) for m in unet.modules()):
        return unet
    merged = copy.deepcopy(unet)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = merged.get_submodule(parent_name) if parent_name else merged
            setattr(parent, child, module.get_base_layer())
    merged._hf_peft_config_loaded = False
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    return merged
