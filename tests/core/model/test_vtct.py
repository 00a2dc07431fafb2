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


# -- DINOv2 position embeddings (518-px model, 224-px input) ---------------------------------------------
def _dinov2_518():
    """A tiny DINOv2 built for 518 px (a 37 x 37 position grid), as DINOv2-base."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=518
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # distinct, non-smooth embeddings: any interpolation difference shows
        model.embeddings.position_embeddings.normal_()
    return model


def _by_hand_tokens(model, pixel_values: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, last hidden state) of ``model`` with its position grid resized by hand."""
    import torch.nn.functional as F

    pos = model.embeddings.position_embeddings.detach()  # [1, 1 + 37 * 37, C]
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    if mode == "size":  # later transformers (5.x, installed here)
        resized = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    else:  # transformers 4.36.2: height // 14 + 0.1 over sqrt(37 * 37)
        scale = (16 + 0.1) / 37
        resized = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
    assert resized.shape[-2:] == (16, 16)
    pos = torch.cat([pos[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 256, -1)], dim=1)
    patches = model.embeddings.patch_embeddings(pixel_values)  # [1, 256, C]
    cls = model.embeddings.cls_token.expand(patches.shape[0], -1, -1)
    embeddings = torch.cat([cls, patches], dim=1) + pos
    hidden = embeddings
    for layer in model.encoder.layer:
        hidden = layer(hidden)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return embeddings, model.layernorm(hidden)


@pytest.mark.parametrize("mode", ["size", "reference"])
def test_position_embedding_interpolation_gives_the_tokens_of_its_formula(mode):
    from sd_fsmis.core.model.vtct import use_position_embedding_interpolation

    model = _dinov2_518()
    x = torch.randn(1, 3, 224, 224)
    use_position_embedding_interpolation(model, mode)
    with torch.no_grad():
        expected_embeddings, expected_tokens = _by_hand_tokens(model, x, mode)
        torch.testing.assert_close(model.embeddings(x), expected_embeddings, rtol=0, atol=1e-6)
        tokens = model(pixel_values=x).last_hidden_state
    assert tokens.shape == (1, 257, 16)
    torch.testing.assert_close(tokens, expected_tokens, rtol=1e-5, atol=1e-5)


def test_the_two_interpolations_differ_and_size_is_what_transformers_does_now():
    from sd_fsmis.core.model.vtct import use_position_embedding_interpolation

    x = torch.randn(1, 3, 224, 224)
    model = _dinov2_518()
    with torch.no_grad():
        installed = model(pixel_values=x).last_hidden_state  # this transformers' own interpolation (5.x)
        use_position_embedding_interpolation(model, "size")
        size = model(pixel_values=x).last_hidden_state
        use_position_embedding_interpolation(model, "reference")
        reference = model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(size, installed, rtol=0, atol=1e-6)
    assert (size - reference).abs().max() > 1e-2
    # at the native size nothing is resized, whatever the mode
    with torch.no_grad():
        full = torch.randn(1, 3, 518, 518)
        reference_full = model.embeddings(full)
        use_position_embedding_interpolation(model, "size")
        torch.testing.assert_close(model.embeddings(full), reference_full, rtol=0, atol=0)


def test_the_pipeline_uses_the_models_interpolation_and_a_deep_copy_keeps_it():
    import copy

    from sd_fsmis.core.model.vtct import VisualToTextualConditionTranslator

    model = _dinov2_518()
    mapper = VTCTMapper(in_dim=16, hidden_dim=8, out_dim=4)
    vtct = VisualToTextualConditionTranslator(
        model, mapper, DinoPreprocessing(), VTCTConfig(position_embedding_interpolation="reference")
    )
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, expected = _by_hand_tokens(model, x, "reference")
        torch.testing.assert_close(vtct.image_encoder(pixel_values=x).last_hidden_state, expected)
        twin = copy.deepcopy(model)
        twin.embeddings.position_embeddings.zero_()  # the copy's own embeddings are used, not the original's
        assert not torch.allclose(twin(pixel_values=x).last_hidden_state, expected, atol=1e-3)
    with pytest.raises(ValueError, match="unknown position-embedding interpolation"):
        VisualToTextualConditionTranslator(
            model, mapper, DinoPreprocessing(), VTCTConfig(position_embedding_interpolation="nearest")
        )


def test_format_version_2_only_for_the_reference_interpolation():
    from sd_fsmis.core.errors import ModelError
    from sd_fsmis.core.model.config import ModelConfig

    assert ModelConfig().to_dict()["format_version"] == 1
    assert ModelConfig().to_dict()["vtct"]["position_embedding_interpolation"] == "size"
    reference = ModelConfig(vtct=VTCTConfig(position_embedding_interpolation="reference"))
    data = reference.to_dict()
    assert data["format_version"] == 2
    assert ModelConfig.from_dict(data).validate().vtct.position_embedding_interpolation == "reference"
    # a config written before the option existed is a "size" model (what transformers 5 did)
    old = ModelConfig().to_dict()
    del old["vtct"]["position_embedding_interpolation"]
    assert ModelConfig.from_dict(old).validate().vtct.position_embedding_interpolation == "size"
    with pytest.raises(ModelError, match="position-embedding interpolation 'cubic'"):
        ModelConfig(vtct=VTCTConfig(position_embedding_interpolation="cubic")).validate()
