"""Import a checkpoint of the SD-FSMIS reference implementation as a model folder of ours.

The reference saves ``checkpoint-N/unet/`` (a diffusers-style U-Net folder: ``in_channels`` 8, an extra
``in_channels_ref``, its own ``_class_name``; weights = a stock SD 1.x U-Net's plus ``conv_in_ref.weight``
/ ``conv_in_ref.bias``) and ``checkpoint-N/image_projector/`` (the VTCT MLP as ``mlp.0 ... mlp.9``).
The U-Net weights without ``conv_in_ref.*`` are exactly a stock ``UNet2DConditionModel`` with 8 input
channels; ``conv_in_ref.*`` go to our ``SupportInputConv``; the MLP loads into ``VTCTMapper`` as it is.
The VAE and DINOv2 come from their original folders (or Hub ids; a Stable Diffusion folder holding only
``vae/`` is enough, and from the Hub only the VAE is downloaded). The imported model reproduces the
reference's preprocessing (nearest-neighbour resizing), its VTCT mask offset (``mask_alignment =
"reference"``), its 8-bit DINOv2 input and the position-embedding interpolation of the transformers
version it was trained with (4.36.2: ``position_embedding_interpolation = "reference"``, format version 2).

Weights are read with safetensors only; a checkpoint saved as ``.bin`` is refused with a message.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from pathlib import Path

import torch

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.model.config import (
    ArchitectureConfig,
    ModelConfig,
    TrainingProvenance,
)
from sd_fsmis.core.model.create import (
    DINOV2_ALLOW_PATTERNS,
    DINOV2_HUB_ID,
    SD15_HUB_ID,
    _output_folder,
    check_sources,
    preprocessing_recipe,
    resolve_source,
)
from sd_fsmis.core.model.download import SD_VAE_ALLOW_PATTERNS
from sd_fsmis.core.model.folder import PICKLE_SUFFIXES, write_model_folder
from sd_fsmis.core.model.vtct import DinoPreprocessing

log = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_MLP_KEY_RE = re.compile(r"^(?:.*\.)?(mlp\.\d+\.(?:weight|bias))$")


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it holds ``unet/`` and ``image_projector/``, else its latest ``checkpoint-N``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"reference checkpoint folder not found: {path}")
    if (folder / "unet").is_dir() or (folder / "image_projector").is_dir():
        for sub in ("unet", "image_projector"):
            if not (folder / sub).is_dir():
                raise ModelError(f"{folder} is not a reference checkpoint: its {sub}/ subfolder is missing")
        return folder.resolve()
    steps = sorted(
        (int(m.group(1)), child)
        for child in folder.iterdir()
        if child.is_dir() and (m := _CHECKPOINT_RE.match(child.name))
    )
    if not steps:
        raise ModelError(
            f"{folder} holds no reference checkpoint (no unet/ and image_projector/, no checkpoint-N/)"
        )
    chosen = steps[-1][1]
    log.info("importing the latest checkpoint %s", chosen.name)
    return find_checkpoint(chosen)


def _read_safetensors_folder(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of the folder's safetensors weights (single file or shards); pickle-only is refused."""
    from safetensors.torch import load_file

    index_files = sorted(folder.glob("*.safetensors.index.json"))
    if index_files:
        weight_map = json.loads(index_files[0].read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted({folder / name for name in weight_map.values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
        if len(files) > 1:
            preferred = [
                f for f in files if f.name in ("diffusion_pytorch_model.safetensors", "model.safetensors")
            ]
            files = preferred or files[:1]
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelError(
                f"the reference {what} in {folder} is saved as pickle ({', '.join(pickles)}); sd-fsmis reads "
                "safetensors only: convert it to safetensors first (e.g. load it in the reference code and "
                "save it with save_pretrained(..., safe_serialization=True))"
            )
        raise ModelError(f"the reference {what} in {folder} has no weights (*.safetensors)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ModelError(f"the reference {what} is incomplete: {f.name} is missing in {folder}")
        tensors.update(load_file(str(f)))
    return tensors


def reference_unet_config(unet_dir: Path) -> tuple[dict, int]:
    """Our ``UNet2DConditionModel`` config from the reference's, and its ``in_channels_ref``."""
    from diffusers import UNet2DConditionModel

    path = unet_dir / "config.json"
    if not path.is_file():
        raise ModelError(f"the reference unet is incomplete: config.json is missing in {unet_dir}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("in_channels") != 8:
        raise ModelError(f"the reference unet config has in_channels {raw.get('in_channels')}, expected 8")
    in_channels_ref = int(raw.get("in_channels_ref", 8))
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    dropped = sorted(k for k in raw if k not in accepted and not k.startswith("_"))
    if dropped:
        log.info("reference unet config: dropping keys %s", dropped)
    config = {k: v for k, v in raw.items() if k in accepted}
    return config, in_channels_ref


def _check_state_dict(unet_config: dict, state: dict[str, torch.Tensor]) -> None:
    """ModelError unless ``state`` fits a stock U-Net of ``unet_config`` exactly (checked on "meta")."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        skeleton = UNet2DConditionModel.from_config(unet_config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise ModelError("the reference unet weights do not match its config: " + ", ".join(parts))


def load_reference_unet(unet_dir: Path):
    """The reference U-Net as (stock ``UNet2DConditionModel`` with 8 inputs, ``SupportInputConv``)."""
    from diffusers import UNet2DConditionModel

    from sd_fsmis.core.model.input_convolutions import SupportInputConv

    config, in_channels_ref = reference_unet_config(unet_dir)
    state = _read_safetensors_folder(unet_dir, "unet")
    ref_state = {k[len("conv_in_ref.") :]: state.pop(k) for k in list(state) if k.startswith("conv_in_ref.")}
    if "weight" not in ref_state:
        raise ModelError(f"the reference unet weights in {unet_dir} have no conv_in_ref.weight")
    _check_state_dict(config, state)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(state, strict=True, assign=True)
    _check_no_meta(unet, "unet")
    weight = ref_state["weight"]  # [320, 8, 3, 3]
    if weight.shape[1] != in_channels_ref:
        raise ModelError(
            f"conv_in_ref.weight has {weight.shape[1]} input channels, the config says {in_channels_ref}"
        )
    conv_in_ref = SupportInputConv(
        in_channels=weight.shape[1],
        out_channels=weight.shape[0],
        kernel_size=weight.shape[-1],
        padding=weight.shape[-1] // 2,
    )
    conv_in_ref.conv.load_state_dict(
        {"weight": weight, **({"bias": ref_state["bias"]} if "bias" in ref_state else {})}, strict=True
    )
    return unet, conv_in_ref


def _check_no_meta(module: torch.nn.Module, what: str) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"the reference {what} weights left {len(left)} tensors unset (e.g. {left[0]})")


def load_reference_mapper(projector_dir: Path):
    """The reference ``image_projector`` (linears mlp.0/.3/.6/.9, LayerNorms mlp.1/.4/.7) as VTCTMapper."""
    from sd_fsmis.core.model.vtct import VTCTMapper

    state = _read_safetensors_folder(projector_dir, "image_projector")
    mlp = {}
    for key, value in state.items():
        match = _MLP_KEY_RE.match(key)
        if match:
            mlp[match.group(1)] = value
    linear_ids = sorted(int(k.split(".")[1]) for k in mlp if k.endswith(".weight") and mlp[k].ndim == 2)
    if len(linear_ids) < 2 or linear_ids != list(range(0, 3 * len(linear_ids) - 2, 3)):
        raise ModelError(
            f"the reference image_projector in {projector_dir} is not the expected MLP (linear layers at "
            f"mlp.0, mlp.3, mlp.6, mlp.9; found {['mlp.' + str(i) for i in linear_ids]})"
        )
    first, last = mlp[f"mlp.{linear_ids[0]}.weight"], mlp[f"mlp.{linear_ids[-1]}.weight"]
    mapper = VTCTMapper(
        in_dim=first.shape[1],
        hidden_dim=first.shape[0],
        out_dim=last.shape[0],
        num_hidden_layers=len(linear_ids) - 2,
    )
    try:
        mapper.load_state_dict(mlp, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"the reference image_projector does not fit the VTCT mapper: {str(exc).splitlines()[0]}"
        ) from None
    return mapper


def import_reference_checkpoint(
    checkpoint: str | os.PathLike[str],
    sd: str | os.PathLike[str] = SD15_HUB_ID,
    dinov2: str | os.PathLike[str] = DINOV2_HUB_ID,
    *,
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
    copy_weights: bool = True,
    description: str = "",
) -> Path:
    """Write a model folder from a reference checkpoint (+ SD's VAE, + DINOv2); return its folder."""
    ckpt = find_checkpoint(checkpoint)
    target, model_name = _output_folder(out, name)
    if target.is_dir() and any(target.iterdir()):
        raise ModelError(f"cannot write the model to {target}: the folder exists and is not empty")
    unet, conv_in_ref = load_reference_unet(ckpt / "unet")
    mapper = load_reference_mapper(ckpt / "image_projector")
    sd_dir = resolve_source(sd, "Stable Diffusion", SD_VAE_ALLOW_PATTERNS)
    dinov2_dir = resolve_source(dinov2, "DINOv2", DINOV2_ALLOW_PATTERNS)
    _unet_cfg, vae_cfg, dino_cfg = check_sources(sd_dir, dinov2_dir, need_unet=False)
    if mapper.config.out_dim != unet.config.cross_attention_dim:
        raise ModelError(
            "the reference image_projector's output width differs from the unet's cross-attention"
        )
    if mapper.config.in_dim != int(dino_cfg.get("hidden_size", 768)):
        raise ModelError(
            f"the reference image_projector takes {mapper.config.in_dim}-d features; {dinov2_dir} gives "
            f"{dino_cfg.get('hidden_size')}"
        )
    match = _CHECKPOINT_RE.match(ckpt.name)
    preprocessing, vtct = preprocessing_recipe("reference")
    config = ModelConfig(
        name=model_name,
        description=description or f"imported reference checkpoint {ckpt.name}",
        base=f"reference checkpoint {ckpt.name}",
        architecture=ArchitectureConfig(
            vae_scaling_factor=float(vae_cfg.get("scaling_factor", 0.18215)),
            cross_attention_dim=int(unet.config.cross_attention_dim),
            image_encoder_dim=mapper.config.in_dim,
            mapper_hidden_dim=mapper.config.hidden_dim,
        ),
        preprocessing=preprocessing,
        vtct=vtct,
        training=TrainingProvenance(
            kind="reference-import",
            sources={"checkpoint": str(ckpt), "stable_diffusion": str(sd), "dinov2": str(dinov2)},
            steps=int(match.group(1)) if match else 0,
            notes="trained by the SD-FSMIS reference implementation",
        ),
    )
    return write_model_folder(
        target,
        config=config,
        unet=unet,
        conv_in_ref=conv_in_ref,
        mapper=mapper,
        vae=sd_dir / "vae",
        image_encoder=dinov2_dir,
        dino_preprocessing=DinoPreprocessing.load(dinov2_dir),
        copy_weights=copy_weights,
    )
