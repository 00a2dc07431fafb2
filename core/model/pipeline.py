"""One SD-FSMIS episode: K support slices, then any number of query slices, as in the method section.

1. support: VAE-encode images and masks; the VTCT token ``E`` (once per support set); the QE prototypes;
   the support pass (``conv_in_ref``, timestep 1) records every self-attention's keys/values in the bank;
2. query (in batches): VAE-encode, QE input ``[B, 8, h, w]``, query pass (``conv_in``, timestep 1) with
   SQI over the bank and ``E`` repeated over the batch; the predicted mask latent is ``-o``;
3. decode ``-o / 0.18215``, clamp, map to [0, 1], mean over the 3 channels -> soft masks ``[B, S, S]``,
   resized back to the query slice size (on the CPU the decoder's upsamplers run as sub-pixel
   convolutions: the same numbers in fewer operations, ``latents.py``; ``subpixel_upsampling = False``
   runs diffusers' layers as they are).

The support bank is cleared when the episode ends (also on error or cancellation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import Dinov2Model

from sd_fsmis.core.model.config import ModelConfig
from sd_fsmis.core.model.input_convolutions import SupportInputConv, support_input
from sd_fsmis.core.model.latents import decode_soft_masks, encode_latents
from sd_fsmis.core.model.preprocessing import slices_to_model_size, to_slice_size, to_vae_image, to_vae_mask
from sd_fsmis.core.model.query_enhancement import enhance_query, support_prototypes
from sd_fsmis.core.model.support_query_interaction import SupportBank, install_support_query_interaction
from sd_fsmis.core.model.vtct import DinoPreprocessing, VisualToTextualConditionTranslator, VTCTMapper

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class SupportContext:
    """What a support set gives each query slice: the VTCT token, the QE prototypes (and the U-Net bank)."""

    condition: torch.Tensor  # E [1, 1, D]
    foreground: torch.Tensor  # pf [4]
    background: torch.Tensor  # pb [4]
    shots: int


class SDFSMISPipeline:
    """The SD-FSMIS networks and the forward pass of the method, around an unmodified diffusers U-Net."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        conv_in_ref: SupportInputConv,
        vae: AutoencoderKL,
        image_encoder: Dinov2Model,
        mapper: VTCTMapper,
        dino_preprocessing: DinoPreprocessing,
        config: ModelConfig,
        *,
        component_dirs: dict[str, Path] | None = None,
    ) -> None:
        self.unet = unet
        self.conv_in_ref = conv_in_ref
        self.vae = vae
        self.image_encoder = image_encoder
        self.mapper = mapper
        self.dino_preprocessing = dino_preprocessing
        self.config = config
        #: folders the frozen components were loaded from (kept so that a save can reference them)
        self.component_dirs = dict(component_dirs or {})
        #: the model folder this pipeline was loaded from, if any
        self.model_dir: Path | None = None
        #: U-Net and VAE in NHWC memory layout (set by :meth:`to`; faster convolutions on CUDA)
        self.channels_last = False
        #: decode with sub-pixel upsampling (CPU, inference; exact up to float rounding: ``latents.py``)
        self.subpixel_upsampling = True
        self.bank: SupportBank = install_support_query_interaction(unet)
        self.vtct = VisualToTextualConditionTranslator(image_encoder, mapper, dino_preprocessing, config.vtct)
        self._check_shapes()

    def _check_shapes(self) -> None:
        arch = self.config.architecture
        if self.unet.config.in_channels != 2 * arch.latent_channels:
            raise ValueError(f"the U-Net has {self.unet.config.in_channels} input channels, expected 8")
        if self.conv_in_ref.config.out_channels != self.unet.conv_in.out_channels:
            raise ValueError("conv_in_ref and the U-Net's conv_in have different output channels")
        if self.mapper.config.out_dim != self.unet.config.cross_attention_dim:
            raise ValueError(
                f"the VTCT mapper gives {self.mapper.config.out_dim}-d tokens, the U-Net's cross-attention "
                f"takes {self.unet.config.cross_attention_dim}"
            )
        if self.mapper.config.in_dim != self.image_encoder.config.hidden_size:
            raise ValueError("the VTCT mapper's input width differs from the image encoder's")

    # -- device and precision --------------------------------------------------------------------------
    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "unet": self.unet,
            "conv_in_ref": self.conv_in_ref,
            "vae": self.vae,
            "image_encoder": self.image_encoder,
            "mapper": self.mapper,
        }

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        channels_last: bool | None = None,
    ) -> SDFSMISPipeline:
        """Move every network; fp16 keeps the VAE in fp32 when its config asks to (``force_upcast``).

        ``channels_last`` (default: on CUDA only) puts the U-Net and the VAE in NHWC layout.
        """
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        vae_dtype = torch.float32 if dtype == torch.float16 and self.vae.config.get("force_upcast") else dtype
        for name, module in self.modules.items():
            # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules on every dtype cast
            torch.nn.Module.to(module, device=device, dtype=vae_dtype if name == "vae" else dtype)
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        torch.nn.Module.to(self.unet, memory_format=layout)
        torch.nn.Module.to(self.vae, memory_format=layout)
        return self

    def eval(self) -> SDFSMISPipeline:
        for module in self.modules.values():
            module.eval()
        return self

    # -- the method --------------------------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(self.config.architecture.vae_scaling_factor)

    def _timestep(self) -> torch.Tensor:
        return torch.tensor(self.config.architecture.timestep, device=self.device, dtype=torch.long)

    def support_inputs(
        self, images: Sequence[ArrayLike] | ArrayLike, masks: Sequence[ArrayLike] | ArrayLike
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Support slices (each ``[H, W]`` in [0, 1]; masks 0/1) -> ``images01, masks01 [K, 1, S, S]``."""
        pre = self.config.preprocessing
        images01 = slices_to_model_size(images, pre, self.device)
        masks01 = slices_to_model_size(
            [
                np.asarray(m, dtype=np.float32) if not isinstance(m, torch.Tensor) else m.float()
                for m in masks
            ],
            pre,
            self.device,
            is_mask=True,
        )
        return images01, masks01

    def encode_support(self, images01: torch.Tensor, masks01: torch.Tensor) -> SupportContext:
        """Support encode, VTCT token, QE prototypes and the support pass (records the bank)."""
        shots = images01.shape[0]
        both = torch.cat([to_vae_image(images01), to_vae_mask(masks01)], dim=0)  # [2K, 3, S, S]
        latents = encode_latents(self.vae, both, self.scaling_factor)  # [2K, 4, h, w]
        z_image, z_mask = latents[:shots], latents[shots:]  # [K, 4, h, w] each
        condition = self.vtct(images01.expand(-1, 3, -1, -1), masks01).to(self.unet.dtype)  # E [1, 1, D]
        foreground, background = support_prototypes(z_image, masks01)  # [4], [4]
        support = torch.cat([z_image, z_mask], dim=1).to(self.unet.dtype)  # [K, 8, h, w]
        with self.bank.use("record"), support_input(self.unet, self.conv_in_ref):
            self.unet(support, self._timestep(), encoder_hidden_states=condition.expand(shots, -1, -1))
        return SupportContext(condition, foreground, background, shots)

    def predict_mask_latents(self, context: SupportContext, query01: torch.Tensor) -> torch.Tensor:
        """Query slices ``[B, 1, S, S]`` in [0, 1] -> predicted mask latents ``-o [B, 4, h, w]``."""
        z_query = encode_latents(self.vae, to_vae_image(query01), self.scaling_factor)  # [B, 4, h, w]
        x = enhance_query(z_query, context.foreground, context.background, self.config.query_enhancement)
        x = x.to(self.unet.dtype)  # [B, 8, h, w]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        condition = context.condition.expand(x.shape[0], -1, -1)  # [B, 1, D]
        with self.bank.use("query"):
            out = self.unet(x, self._timestep(), encoder_hidden_states=condition).sample  # o [B, 4, h, w]
        return -out

    def predict(self, context: SupportContext, query: ArrayLike) -> torch.Tensor:
        """Query slices ``[B, H, W]`` in [0, 1] -> soft masks ``[B, H, W]`` float32 (on the device)."""
        size = tuple(query.shape[-2:])
        query01 = slices_to_model_size(query, self.config.preprocessing, self.device)  # [B, 1, S, S]
        mask_latents = self.predict_mask_latents(context, query01)
        soft = decode_soft_masks(
            self.vae, mask_latents, self.scaling_factor, subpixel=self.subpixel_upsampling
        )  # [B, S, S]
        return to_slice_size(soft, size)

    @contextlib.contextmanager
    def episode(
        self, support_images: Sequence[ArrayLike] | ArrayLike, support_masks: Sequence[ArrayLike] | ArrayLike
    ) -> Iterator[Episode]:
        """``with pipe.episode(images, masks) as ep: soft = ep.predict(query)``; clears the bank on exit."""
        with self.bank.episode():
            images01, masks01 = self.support_inputs(support_images, support_masks)
            context = self.encode_support(images01, masks01)
            yield Episode(self, context)

    @torch.inference_mode()
    def segment_slices(
        self,
        support_images: Sequence[ArrayLike] | ArrayLike,
        support_masks: Sequence[ArrayLike] | ArrayLike,
        query: ArrayLike,
    ) -> np.ndarray:
        """One episode on all of ``query [B, H, W]`` at once -> soft masks ``[B, H, W]`` (numpy float32)."""
        with self.episode(support_images, support_masks) as episode:
            return episode.predict(query).cpu().numpy()

    # -- training ----------------------------------------------------------------------------------------
    def training_loss(
        self,
        support_images01: torch.Tensor,
        support_masks01: torch.Tensor,
        query_images01: torch.Tensor,
        query_masks01: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """MSE between ``o`` and ``-z_query_mask`` for one episode (inputs ``[N, 1, S, S]`` at model size).

        VAE latents are posterior samples, as in training; the VAE and DINOv2 get no gradients.
        """
        shots = support_images01.shape[0]
        with torch.no_grad():
            both = torch.cat(
                [
                    to_vae_image(support_images01),
                    to_vae_mask(support_masks01),
                    to_vae_image(query_images01),
                    to_vae_mask(query_masks01),
                ],
                dim=0,
            )
            latents = encode_latents(self.vae, both, self.scaling_factor, sample=True, generator=generator)
            z_image, z_mask = latents[:shots], latents[shots : 2 * shots]
            z_query, z_query_mask = latents[2 * shots :].chunk(2, dim=0)
            pooled = self.vtct.pooled_feature(support_images01.expand(-1, 3, -1, -1), support_masks01)
            foreground, background = support_prototypes(z_image, support_masks01)
            x = enhance_query(z_query, foreground, background, self.config.query_enhancement)
        condition = self.mapper(pooled).to(self.unet.dtype)  # [1, 1, D], trained
        with self.bank.episode():
            support = torch.cat([z_image, z_mask], dim=1).to(self.unet.dtype)
            with self.bank.use("record"), support_input(self.unet, self.conv_in_ref):
                self.unet(support, self._timestep(), encoder_hidden_states=condition.expand(shots, -1, -1))
            with self.bank.use("query"):
                out = self.unet(
                    x.to(self.unet.dtype),
                    self._timestep(),
                    encoder_hidden_states=condition.expand(x.shape[0], -1, -1),
                ).sample
        return F.mse_loss(out.float(), -z_query_mask.float())


class Episode:
    """A support set encoded and recorded in the bank; predicts query slices in batches."""

    def __init__(self, pipeline: SDFSMISPipeline, context: SupportContext) -> None:
        self.pipeline = pipeline
        self.context = context

    def predict(self, query: ArrayLike) -> torch.Tensor:
        """Query slices ``[B, H, W]`` in [0, 1] -> soft masks ``[B, H, W]`` float32 (on the device)."""
        return self.pipeline.predict(self.context, query)
