"""The typed configuration saved beside every model as ``config.json``.

It records what the weights alone do not say: the method's choices (image size, interpolation, the QE and
VTCT settings, post-processing), which classes the model was trained on, where it came from, and the
library versions that wrote it. The network architectures themselves live in the components' own diffusers /
transformers ``config.json`` files (``unet/``, ``vae/``, ...).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

#: The newest model folder layout this version reads. A model is written with the lowest version that can
#: hold it: 1, or 2 when it needs the reference's DINOv2 position-embedding interpolation (which readers of
#: version 1 would silently replace by theirs); a folder of a version outside 1..FORMAT_VERSION is refused.
FORMAT_VERSION = 2
#: the layout of models that use nothing newer
BASE_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
#: ``_kind`` written into config.json so that a stray diffusers/transformers config is not mistaken for ours.
CONFIG_KIND = "sd-fsmis-model"

IMAGE_INTERPOLATIONS = ("bilinear", "nearest")
MASK_ALIGNMENTS = ("crop", "reference")
#: how DINOv2's 518-px position embeddings are resized to the patch grid of a smaller image
POSITION_EMBEDDING_INTERPOLATIONS = ("size", "reference")


@dataclass
class ArchitectureConfig:
    """Facts about the networks that the method's code relies on."""

    #: channels of a VAE latent
    latent_channels: int = 4
    #: latents are ``scaling_factor * posterior``; decoded from ``latent / scaling_factor``
    vae_scaling_factor: float = 0.18215
    #: input channels of ``conv_in`` (query: image latent + QE prototype) and ``conv_in_ref`` (support)
    unet_in_channels: int = 8
    #: width of the VTCT token ``E`` (= the U-Net's cross-attention dim)
    cross_attention_dim: int = 768
    #: width of the image encoder's patch features (DINOv2-base: 768)
    image_encoder_dim: int = 768
    #: hidden width of the VTCT mapper MLP
    mapper_hidden_dim: int = 1536
    #: the single timestep of both U-Net passes
    timestep: int = 1


@dataclass
class PreprocessingConfig:
    """How a slice becomes a model input and how the output goes back to the slice."""

    #: slices are resized to ``image_size`` x ``image_size`` (256 for SD-FSMIS; the latent is 1/8 of it)
    image_size: int = 256
    #: "bilinear" (antialiased when shrinking; ours) or "nearest" (the reference)
    image_interpolation: str = "bilinear"
    #: the reference and we use "nearest" for masks
    mask_interpolation: str = "nearest"


@dataclass
class QueryEnhancementConfig:
    """Query Enhancement (QE) settings."""

    #: query pixels with foreground probability above this form the query prototype
    threshold: float = 0.7
    #: fallback when none is above: the top ``int(topk_ratio * latent width)`` pixels
    topk_ratio: float = 0.1875


@dataclass
class VTCTConfig:
    """Visual-to-Textual Condition Translator (VTCT) settings."""

    #: "crop": the support mask is resized and centre-cropped exactly like the image DINOv2 sees (ours);
    #: "reference": resized from the uncropped image, offset from the patch grid (reference checkpoints)
    mask_alignment: str = "crop"
    #: the mask, resized bilinearly to the patch grid, is foreground above this
    mask_threshold: float = 0.5
    #: truncate the [0, 1] image to 8 bits before DINOv2, as the reference's transformers image processor
    #: does (it converts to a uint8 PIL image to resize, even at the same size); off for new models
    quantize_8bit: bool = False
    #: resizing of DINOv2's position embeddings to the patch grid (37 x 37 -> 16 x 16 for DINOv2-base at
    #: 224 px), bicubic: "size" gives the output size (later transformers; new models), "reference" the
    #: scale factor (grid + 0.1) / 37 of transformers 4.36.2, which the reference's checkpoints and
    #: published numbers come from (format version 2)
    position_embedding_interpolation: str = "size"


@dataclass
class PostprocessingConfig:
    """Soft mask to binary mask."""

    #: True: foreground where soft > threshold * (max over all slices predicted together); False: absolute
    relative_threshold: bool = True
    #: the ratio r (0.25) when relative, else an absolute soft-mask threshold
    threshold: float = 0.25
    #: keep only the largest 8-connected component of each slice
    largest_component: bool = True


@dataclass
class TrainingProvenance:
    """Where the weights came from."""

    #: "base" (weight preprocessing only, untrained), "preset" (random), "reference-import", "fine-tuned"
    kind: str = "base"
    #: what it was built from: {"stable_diffusion": ..., "dinov2": ..., "checkpoint": ..., "parent": ...}
    sources: dict[str, str] = field(default_factory=dict)
    #: optimiser steps done (0 for a base model)
    steps: int = 0
    seed: int | None = None
    #: classes held out from training (the test classes of the setting)
    held_out_classes: list[str] = field(default_factory=list)
    #: datasets or volumes trained on
    datasets: list[str] = field(default_factory=list)
    notes: str = ""
    #: anything else a trainer wants to keep (hyper-parameters, validation Dice, ...)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LibraryVersions:
    """Versions of the libraries that wrote the model."""

    sd_fsmis: str = ""
    torch: str = ""
    diffusers: str = ""
    transformers: str = ""

    @classmethod
    def current(cls) -> LibraryVersions:
        import diffusers
        import torch
        import transformers

        from sd_fsmis import __version__

        return cls(
            sd_fsmis=__version__,
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
        )


