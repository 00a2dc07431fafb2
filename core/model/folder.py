"""Model folders on disk: the format, checking one, loading the pipeline from it, writing one.

A model is a folder::

    config.json          ModelConfig (method settings, classes, provenance, versions, format version)
    unet/                diffusers UNet2DConditionModel, in_channels 8 (safetensors)
    conv_in_ref/         SupportInputConv, the support input convolution (safetensors)
    mapper/              VTCTMapper, the VTCT MLP (safetensors)
    vae/                 diffusers AutoencoderKL            } inside, or absolute paths in config.json
    image_encoder/       transformers Dinov2Model + its     }   ("components") to the folders they
                         preprocessor_config.json           }   came from

Weights are read from safetensors only (``use_safetensors=True``); a folder that only has pickle weights
(.bin, .ckpt, .pt) is refused. An incomplete folder or another format version raises a ModelError that says
in one line what is wrong. The store of such folders, by name, is :mod:`sd_fsmis.core.model.store`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.model.config import (
    ComponentLocations,
    LibraryVersions,
    ModelConfig,
    utc_now_iso,
)

if TYPE_CHECKING:  # torch is imported by the functions that load or save weights: listing stays fast
    import torch


#: the trained parts, always inside the model folder
OWN_COMPONENTS = ("unet", "conv_in_ref", "mapper")


#: the frozen parts, inside or referenced
SHARED_COMPONENTS = ("vae", "image_encoder")


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


#: component -> library whose file names it uses
COMPONENT_LIBRARY = {
    "unet": "diffusers",
    "conv_in_ref": "diffusers",
    "mapper": "diffusers",
    "vae": "diffusers",
    "image_encoder": "transformers",
}


WEIGHT_NAMES = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}


# -- checks -------------------------------------------------------------------------------------------------
def safetensors_files(folder: Path, library: str = "diffusers", variant: str | None = None) -> list[Path]:
    """The weight files ``from_pretrained`` would read: the single file or the shards of an index."""
    stem = WEIGHT_NAMES[library] + (f".{variant}" if variant else "")
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        import json

        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ModelError(f"the weight index {index} is malformed ({exc})") from None
        return sorted({folder / name for name in weight_map.values()})
    return []


def check_component_folder(folder: Path, what: str, library: str = "diffusers") -> None:
    """ModelError unless ``folder`` has a ``config.json`` and safetensors weights (pickle-only refused)."""
    if not folder.is_dir():
        raise ModelError(f"{what} is missing: no folder {folder}")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{what} is incomplete: config.json is missing in {folder}")
    files = safetensors_files(folder, library)
    if files:
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelError(
                f"{what} is incomplete: weight shard(s) {', '.join(missing)} missing in {folder}"
            )
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"{what} in {folder} has only pickle weights ({', '.join(pickles)}); sd-fsmis loads safetensors "
            "only (nothing is unpickled): convert them to safetensors first"
        )
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        raise ModelError(
            f"{what} is incomplete: {WEIGHT_NAMES[library]}.safetensors is missing in {folder} "
            f"(found {', '.join(others)})"
        )
    raise ModelError(f"{what} is incomplete: no weights ({WEIGHT_NAMES[library]}.safetensors) in {folder}")


def component_dirs(folder: Path, config: ModelConfig) -> dict[str, Path]:
    """Absolute folders of all five components of the model in ``folder``."""
    dirs = {name: folder / name for name in OWN_COMPONENTS}
    dirs.update(config.components.resolve(folder))
    return dirs


def validate_model_folder(folder: str | os.PathLike[str]) -> ModelConfig:
    """Check that ``folder`` is a complete model of our format version; return its config."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    config = ModelConfig.load(folder).validate()
    for name, path in component_dirs(folder, config).items():
        what = f"the model's {name}" if path.parent == folder else f"the model's {name} (referenced)"
        check_component_folder(path, what, COMPONENT_LIBRARY[name])
    return config


# -- load ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' and diffusers' per-file progress bars ("Loading weights", "Writing shards")."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = (transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled())
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            transformers_logging.enable_progress_bar()
        if was[1]:
            diffusers_logging.enable_progress_bar()


def _load_component(cls: Any, path: Path, what: str, dtype: torch.dtype | None) -> Any:
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        with quiet_progress_bars():
            return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise ModelError(f"cannot load the model's {what} from {path}: {first}") from None


