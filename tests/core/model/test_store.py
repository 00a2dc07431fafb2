"""Model folders and the store: save/load round trip, config JSON, refusals with one-line ModelErrors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.model.config import FORMAT_VERSION, ModelConfig, PostprocessingConfig, VTCTConfig
from sd_fsmis.core.model.folder import load_pipeline, save_pipeline, validate_model_folder
from sd_fsmis.core.model.store import list_models, model_info, remove_model, resolve_model
from sd_fsmis.paths import models_dir


def test_config_json_round_trip():
    config = ModelConfig(
        name="m",
        classes=["liver", "spleen"],
        vtct=VTCTConfig(mask_alignment="reference", quantize_8bit=True),
        postprocessing=PostprocessingConfig(largest_component=False),
    )
    config.training.extra["dice"] = 0.8
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    data = json.loads(config.to_json())
    # format 1: nothing in it needs the reference's position embeddings (format 2)
    assert data["_kind"] == "sd-fsmis-model" and data["format_version"] == 1 < FORMAT_VERSION
    data["unknown_future_key"] = 1
    assert ModelConfig.from_dict(data) == config
    with pytest.raises(ModelError, match="mask alignment"):
        ModelConfig(vtct=VTCTConfig(mask_alignment="sideways")).validate()
    with pytest.raises(ModelError, match="malformed"):
        ModelConfig.from_dict({"classes": "liver"})


def test_save_then_load_gives_identical_outputs(tiny_pipeline, phantom, tmp_path):
    volume, mask = phantom
    folder = save_pipeline(tiny_pipeline, tmp_path / "model")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "conv_in_ref", "image_encoder", "mapper", "unet", "vae"]
    weights = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix != ".json"
    )
    assert weights and all(w.endswith(".safetensors") for w in weights)
    loaded = load_pipeline(folder, device="cpu")
    assert loaded.unet.config.in_channels == 8
    assert loaded.dino_preprocessing == tiny_pipeline.dino_preprocessing
    assert loaded.config.preprocessing == tiny_pipeline.config.preprocessing
    before = tiny_pipeline.segment_slices([volume[2]], [mask], volume[:3])
    after = loaded.segment_slices([volume[2]], [mask], volume[:3])
    np.testing.assert_array_equal(after, before)


@pytest.fixture
def stored_tiny(tiny_pipeline):
    return save_pipeline(tiny_pipeline, models_dir() / "tiny-a", name="tiny-a")


def test_incomplete_folder_is_a_model_error(stored_tiny):
    shutil.rmtree(stored_tiny / "mapper")
    with pytest.raises(ModelError, match="mapper is missing"):
        validate_model_folder(stored_tiny)
    info = model_info("tiny-a")
    assert not info.valid and "mapper" in info.problem
    assert [m.valid for m in list_models()] == [False]  # listed, as broken, so that it can be removed


def test_missing_weights_and_missing_config(stored_tiny):
    (stored_tiny / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"vae is incomplete: no weights"):
        validate_model_folder(stored_tiny)
    (stored_tiny / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json is missing"):
        validate_model_folder(stored_tiny)


def test_pickle_only_weights_are_refused(stored_tiny):
    unet = stored_tiny / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": torch.zeros(1)}, unet / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only pickle weights \(diffusion_pytorch_model.bin\).*safetensors"):
        load_pipeline(stored_tiny)


def test_other_format_version_is_refused(stored_tiny):
    path = stored_tiny / "config.json"
    data = json.loads(path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="format version"):
        resolve_model("tiny-a")


def test_a_foreign_config_is_not_a_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ModelError, match="not an SD-FSMIS model folder"):
        validate_model_folder(tmp_path)


def test_resolve_list_and_remove(stored_tiny, tmp_path):
    assert resolve_model("tiny-a") == stored_tiny
    assert resolve_model(str(stored_tiny)) == stored_tiny
    with pytest.raises(ModelError, match="no default model chosen"):  # never the newest by itself
        resolve_model(None)
    with pytest.raises(ModelError, match="no model named 'nope'"):
        resolve_model("nope")
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_model(str(tmp_path / "missing"))
    [info] = list_models()
    assert info.name == "tiny-a" and info.valid and info.base == "preset tiny" and info.size_bytes > 0
    assert remove_model("tiny-a") == stored_tiny
    assert not stored_tiny.exists() and list_models() == []
    with pytest.raises(ModelError, match="no model named"):
        remove_model("tiny-a")
    with pytest.raises(ModelError, match="no model installed"):
        resolve_model(None)


def test_saving_into_a_non_empty_folder_is_refused(tiny_pipeline, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        save_pipeline(tiny_pipeline, target)
    assert (target / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temporary folder left behind
