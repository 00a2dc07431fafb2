"""Visual-to-Textual Condition Translator (VTCT): the support set as one token that replaces the text prompt.

Each support image (in [0, 1]) goes through DINOv2's preprocessing without rescaling (short side resized,
centre crop, ImageNet mean/std) and DINOv2; the CLS token is dropped, leaving patch features
``[K, 768, 16, 16]``. The support mask, on the same patch grid and thresholded at 0.5, pools them
(masked average) to ``[K, 768]``; the mean over shots goes through the mapper MLP to one token
``E [1, 1, 768]``, the ``encoder_hidden_states`` of every cross-attention.

Mask alignment: the reference resizes the mask from the uncropped image while the features come from the
centre crop, so mask and patch grid are offset. ``"crop"`` (new models) crops the mask exactly like the
image; ``"reference"`` reproduces the offset for imported reference checkpoints.

Position embeddings: DINOv2-base is built for 518 px (a 37 x 37 grid) and sees 224 px (16 x 16), so its
position embeddings are resized bicubically. transformers 4.36.2, which the reference pins, passes the
scale factor ``(16 + 0.1) / 37``; later transformers (5.x here) pass the output size (16, 16); the two
differ by up to 3.5e-2 in the VTCT token. :func:`interpolated_position_embeddings` computes either in our
code (the model's ``vtct.position_embedding_interpolation``, whatever transformers is installed), and
:func:`use_position_embedding_interpolation` makes the model's DINOv2 use it.
"""

from __future__ import annotations

import json
import math
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import Dinov2Model

from sd_fsmis.core.model.config import VTCTConfig
from sd_fsmis.core.model.query_enhancement import masked_average_pooling

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: PIL resample codes of image-processor configs -> torch interpolation modes
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass
class DinoPreprocessing:
    """The image processor's settings (``preprocessor_config.json`` of DINOv2), applied in torch.

    ``do_rescale`` is ignored: our images are already in [0, 1] (the reference passes ``do_rescale=False``).
    """

    do_resize: bool = True
    shortest_edge: int = 256
    resample: int = 3
    do_center_crop: bool = True
    crop_height: int = 224
    crop_width: int = 224
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_processor_config(cls, data: dict) -> DinoPreprocessing:
        size = data.get("size") or {}
        crop = data.get("crop_size") or {}
        if "shortest_edge" not in size and size:
            raise ValueError(f"unsupported image processor size {size} (expected shortest_edge)")
        return cls(
            do_resize=bool(data.get("do_resize", True)),
            shortest_edge=int(size.get("shortest_edge", 256)),
            resample=int(data.get("resample", 3)),
            do_center_crop=bool(data.get("do_center_crop", True)),
            crop_height=int(crop.get("height", 224)),
            crop_width=int(crop.get("width", 224)),
            do_normalize=bool(data.get("do_normalize", True)),
            image_mean=tuple(float(v) for v in data.get("image_mean", IMAGENET_MEAN)),
            image_std=tuple(float(v) for v in data.get("image_std", IMAGENET_STD)),
        )

    def to_processor_config(self) -> dict:
        """The ``preprocessor_config.json`` of a transformers ``BitImageProcessor`` with these settings."""
        return {
            "image_processor_type": "BitImageProcessor",
            "do_resize": self.do_resize,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }

    @classmethod
    def load(cls, folder: str | Path) -> DinoPreprocessing:
        """Read ``folder/preprocessor_config.json``; DINOv2's defaults when the file is absent."""
        path = Path(folder) / PROCESSOR_CONFIG_NAME
        if not path.is_file():
            return cls()
        return cls.from_processor_config(json.loads(path.read_text(encoding="utf-8")))

    def save(self, folder: str | Path) -> None:
        from sd_fsmis.core.io.atomic import atomic_write_text

        atomic_write_text(
            Path(folder) / PROCESSOR_CONFIG_NAME, json.dumps(self.to_processor_config(), indent=2)
        )

    # -- geometry --------------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size after "resize the short side to ``shortest_edge``" (transformers' rounding)."""
        if not self.do_resize:
            return height, width
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, crop height, crop width)`` of the centre crop of a ``height x width`` image."""
        if not self.do_center_crop:
            return 0, 0, height, width
        return (
            (height - self.crop_height) // 2,
            (width - self.crop_width) // 2,
            self.crop_height,
            self.crop_width,
        )


def _crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Centre crop ``x [..., H, W]`` to ``box``; a crop larger than the image zero-pads (as transformers)."""
    top, left, ch, cw = box
    h, w = x.shape[-2:]
    if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
        return x[..., top : top + ch, left : left + cw]
    new_h, new_w = max(ch, h), max(cw, w)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded = x.new_zeros((*x.shape[:-2], new_h, new_w))
    padded[..., pad_top : pad_top + h, pad_left : pad_left + w] = x
    top, left = top + pad_top, left + pad_left
    return padded[..., max(0, top) : min(new_h, top + ch), max(0, left) : min(new_w, left + cw)]


