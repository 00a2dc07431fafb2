"""Base models: Stable Diffusion 1.5 + DINOv2 after the method's "weight preprocessing", or a random preset.

Weight preprocessing: the SD U-Net's 4-channel ``conv_in`` becomes the 8-channel ``conv_in`` and the support
``conv_in_ref`` (weights repeated twice along the input channels and halved, biases copied); the VTCT mapper
starts from seeded random weights; the VAE and DINOv2 are used as they are.

A source that is an existing local folder is used in place. Anything else that looks like a Hub id
(``owner/name``) is downloaded by :mod:`sd_fsmis.core.model.download` (only the needed configs and
safetensors files, free disk space checked first, progress in bytes, cancellable) into ``HF_HOME``. A
missing folder that looks like a path is an error, never a download.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import torch

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.core.model.config import (
    ArchitectureConfig,
    ModelConfig,
    PreprocessingConfig,
    TrainingProvenance,
    VTCTConfig,
)
from sd_fsmis.core.model.download import (
    DEFAULT_DINOV2_REPO,
    DEFAULT_SD_REPO,
    DINOV2_ALLOW_PATTERNS,
    SD_ALLOW_PATTERNS,
    download_repo,
    download_repos,
)
from sd_fsmis.core.model.folder import check_component_folder, safetensors_files, write_model_folder
from sd_fsmis.core.model.store import model_path
from sd_fsmis.core.model.vtct import DinoPreprocessing

log = logging.getLogger(__name__)

SD15_HUB_ID = DEFAULT_SD_REPO
DINOV2_HUB_ID = DEFAULT_DINOV2_REPO
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# -- sources ------------------------------------------------------------------------------------------------
def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` without a leading ``.``/``~``/``/``, a drive letter or backslashes."""
    return bool(_HUB_ID_RE.match(text)) and ".." not in text