@dataclass
class ComponentLocations:
    """Where the frozen components are: a folder name inside the model, or an absolute path (a reference)."""

    vae: str = "vae"
    image_encoder: str = "image_encoder"

    def resolve(self, model_dir: Path) -> dict[str, Path]:
        """Absolute folders of the VAE and the image encoder for a model stored in ``model_dir``."""
        out = {}
        for key in ("vae", "image_encoder"):
            value = Path(getattr(self, key)).expanduser()
            out[key] = value if value.is_absolute() else model_dir / value
        return out

    @property
    def referenced(self) -> bool:
        """True when at least one component lives outside the model folder."""
        return any(Path(v).expanduser().is_absolute() for v in (self.vae, self.image_encoder))


@dataclass
class ModelConfig:
    """Everything ``config.json`` of a model folder holds."""

    #: as read (a written config.json holds :meth:`required_format_version`)
    format_version: int = BASE_FORMAT_VERSION
    name: str = ""
    description: str = ""
    #: ISO 8601 UTC time of creation
    created: str = ""
    #: what it was built on, in words ("stable-diffusion-v1-5 + dinov2-base", "preset tiny")
    base: str = ""
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    query_enhancement: QueryEnhancementConfig = field(default_factory=QueryEnhancementConfig)
    vtct: VTCTConfig = field(default_factory=VTCTConfig)
    postprocessing: PostprocessingConfig = field(default_factory=PostprocessingConfig)
    #: classes (label names) the model was trained on; empty for a base model
    classes: list[str] = field(default_factory=list)
    training: TrainingProvenance = field(default_factory=TrainingProvenance)
    components: ComponentLocations = field(default_factory=ComponentLocations)
    versions: LibraryVersions = field(default_factory=LibraryVersions)

    # -- validation ------------------------------------------------------------------------------------
    def required_format_version(self) -> int:
        """The lowest folder layout that holds this config: 2 with the reference's position embeddings."""
        if self.vtct.position_embedding_interpolation == "reference":
            return 2
        return BASE_FORMAT_VERSION

    def validate(self) -> ModelConfig:
        """Raise :class:`ModelError` for values the code cannot honour; return self."""
        if not isinstance(self.format_version, int) or not (
            BASE_FORMAT_VERSION <= self.format_version <= FORMAT_VERSION
        ):
            raise ModelError(
                f"model format version {self.format_version} is not supported (this version of sd-fsmis "
                f"reads versions {BASE_FORMAT_VERSION} to {FORMAT_VERSION})"
            )
        pre = self.preprocessing
        for what, value in (("image", pre.image_interpolation), ("mask", pre.mask_interpolation)):
            if value not in IMAGE_INTERPOLATIONS:
                raise ModelError(f"unknown {what} interpolation '{value}' in the model config")
        if pre.image_size <= 0 or pre.image_size % 8:
            raise ModelError(
                f"image size {pre.image_size} in the model config is not a positive multiple of 8"
            )
        if self.vtct.mask_alignment not in MASK_ALIGNMENTS:
            raise ModelError(f"unknown VTCT mask alignment '{self.vtct.mask_alignment}' in the model config")
        interpolation = self.vtct.position_embedding_interpolation
        if interpolation not in POSITION_EMBEDDING_INTERPOLATIONS:
            raise ModelError(
                f"unknown DINOv2 position-embedding interpolation '{interpolation}' in the model config "
                f"(known: {', '.join(POSITION_EMBEDDING_INTERPOLATIONS)})"
            )
        return self

    # -- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``config.json``; ``format_version`` is the lowest layout that holds it."""
        data = dataclasses.asdict(self)
        data["format_version"] = self.required_format_version()
        return {"_kind": CONFIG_KIND, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (unknown keys are ignored, missing ones take their defaults)."""
        if not isinstance(data, dict):
            raise ModelError("the model config is not a JSON object")
        data = {k: v for k, v in data.items() if k != "_kind"}
        try:
            return _from_dict(cls, data)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"the model config is malformed: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"the model config is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` into ``folder`` atomically; return its path."""
        path = Path(folder) / CONFIG_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ModelConfig:
        """Read ``folder/config.json``; ModelError when absent, not ours, or malformed."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise ModelError(f"not an SD-FSMIS model folder: {CONFIG_NAME} is missing in {folder}")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
        data = json.loads(text) if text.strip().startswith("{") else None
        if not isinstance(data, dict) or data.get("_kind") != CONFIG_KIND:
            raise ModelError(f"not an SD-FSMIS model folder: {path} is not an sd-fsmis model config")
        return cls.from_dict(data)


def utc_now_iso() -> str:
    """The current UTC time as ``2026-01-31T12:00:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Recursively build dataclass ``cls`` from ``data`` (nested dataclasses by their type hints)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        log.debug("ignoring unknown keys in %s: %s", cls.__name__, unknown)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"'{f.name}' must be an object")
            value = _from_dict(hint, value)
        elif _origin(hint) is list and not isinstance(value, list):
            raise ValueError(f"'{f.name}' must be a list")
        elif _origin(hint) is dict and not isinstance(value, dict):
            raise ValueError(f"'{f.name}' must be an object")
        kwargs[f.name] = value
    return cls(**kwargs)


def _origin(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return None
    return origin