def dino_pixel_values(
    images01: torch.Tensor, prep: DinoPreprocessing, quantize_8bit: bool = False
) -> torch.Tensor:
    """Support images ``[K, 3, S, S]`` in [0, 1] -> DINOv2 ``pixel_values [K, 3, crop_h, crop_w]``.

    ``quantize_8bit`` reproduces transformers' PIL path (``uint8(x * 255) / 255``, truncating).
    """
    x = images01.float()
    if quantize_8bit:
        x = torch.floor(x * 255.0) / 255.0
    h, w = x.shape[-2:]
    size = prep.resized_size(h, w)
    if size != (h, w):
        mode = _RESAMPLE.get(prep.resample, "bicubic")
        kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        x = F.interpolate(x, size=size, mode=mode, **kwargs).clamp(0.0, 1.0)
    x = _crop(x, prep.crop_box(*size))
    if prep.do_normalize:
        mean = torch.tensor(prep.image_mean, device=x.device, dtype=x.dtype)[None, :, None, None]
        std = torch.tensor(prep.image_std, device=x.device, dtype=x.dtype)[None, :, None, None]
        x = (x - mean) / std
    return x


def mask_on_patch_grid(
    masks01: torch.Tensor,
    prep: DinoPreprocessing,
    grid: tuple[int, int],
    config: VTCTConfig | None = None,
) -> torch.Tensor:
    """Support masks ``[K, 1, S, S]`` -> binary masks on the patch grid ``[K, 1, gh, gw]`` (float 0/1).

    "crop": resized and centre-cropped like the image, then resized to the grid; "reference": resized from
    the whole (uncropped) image to the grid. Both resize to the grid bilinearly (``align_corners=False``)
    and threshold at ``config.mask_threshold``.
    """
    config = config or VTCTConfig()
    m = masks01.float()
    if config.mask_alignment == "crop":
        h, w = m.shape[-2:]
        size = prep.resized_size(h, w)
        if size != (h, w):
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        m = _crop(m, prep.crop_box(*size))
    elif config.mask_alignment != "reference":
        raise ValueError(f"unknown mask alignment '{config.mask_alignment}'")
    m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
    return (m > config.mask_threshold).to(masks01.dtype if masks01.is_floating_point() else torch.float32)


def interpolated_position_embeddings(
    position_embeddings: torch.Tensor, height: int, width: int, patch_size: int, mode: str = "size"
) -> torch.Tensor:
    """DINOv2's position embeddings ``[1, 1 + N, C]`` (CLS first, an N = s x s grid) for an input of
    ``height x width`` pixels -> ``[1, 1 + gh * gw, C]``, ``gh = height // patch_size`` (as ``gw``).

    Unchanged when the grid already fits (``gh * gw == N`` and a square input), as in transformers. Else the
    grid is resized bicubically (``align_corners=False``) in float32: ``"size"`` to the output size
    ``(gh, gw)`` (later transformers, 5.x here), ``"reference"`` by the scale factor ``((gh + 0.1) / s,
    (gw + 0.1) / s)`` (transformers 4.36.2, which computes in the embeddings' dtype: the same in fp32).
    """
    num_positions = position_embeddings.shape[1] - 1
    gh, gw = height // patch_size, width // patch_size
    if gh * gw == num_positions and height == width:
        return position_embeddings
    side = int(math.sqrt(num_positions))
    dim = position_embeddings.shape[-1]
    grid = position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    if mode == "size":
        resized = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    elif mode == "reference":
        scale = (float((gh + 0.1) / math.sqrt(num_positions)), float((gw + 0.1) / math.sqrt(num_positions)))
        resized = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        if tuple(resized.shape[-2:]) != (gh, gw):
            raise ValueError(
                f"the interpolated position embeddings are {tuple(resized.shape[-2:])}, not {(gh, gw)}"
            )
    else:
        raise ValueError(f"unknown position-embedding interpolation '{mode}' (choose size or reference)")
    resized = resized.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, dim)
    return torch.cat([position_embeddings[:, :1], resized], dim=1)


def _interpolate_pos_encoding(self: nn.Module, embeddings: torch.Tensor, height: int, width: int):
    """Stands in for ``Dinov2Embeddings.interpolate_pos_encoding`` on one instance (same signature)."""
    patch = self.patch_embeddings.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    return interpolated_position_embeddings(
        self.position_embeddings, height, width, patch, self.sd_fsmis_position_interpolation
    )


