"""Base models from SD-like and DINOv2 folders, and the import of a reference checkpoint."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.model.config import ModelConfig
from sd_fsmis.core.model.create import create_base_model, looks_like_hub_id, resolve_source
from sd_fsmis.core.model.folder import load_pipeline
from sd_fsmis.core.model.reference_import import import_reference_checkpoint
from sd_fsmis.core.model.store import model_info


def test_base_model_input_convolutions_are_exactly_the_spec(hub_like_sources, tmp_path, phantom):
    sd_dir, dinov2_dir, parts = hub_like_sources
    folder = create_base_model(sd_dir, dinov2_dir, out=tmp_path / "base", seed=7)
    config = ModelConfig.load(folder)
    assert config.training.kind == "base" and config.vtct.mask_alignment == "crop"
    assert config.components.vae == "vae" and config.components.image_encoder == "image_encoder"
    # VAE and DINOv2 copied byte for byte, processor config included
    assert filecmp.cmp(
        sd_dir / "vae" / "diffusion_pytorch_model.safetensors",
        folder / "vae" / "diffusion_pytorch_model.safetensors",
        shallow=False,
    )
    assert filecmp.cmp(
        dinov2_dir / "model.safetensors", folder / "image_encoder" / "model.safetensors", shallow=False
    )
    assert filecmp.cmp(
        dinov2_dir / "preprocessor_config.json",
        folder / "image_encoder" / "preprocessor_config.json",
        shallow=False,
    )

    pipe = load_pipeline(folder, device="cpu")
    w4, b4 = parts["unet"].conv_in.weight.detach(), parts["unet"].conv_in.bias.detach()  # [C, 4, 3, 3]
    w8, b8 = pipe.unet.conv_in.weight.detach(), pipe.unet.conv_in.bias.detach()
    wr, br = pipe.conv_in_ref.conv.weight.detach(), pipe.conv_in_ref.conv.bias.detach()
    assert w8.shape == wr.shape == (w4.shape[0], 8, 3, 3)
    assert torch.equal(w8[:, :4], w4 * 0.5) and torch.equal(w8[:, 4:], w4 * 0.5)
    assert torch.equal(wr[:, :4], w4 / 2) and torch.equal(wr[:, 4:], w4 / 2)
    assert torch.equal(b8, b4) and torch.equal(br, b4)
    # everything else of the U-Net is SD's
    stock = parts["unet"].state_dict()
    for key, value in pipe.unet.state_dict().items():
        if not key.startswith("conv_in."):
            assert torch.equal(value, stock[key]), key
    # the mapper is seeded: the same seed gives the same weights
    again = load_pipeline(create_base_model(sd_dir, dinov2_dir, out=tmp_path / "again", seed=7))
    assert torch.equal(again.mapper.mlp[0].weight, pipe.mapper.mlp[0].weight)

    volume, mask = phantom
    soft = pipe.segment_slices([volume[2]], [mask], volume[:2])
    assert soft.shape == (2, *volume.shape[1:]) and np.isfinite(soft).all()


def test_reference_weights_point_to_the_source_folders(hub_like_sources, tmp_path, phantom):
    sd_dir, dinov2_dir, _ = hub_like_sources
    copied = create_base_model(sd_dir, dinov2_dir, out=tmp_path / "copied", seed=1)
    referenced = create_base_model(sd_dir, dinov2_dir, name="by-reference", seed=1, copy_weights=False)
    assert not (referenced / "vae").exists() and not (referenced / "image_encoder").exists()
    info = model_info("by-reference")
    assert info.valid and info.references == {"vae": str(sd_dir / "vae"), "image_encoder": str(dinov2_dir)}
    volume, mask = phantom
    a = load_pipeline(copied).segment_slices([volume[2]], [mask], volume[:2])
    b = load_pipeline(referenced).segment_slices([volume[2]], [mask], volume[:2])
    np.testing.assert_array_equal(a, b)
    # the referenced folder disappears: the model says what is missing
    (dinov2_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"image_encoder \(referenced\) is incomplete"):
        load_pipeline(referenced)


def test_sources_local_hub_or_clear_error(tmp_path, monkeypatch):
    assert looks_like_hub_id("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert looks_like_hub_id("facebook/dinov2-base")
    for text in ("./sd15", "../sd15", "/abs/sd15", "~/sd15", "a/b/c", "C:\\models\\sd", "sd15"):
        assert not looks_like_hub_id(text), text
    assert resolve_source(tmp_path, "X", []) == tmp_path.resolve()
    with pytest.raises(ModelError, match=r"Stable Diffusion folder not found: \./missing-sd"):
        resolve_source("./missing-sd", "Stable Diffusion", [])
    with pytest.raises(ModelError, match="folder not found"):
        resolve_source(str(tmp_path / "nope" / "sd"), "Stable Diffusion", [])
    # a Hub id is downloaded, and a failed download is one line (offline here: nothing leaves the machine)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ModelError, match="could not download DINOv2 'someone/not-here' from the Hugging Face Hub"
    ):
        resolve_source("someone/not-here", "DINOv2", ["config.json"])


def test_source_without_the_expected_layout(hub_like_sources, tmp_path):
    sd_dir, dinov2_dir, _ = hub_like_sources
    with pytest.raises(ModelError, match="not a Stable Diffusion folder: its unet/ subfolder is missing"):
        create_base_model(dinov2_dir, dinov2_dir, out=tmp_path / "x")
    (sd_dir / "vae" / "diffusion_pytorch_model.safetensors").rename(
        sd_dir / "vae" / "diffusion_pytorch_model.bin"
    )
    with pytest.raises(ModelError, match="only pickle weights"):
        create_base_model(sd_dir, dinov2_dir, out=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _reference_checkpoint(root, parts, step: int = 500, pickle_unet: bool = False):
    """``root/checkpoint-<step>/`` laid out as the reference saves it, built from a tiny 8-channel U-Net."""
    from diffusers import UNet2DConditionModel

    from sd_fsmis.core.model.vtct import VTCTMapper

    torch.manual_seed(5)
    config = dict(parts["unet"].config)
    config["in_channels"] = 8
    unet = UNet2DConditionModel.from_config(config)
    ckpt = root / f"checkpoint-{step}"
    (ckpt / "unet").mkdir(parents=True)
    ref_config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    ref_config.update(
        _class_name="SDFSMISUNet2DConditionModel", _diffusers_version="0.25.0", in_channels_ref=8
    )
    (ckpt / "unet" / "config.json").write_text(json.dumps(ref_config))
    state = {k: v.contiguous() for k, v in unet.state_dict().items()}
    state["conv_in_ref.weight"] = torch.randn_like(state["conv_in.weight"])
    state["conv_in_ref.bias"] = torch.randn_like(state["conv_in.bias"])
    if pickle_unet:
        torch.save(state, ckpt / "unet" / "diffusion_pytorch_model.bin")
    else:
        save_file(
            state, str(ckpt / "unet" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"}
        )
    mapper = VTCTMapper(in_dim=32, hidden_dim=48, out_dim=32)
    (ckpt / "image_projector").mkdir()
    (ckpt / "image_projector" / "config.json").write_text(
        json.dumps({"_class_name": "ImageProjModel", "in_dim": 32, "out_dim": 32})
    )
    save_file(
        {k: v.contiguous() for k, v in mapper.state_dict().items()},
        str(ckpt / "image_projector" / "diffusion_pytorch_model.safetensors"),
    )
    return ckpt, state, mapper.state_dict()


def test_reference_import(hub_like_sources, tmp_path, phantom):
    sd_dir, dinov2_dir, parts = hub_like_sources
    _, state, mapper_state = _reference_checkpoint(tmp_path / "run", parts)
    (tmp_path / "run" / "checkpoint-100").mkdir()  # an older one: the latest is chosen from the run folder
    folder = import_reference_checkpoint(tmp_path / "run", sd_dir, dinov2_dir, out=tmp_path / "imported")
    config = ModelConfig.load(folder)
    assert config.vtct.mask_alignment == "reference" and config.vtct.quantize_8bit
    # transformers 4.36.2's position-embedding interpolation, which readers of format 1 do not know
    assert config.vtct.position_embedding_interpolation == "reference"
    assert json.loads((folder / "config.json").read_text())["format_version"] == 2
    assert config.preprocessing.image_interpolation == config.preprocessing.mask_interpolation == "nearest"
    assert config.training.kind == "reference-import" and config.training.steps == 500
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    assert unet_config["_class_name"] == "UNet2DConditionModel" and "in_channels_ref" not in unet_config

    pipe = load_pipeline(folder)
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(pipe.conv_in_ref.conv.weight, state["conv_in_ref.weight"])
    assert torch.equal(pipe.conv_in_ref.conv.bias, state["conv_in_ref.bias"])
    for key, value in pipe.mapper.state_dict().items():
        assert torch.equal(value, mapper_state[key]), key
    volume, mask = phantom
    assert np.isfinite(pipe.segment_slices([volume[2]], [mask], volume[:2])).all()


def test_base_model_with_the_reference_recipe(hub_like_sources, tmp_path):
    sd_dir, dinov2_dir, _ = hub_like_sources
    folder = create_base_model(sd_dir, dinov2_dir, out=tmp_path / "base", preprocessing="reference")
    config = ModelConfig.load(folder)
    assert config.preprocessing.image_interpolation == "nearest" and config.vtct.quantize_8bit
    assert config.vtct.mask_alignment == config.vtct.position_embedding_interpolation == "reference"
    with pytest.raises(ModelError, match="unknown preprocessing 'paper'"):
        create_base_model(sd_dir, dinov2_dir, out=tmp_path / "other", preprocessing="paper")
    assert not (tmp_path / "other").exists()


def test_reference_import_needs_only_the_vae_of_stable_diffusion(hub_like_sources, tmp_path):
    import shutil

    sd_dir, dinov2_dir, parts = hub_like_sources
    _, state, _ = _reference_checkpoint(tmp_path / "run", parts)
    vae_only = tmp_path / "sd-vae-only"
    shutil.copytree(sd_dir / "vae", vae_only / "vae")  # no unet/: the U-Net comes from the checkpoint
    folder = import_reference_checkpoint(tmp_path / "run", vae_only, dinov2_dir, out=tmp_path / "imported")
    pipe = load_pipeline(folder)
    for key, value in pipe.vae.state_dict().items():
        assert torch.equal(value, parts["vae"].state_dict()[key]), key
    assert torch.equal(pipe.conv_in_ref.conv.weight, state["conv_in_ref.weight"])
    # a base model still needs Stable Diffusion's U-Net, and says so
    with pytest.raises(ModelError, match="unet/ subfolder is missing"):
        create_base_model(vae_only, dinov2_dir, out=tmp_path / "base")


def test_reference_import_refuses_pickle(hub_like_sources, tmp_path):
    sd_dir, dinov2_dir, parts = hub_like_sources
    ckpt, _, _ = _reference_checkpoint(tmp_path / "run", parts, pickle_unet=True)
    with pytest.raises(ModelError, match=r"saved as pickle .*convert it to safetensors"):
        import_reference_checkpoint(ckpt, sd_dir, dinov2_dir, out=tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


def test_reference_import_checks_the_weights_against_the_config(hub_like_sources, tmp_path):
    sd_dir, dinov2_dir, parts = hub_like_sources
    ckpt, state, _ = _reference_checkpoint(tmp_path / "run", parts)
    del state["conv_in.bias"]
    save_file(state, str(ckpt / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelError, match=r"1 missing \(e.g. conv_in.bias\)"):
        import_reference_checkpoint(ckpt, sd_dir, dinov2_dir, out=tmp_path / "imported")