def load_pipeline(
    folder: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
):
    """Load the model in ``folder`` as a :class:`~sd_fsmis.core.model.pipeline.SDFSMISPipeline` (eval)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Model

    from sd_fsmis.core.model.input_convolutions import SupportInputConv
    from sd_fsmis.core.model.pipeline import SDFSMISPipeline
    from sd_fsmis.core.model.vtct import DinoPreprocessing, VTCTMapper

    folder = Path(folder).expanduser().resolve()
    config = validate_model_folder(folder)
    dirs = component_dirs(folder, config)
    load_dtype = dtype if dtype in (None, torch.float32, torch.bfloat16) else torch.float32
    unet = _load_component(UNet2DConditionModel, dirs["unet"], "unet", load_dtype)
    if unet.config.in_channels != 2 * config.architecture.latent_channels:
        raise ModelError(
            f"the model's unet has {unet.config.in_channels} input channels; an SD-FSMIS U-Net has "
            f"{2 * config.architecture.latent_channels} (was it created with 'sd-fsmis models create'?)"
        )
    conv_in_ref = _load_component(SupportInputConv, dirs["conv_in_ref"], "conv_in_ref", load_dtype)
    mapper = _load_component(VTCTMapper, dirs["mapper"], "mapper", load_dtype)
    vae = _load_component(AutoencoderKL, dirs["vae"], "vae", load_dtype)
    image_encoder = _load_component(Dinov2Model, dirs["image_encoder"], "image_encoder", load_dtype)
    try:
        dino_preprocessing = DinoPreprocessing.load(dirs["image_encoder"])
    except (ValueError, KeyError) as exc:
        raise ModelError(f"the image encoder's preprocessor_config.json is not usable: {exc}") from None
    try:
        pipeline = SDFSMISPipeline(
            unet,
            conv_in_ref,
            vae,
            image_encoder,
            mapper,
            dino_preprocessing,
            config,
            component_dirs={k: dirs[k] for k in SHARED_COMPONENTS},
        )
    except ValueError as exc:
        raise ModelError(f"the model in {folder} is inconsistent: {exc}") from None
    pipeline.model_dir = folder
    pipeline.to(device=device, dtype=dtype)
    if pipeline.device.type == "cpu":
        _own_memory(pipeline.modules.values())
    return pipeline.eval()


def _own_memory(modules: Iterable[torch.nn.Module]) -> None:
    """Copy CPU tensors (which may live in the weight files' memory maps) into fresh, aligned memory.

    The files are then closed (a loaded model can be removed, also on Windows), and the CPU kernels see the
    same alignment as for a model built in memory, so both give bit-identical results.
    """
    import torch

    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.device.type == "cpu":
                    tensor.data = tensor.data.clone(memory_format=torch.preserve_format)


# -- save ---------------------------------------------------------------------------------------------------
def _copy_component_files(source: Path, target: Path, library: str) -> None:
    """Copy a component's config, safetensors weights and processor config (following symlinks)."""
    check_component_folder(source, f"the {target.name} to copy", library)
    target.mkdir(parents=True, exist_ok=True)
    names = {"config.json", "preprocessor_config.json", f"{WEIGHT_NAMES[library]}.safetensors.index.json"}
    files = [source / n for n in names if (source / n).is_file()] + safetensors_files(source, library)
    for path in files:
        shutil.copyfile(path, target / path.name)


def _prepare_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"cannot write the model to {out}: a file of that name exists")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"cannot write the model to {out}: the folder exists and is not empty")


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder onto ``out`` (replacing an empty or, when allowed, old one)."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_model_folder(
    out: str | os.PathLike[str],
    *,
    config: ModelConfig,
    unet: torch.nn.Module,
    conv_in_ref: torch.nn.Module,
    mapper: torch.nn.Module,
    vae: torch.nn.Module | Path,
    image_encoder: torch.nn.Module | Path,
    dino_preprocessing: Any = None,
    copy_weights: bool = True,
    overwrite: bool = False,
    extra_files: Iterable[tuple[str, Path]] = (),
) -> Path:
    """Write a model folder atomically (a temporary folder renamed into place); return its path.

    ``vae`` / ``image_encoder`` are loaded modules (saved inside) or source folders: copied inside when
    ``copy_weights``, else referenced by absolute path in ``config.components``.
    """
    out = Path(out).expanduser().resolve()
    _prepare_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, module in (("unet", unet), ("conv_in_ref", conv_in_ref), ("mapper", mapper)):
            with quiet_progress_bars():
                module.save_pretrained(tmp / name, safe_serialization=True)
        locations = {}
        for name, part in (("vae", vae), ("image_encoder", image_encoder)):
            library = COMPONENT_LIBRARY[name]
            if isinstance(part, Path):
                if copy_weights:
                    _copy_component_files(part, tmp / name, library)
                    locations[name] = name
                else:
                    check_component_folder(part, f"the {name} to reference", library)
                    locations[name] = str(part.resolve())
            else:
                if not copy_weights:
                    raise ModelError(f"cannot reference the {name}: it was not loaded from a folder")
                with quiet_progress_bars():
                    part.save_pretrained(tmp / name, safe_serialization=True)
                locations[name] = name
        processor_file = tmp / "image_encoder" / "preprocessor_config.json"
        inside = locations["image_encoder"] == "image_encoder"
        # a copied processor config is kept byte for byte
        if dino_preprocessing is not None and inside and not processor_file.is_file():
            dino_preprocessing.save(tmp / "image_encoder")
        for relative, source in extra_files:
            shutil.copyfile(source, tmp / relative)
        config = dataclasses.replace(
            config,
            created=config.created or utc_now_iso(),
            components=ComponentLocations(**locations),
            versions=LibraryVersions.current(),
        )
        config.validate().save(tmp)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_pipeline(
    pipeline,
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    copy_weights: bool = True,
    overwrite: bool = False,
    config: ModelConfig | None = None,
) -> Path:
    """Save a pipeline as a model folder. The VAE and image encoder are copied from the folders they were
    loaded from when known (exact bytes), else saved; ``copy_weights=False`` references those folders."""
    config = config or pipeline.config
    config = dataclasses.replace(config, name=name or config.name or Path(out).name, created="")
    sources = getattr(pipeline, "component_dirs", {}) or {}
    return write_model_folder(
        out,
        config=config,
        unet=pipeline.unet,
        conv_in_ref=pipeline.conv_in_ref,
        mapper=pipeline.mapper,
        vae=sources.get("vae", pipeline.vae),
        image_encoder=sources.get("image_encoder", pipeline.image_encoder),
        dino_preprocessing=pipeline.dino_preprocessing,
        copy_weights=copy_weights,
        overwrite=overwrite,
    )
