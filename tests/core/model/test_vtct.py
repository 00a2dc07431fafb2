"""VTCT: DINOv2 preprocessing, the mask on the patch grid (crop vs reference alignment), pooling, mapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_fsmis.core.model.config import VTCTConfig
from sd_fsmis.core.model.vtct import (
    DinoPreprocessing,
    VTCTMapper,
    dino_pixel_values,
    mask_on_patch_grid,
    pooled_support_feature,
)


def test_pixel_values_match_the_transformers_image_processor_without_rescale():
    import transformers

    # the PIL-backed processor (transformers >= 5 names it BitImageProcessorPil; before, BitImageProcessor)
    processor_class = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    prep = DinoPreprocessing()  # DINOv2-base: short side 256, centre crop 224, ImageNet mean/std
    config = {k: v for k, v in prep.to_processor_config().items() if k != "image_processor_type"}
    processor = processor_class(**config)
    rng = np.random.default_rng(0)
    image = rng.random((256, 256, 3), dtype=np.float32)
    expected = processor(images=image, do_rescale=False, return_tensors="pt")["pixel_values"].float()
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    # the reference's processor goes through an 8-bit PIL image: reproduced exactly with quantize_8bit
    reference_like = dino_pixel_values(x, prep, quantize_8bit=True)
    assert reference_like.shape == expected.shape == (1, 3, 224, 224)
    torch.testing.assert_close(reference_like, expected, rtol=1e-5, atol=1e-5)
    # ours keeps full precision: within one grey level of it
    ours = dino_pixel_values(x, prep)
    assert (ours - expected).abs().max().item() <= 1.0 / 255 / min(prep.image_std) + 1e-5


def test_geometry_of_resize_and_crop():
    prep = DinoPreprocessing()
    assert prep.resized_size(256, 256) == (256, 256)
    assert prep.resized_size(512, 256) == (512, 256)
    assert prep.crop_box(256, 256) == (16, 16, 224, 224)


def _grid_features(channels: int = 2, grid: int = 16) -> torch.Tensor:
    """Patch features whose channel 0 is the patch column and channel 1 the patch row: ``[1, 2, 16, 16]``."""
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([cols, rows])[None]


def test_crop_alignment_pools_exactly_the_patches_under_the_mask():
    # a mask covering image columns 16..72 and rows 16..44 of the 256 image: after the 16-px centre crop
    # that is crop columns 0..56 = patch columns 0..3 and patch rows 0..1 exactly (patch = 14 px)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 16:44, 16:72] = 1.0
    prep = DinoPreprocessing()
    grid_mask = mask_on_patch_grid(mask, prep, (16, 16), VTCTConfig(mask_alignment="crop"))
    expected = torch.zeros(1, 1, 16, 16)
    expected[..., 0:2, 0:4] = 1.0
    torch.testing.assert_close(grid_mask, expected)
    pooled = pooled_support_feature(_grid_features(), grid_mask)  # [1, 2]
    torch.testing.assert_close(pooled, torch.tensor([[1.5, 0.5]]), rtol=1e-5, atol=1e-5)


def test_reference_alignment_reproduces_the_offset():
    # the reference resizes the uncropped 256 image's mask to 16 x 16 (16-px cells): columns 16..72 are
    # cells 1..4 (cell 4 is 8/16 covered: bilinear 0.5 is not > 0.5), rows 16..44 cells 1..2 (cell 2 12/16)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 16:44, 16:72] = 1.0
    prep = DinoPreprocessing()
    grid_mask = mask_on_patch_grid(mask, prep, (16, 16), VTCTConfig(mask_alignment="reference"))
    expected = torch.zeros(1, 1, 16, 16)
    expected[..., 1:3, 1:4] = 1.0
    torch.testing.assert_close(grid_mask, expected)
    pooled = pooled_support_feature(_grid_features(), grid_mask)
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 1.5]]), rtol=1e-5, atol=1e-5)


def test_pooling_averages_over_shots():
    features = torch.stack([_grid_features()[0], _grid_features()[0] + 10.0])  # [2, 2, 16, 16]
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, 0, 0, 0] = 1.0
    masks[1, 0, 15, 15] = 1.0
    pooled = pooled_support_feature(features, masks)
    torch.testing.assert_close(pooled, torch.tensor([[(0 + 25) / 2, (0 + 25) / 2]]), rtol=1e-5, atol=1e-4)


def test_mapper_layout_matches_the_reference_keys():
    mapper = VTCTMapper(in_dim=768, hidden_dim=1536, out_dim=768)
    keys = {k.rsplit(".", 1)[0] for k in mapper.state_dict()}
    assert keys == {"mlp.0", "mlp.1", "mlp.3", "mlp.4", "mlp.6", "mlp.7", "mlp.9"}
    assert isinstance(mapper.mlp[1], torch.nn.LayerNorm) and isinstance(mapper.mlp[2], torch.nn.GELU)
    assert mapper(torch.randn(1, 768)).shape == (1, 1, 768)


def test_condition_token_of_the_tiny_pipeline(tiny_pipeline):
    images = torch.rand(2, 3, 64, 64)
    masks = torch.zeros(2, 1, 64, 64)
    masks[..., 16:48, 16:48] = 1.0
    with torch.no_grad():
        token = tiny_pipeline.vtct(images, masks)
    assert token.shape == (1, 1, tiny_pipeline.unet.config.cross_attention_dim)
    assert tiny_pipeline.vtct.grid_size() == (8, 8)


def test_unknown_alignment_is_rejected():
    with pytest.raises(ValueError):
        mask_on_patch_grid(
            torch.ones(1, 1, 8, 8), DinoPreprocessing(), (4, 4), VTCTConfig(mask_alignment="x")
        )