def use_position_embedding_interpolation(image_encoder: Dinov2Model, mode: str) -> None:
    """Make this DINOv2 instance resize its position embeddings with ``mode`` ("size" or "reference").

    Only this object changes (its embeddings module's ``interpolate_pos_encoding``, which transformers'
    forward calls); transformers itself is not patched and the weights are untouched (nothing is saved).
    """
    if mode not in ("size", "reference"):
        raise ValueError(f"unknown position-embedding interpolation '{mode}' (choose size or reference)")
    embeddings = getattr(image_encoder, "embeddings", None)
    if embeddings is None or not hasattr(embeddings, "position_embeddings"):
        raise ValueError("the image encoder is not a transformers Dinov2Model (no embeddings module)")
    if not callable(getattr(type(embeddings), "interpolate_pos_encoding", None)):
        raise ValueError(
            "this transformers version's DINOv2 has no interpolate_pos_encoding: the model's position "
            "embeddings cannot be set"
        )
    embeddings.sd_fsmis_position_interpolation = mode
    # bound to this instance (a deep copy of the encoder binds to the copy)
    embeddings.interpolate_pos_encoding = types.MethodType(_interpolate_pos_encoding, embeddings)


def patch_features(image_encoder: Dinov2Model, pixel_values: torch.Tensor) -> torch.Tensor:
    """DINOv2 patch features without CLS (and register) tokens -> ``[K, C, gh, gw]``."""
    patch = image_encoder.config.patch_size
    gh, gw = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    x = pixel_values.to(device=image_encoder.device, dtype=image_encoder.dtype)
    tokens = image_encoder(pixel_values=x).last_hidden_state  # [K, 1 (+R) + gh*gw, C]
    tokens = tokens[:, -gh * gw :]  # [K, gh*gw, C]
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)


def pooled_support_feature(features: torch.Tensor, grid_masks: torch.Tensor) -> torch.Tensor:
    """Masked average of ``features [K, C, gh, gw]`` under ``grid_masks [K, 1, gh, gw]``, mean over shots.

    Returns ``[1, C]``.
    """
    pooled = masked_average_pooling(features.float(), grid_masks.float())  # [K, C]
    return pooled.mean(dim=0, keepdim=True)


class VTCTMapper(ModelMixin, ConfigMixin):
    """The VTCT MLP: Linear, LayerNorm, GELU, twice [Linear, LayerNorm, GELU], Linear; ``[N, C] -> [N, 1, D]``

    Its ``nn.Sequential`` indices match the reference's ``image_projector`` (``mlp.0/.3/.6/.9`` linears,
    ``mlp.1/.4/.7`` LayerNorms), so reference weights load as they are.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self, in_dim: int = 768, hidden_dim: int = 1536, out_dim: int = 768, num_hidden_layers: int = 2
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled [N, in_dim]`` -> tokens ``[N, 1, out_dim]``."""
        return self.mlp(pooled.to(self.dtype))[:, None, :]


class VisualToTextualConditionTranslator:
    """DINOv2 + mask pooling + mapper: support images and masks -> the condition token ``E [1, 1, D]``."""

    def __init__(
        self,
        image_encoder: Dinov2Model,
        mapper: VTCTMapper,
        preprocessing: DinoPreprocessing,
        config: VTCTConfig | None = None,
    ) -> None:
        self.image_encoder = image_encoder
        self.mapper = mapper
        self.preprocessing = preprocessing
        self.config = config or VTCTConfig()
        use_position_embedding_interpolation(image_encoder, self.config.position_embedding_interpolation)

    def grid_size(self) -> tuple[int, int]:
        """The patch grid DINOv2 produces for the cropped image (16 x 16 for 224 / 14)."""
        patch = self.image_encoder.config.patch_size
        h, w = self.preprocessing.crop_height, self.preprocessing.crop_width
        if not self.preprocessing.do_center_crop:
            raise ValueError("DINOv2 preprocessing without a centre crop is not supported")
        return math.floor(h / patch), math.floor(w / patch)

    def pooled_feature(self, images01: torch.Tensor, masks01: torch.Tensor) -> torch.Tensor:
        """``images01 [K, 3, S, S]``, ``masks01 [K, 1, S, S]`` -> pooled DINOv2 feature ``[1, C]``."""
        pixel_values = dino_pixel_values(
            images01, self.preprocessing, self.config.quantize_8bit
        )  # [K, 3, 224, 224]
        features = patch_features(self.image_encoder, pixel_values)  # [K, C, 16, 16]
        grid_masks = mask_on_patch_grid(masks01, self.preprocessing, features.shape[-2:], self.config)
        return pooled_support_feature(features, grid_masks.to(features.device))  # [1, C]

    def __call__(self, images01: torch.Tensor, masks01: torch.Tensor) -> torch.Tensor:
        """The condition token ``E [1, 1, D]``."""
        return self.mapper(self.pooled_feature(images01, masks01))