def download_from_hub(
    repo_id: str,
    allow_patterns: list[str],
    what: str,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Download (or reuse from the cache) the files of ``repo_id`` matching ``allow_patterns``; the free
    disk space is checked first (see :func:`sd_fsmis.core.model.download.download_repo`)."""
    log.info("downloading %s from the Hugging Face Hub: %s", what, repo_id)
    return download_repo(repo_id, allow_patterns, progress=progress, cancel=cancel, what=what)


def _is_hub_source(arg: str | os.PathLike[str]) -> bool:
    text = str(arg)
    return (
        not isinstance(arg, os.PathLike) and not Path(text).expanduser().exists() and looks_like_hub_id(text)
    )


def resolve_source(
    arg: str | os.PathLike[str],
    what: str,
    allow_patterns: list[str],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """A local folder as it is; a Hub id downloaded; a missing path-like argument a ModelError."""
    text = str(arg)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelError(f"{what}: {text} is a file; expected a folder or a Hugging Face Hub id")
    if isinstance(arg, os.PathLike) or not looks_like_hub_id(text):
        raise ModelError(f"{what} folder not found: {text}")
    return download_from_hub(text, allow_patterns, what, progress=progress, cancel=cancel)


def resolve_sources(
    sd: str | os.PathLike[str],
    dinov2: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[Path, Path]:
    """Both sources; when both are Hub ids the disk space for both is checked before any download."""
    if _is_hub_source(sd) and _is_hub_source(dinov2):
        log.info("downloading Stable Diffusion (%s) and DINOv2 (%s) from the Hugging Face Hub", sd, dinov2)
        sd_dir, dinov2_dir = download_repos(
            [
                (str(sd), SD_ALLOW_PATTERNS, "Stable Diffusion"),
                (str(dinov2), DINOV2_ALLOW_PATTERNS, "DINOv2"),
            ],
            progress=progress,
            cancel=cancel,
        )
        return sd_dir, dinov2_dir
    sd_dir = resolve_source(sd, "Stable Diffusion", SD_ALLOW_PATTERNS, progress=progress, cancel=cancel)
    dinov2_dir = resolve_source(dinov2, "DINOv2", DINOV2_ALLOW_PATTERNS, progress=progress, cancel=cancel)
    return sd_dir, dinov2_dir


def _sd_subfolder(sd_dir: Path, sub: str) -> Path:
    folder = sd_dir / sub
    if not folder.is_dir():
        raise ModelError(f"{sd_dir} is not a Stable Diffusion folder: its {sub}/ subfolder is missing")
    return folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def check_sources(sd_dir: Path, dinov2_dir: Path, *, need_unet: bool = True) -> tuple[dict, dict, dict]:
    """Check the folders' layout and compatibility; return the U-Net, VAE and DINOv2 configs.

    ``need_unet=False`` (importing a reference checkpoint, which brings its own U-Net): the Stable
    Diffusion folder may hold only ``vae/``; the U-Net config returned is then empty."""
    unet_dir = _sd_subfolder(sd_dir, "unet") if need_unet else None
    vae_dir = _sd_subfolder(sd_dir, "vae")
    check_component_folder(vae_dir, "the Stable Diffusion VAE", "diffusers")
    check_component_folder(dinov2_dir, "DINOv2", "transformers")
    unet_cfg = _read_json(unet_dir / "config.json") if unet_dir is not None else {}
    vae_cfg = _read_json(vae_dir / "config.json")
    dino_cfg = _read_json(dinov2_dir / "config.json")
    if dino_cfg.get("model_type") not in (None, "dinov2"):
        raise ModelError(f"{dinov2_dir} holds a '{dino_cfg.get('model_type')}' model, not DINOv2")
    if vae_cfg.get("latent_channels", 4) != 4:
        raise ModelError(f"the VAE in {vae_dir} has {vae_cfg.get('latent_channels')} latent channels, not 4")
    return unet_cfg, vae_cfg, dino_cfg


def _load_sd_unet(unet_dir: Path):
    from diffusers import UNet2DConditionModel

    variant = None
    if not safetensors_files(unet_dir, "diffusers") and safetensors_files(unet_dir, "diffusers", "fp16"):
        variant = "fp16"  # only the fp16 variant is present: load it and work in fp32
    if variant is None:
        check_component_folder(unet_dir, "the Stable Diffusion U-Net", "diffusers")
    try:
        unet = UNet2DConditionModel.from_pretrained(
            unet_dir, use_safetensors=True, local_files_only=True, variant=variant, torch_dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelError(f"cannot load the Stable Diffusion U-Net from {unet_dir}: {reason}") from None
    return unet


def _output_folder(out: str | os.PathLike[str] | None, name: str | None) -> tuple[Path, str]:
    if (out is None) == (name is None):
        raise ModelError("give either an output folder (--out) or a store name (--name)")
    if name is not None:
        return model_path(name), name
    path = Path(out).expanduser().resolve()
    return path, path.name


def _seeded_mapper(in_dim: int, hidden_dim: int, out_dim: int, seed: int):
    from sd_fsmis.core.model.vtct import VTCTMapper

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VTCTMapper(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)


# -- preprocessing ------------------------------------------------------------------------------------------
#: ``models create --preprocessing``: ours (new models) or the reference implementation's exact recipe
PREPROCESSINGS = ("ours", "reference")


def preprocessing_recipe(name: str = "ours", image_size: int = 256) -> tuple[PreprocessingConfig, VTCTConfig]:
    """The model config's preprocessing and VTCT settings of a recipe.

    "ours": antialiased bilinear resizing, the VTCT mask cropped like the image, full-precision DINOv2
    input, transformers' current position embeddings ("size"). "reference" (the reference's training and its
    checkpoints): nearest-neighbour resizing, the mask resized from the uncropped image, the 8-bit DINOv2
    input of its image processor, transformers 4.36.2's position embeddings (format version 2)."""
    if name == "ours":
        return PreprocessingConfig(image_size=image_size), VTCTConfig(mask_alignment="crop")
    if name == "reference":
        return (
            PreprocessingConfig(
                image_size=image_size, image_interpolation="nearest", mask_interpolation="nearest"
            ),
            VTCTConfig(
                mask_alignment="reference", quantize_8bit=True, position_embedding_interpolation="reference"
            ),
        )
    raise ModelError(f"unknown preprocessing '{name}' (choose {' or '.join(PREPROCESSINGS)})")


# -- base model ---------------------------------------------------------------------------------------------
def create_base_model(
    sd: str | os.PathLike[str] = SD15_HUB_ID,
    dinov2: str | os.PathLike[str] = DINOV2_HUB_ID,
    *,
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
    copy_weights: bool = True,
    seed: int = 0,
    description: str = "",
    mapper_hidden_dim: int = 1536,
    image_size: int = 256,
    preprocessing: str = "ours",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Write a base (untrained) model from SD 1.x and DINOv2 folders or Hub ids; return its folder.

    ``preprocessing``: "ours" or "reference" (:func:`preprocessing_recipe`), recorded in its config.

    Hub ids are downloaded first (``progress`` in bytes, ``cancel`` checked while downloading and before the
    model is written)."""
    from sd_fsmis.core.model.input_convolutions import expand_unet_input

    target, model_name = _output_folder(out, name)
    if target.is_dir() and any(target.iterdir()):
        raise ModelError(f"cannot write the model to {target}: the folder exists and is not empty")
    pre, vtct = preprocessing_recipe(preprocessing, image_size)  # an unknown name fails before a download
    sd_dir, dinov2_dir = resolve_sources(sd, dinov2, progress=progress, cancel=cancel)
    if cancel is not None:
        cancel.raise_if_cancelled()
    _unet_cfg, vae_cfg, dino_cfg = check_sources(sd_dir, dinov2_dir)
    unet = _load_sd_unet(sd_dir / "unet")
    if unet.config.in_channels != 4:
        raise ModelError(
            f"the U-Net in {sd_dir / 'unet'} has {unet.config.in_channels} input channels; expected a "
            "4-channel Stable Diffusion 1.x U-Net"
        )
    conv_in_ref = expand_unet_input(unet)
    cross_dim = int(unet.config.cross_attention_dim)
    dino_dim = int(dino_cfg.get("hidden_size", 768))
    mapper = _seeded_mapper(dino_dim, mapper_hidden_dim, cross_dim, seed)
    if cancel is not None:
        cancel.raise_if_cancelled()
    config = ModelConfig(
        name=model_name,
        description=description,
        base=f"{_source_label(sd, sd_dir)} + {_source_label(dinov2, dinov2_dir)}",
        architecture=ArchitectureConfig(
            vae_scaling_factor=float(vae_cfg.get("scaling_factor", 0.18215)),
            cross_attention_dim=cross_dim,
            image_encoder_dim=dino_dim,
            mapper_hidden_dim=mapper_hidden_dim,
        ),
        preprocessing=pre,
        vtct=vtct,
        training=TrainingProvenance(
            kind="base",
            sources={"stable_diffusion": str(sd), "dinov2": str(dinov2)},
            seed=seed,
            notes="weight preprocessing only: conv_in/conv_in_ref from SD's conv_in, random VTCT mapper",
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


def _source_label(arg: str | os.PathLike[str], folder: Path) -> str:
    text = str(arg)
    return text if looks_like_hub_id(text) and not Path(text).expanduser().is_dir() else folder.name


# -- preset -------------------------------------------------------------------------------------------------
def create_preset_model(
    preset: str = "tiny",
    *,
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
    seed: int = 0,
    description: str = "",
    preprocessing: str = "ours",
) -> Path:
    """Write a model of a built-in architecture with seeded random weights (``tiny``: seconds on a CPU);
    ``preprocessing`` as for :func:`create_base_model`."""
    from sd_fsmis.core.model.folder import save_pipeline
    from sd_fsmis.core.model.presets import PRESETS, build_random_pipeline

    if preset not in PRESETS:
        raise ModelError(f"unknown preset '{preset}' (choose one of: {', '.join(PRESETS)})")
    target, model_name = _output_folder(out, name)
    if target.is_dir() and any(target.iterdir()):
        raise ModelError(f"cannot write the model to {target}: the folder exists and is not empty")
    pipeline = build_random_pipeline(preset, seed=seed)
    pre, vtct = preprocessing_recipe(preprocessing, pipeline.config.preprocessing.image_size)
    config = dataclasses.replace(
        pipeline.config,
        description=description or f"random {preset} model (for tests and demos; not trained)",
        preprocessing=pre,
        vtct=vtct,
    )
    return save_pipeline(pipeline, target, name=model_name, copy_weights=True, config=config)
