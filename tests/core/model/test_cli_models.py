"""``sd-fsmis models ...`` through the real entry point."""

from __future__ import annotations

import json

import pytest
import torch

from sd_fsmis.cli import main


def test_create_preset_list_info_remove(capsys, tmp_path):
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["models", "create", "--preset", "tiny", "--name", "tiny-cli", "--seed", "3"]) == 0
    assert "created model tiny-cli" in capsys.readouterr().out

    assert main(["models", "list", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["name"] == "tiny-cli" and entry["valid"] and entry["base"] == "preset tiny"
    assert entry["classes"] == [] and entry["created"] and entry["size_bytes"] > 0

    assert main(["models", "list"]) == 0
    assert "tiny-cli" in capsys.readouterr().out

    assert main(["models", "info", "tiny-cli", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["preprocessing"]["image_size"] == 64
    assert info["config"]["training"]["seed"] == 3

    assert main(["models", "create", "--preset", "tiny", "--out", str(tmp_path / "elsewhere")]) == 0
    capsys.readouterr()
    assert main(["models", "info", str(tmp_path / "elsewhere")]) == 0
    assert "preset tiny" in capsys.readouterr().out

    assert main(["models", "remove", "tiny-cli"]) == 0
    assert "removed model tiny-cli" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def _one_line_error(capsys, argv, pattern: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sd-fsmis: error:") and pattern in err[0], err


def test_user_mistakes_are_one_line(capsys, tmp_path):
    _one_line_error(capsys, ["models", "remove", "nope"], "no model named 'nope'")
    _one_line_error(capsys, ["models", "info", str(tmp_path / "missing")], "model folder not found")
    _one_line_error(
        capsys,
        ["models", "create", "--sd", "./no-sd", "--dinov2", "./no-dino", "--name", "x"],
        "Stable Diffusion folder not found: ./no-sd",
    )
    _one_line_error(
        capsys, ["models", "create", "--preset", "tiny", "--name", "bad/name"], "invalid model name"
    )
    _one_line_error(
        capsys,
        [
            "models",
            "import-reference",
            str(tmp_path),
            "--sd",
            str(tmp_path),
            "--dinov2",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        "holds no reference checkpoint",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_one_line_error_with_exit_code_2(capsys):
    assert main(["models", "create", "--preset", "tiny", "--name", "tiny-dev"]) == 0
    capsys.readouterr()
    _one_line_error(
        capsys, ["models", "check", "tiny-dev", "--device", "cuda"], "device 'cuda' was asked for"
    )


def test_check_runs_the_model_on_the_cpu(capsys):
    assert main(["models", "create", "--preset", "tiny", "--name", "tiny-check"]) == 0
    capsys.readouterr()
    assert main(["models", "check", "--device", "cpu"]) == 2  # no default chosen: say so, take none
    assert "no default model chosen" in capsys.readouterr().err
    assert main(["models", "default", "tiny-check"]) == 0
    assert main(["models", "check", "--device", "cpu"]) == 0  # the store's default model
    assert "tiny-check on CPU (float32): 8 slices" in capsys.readouterr().out


def test_create_with_the_reference_preprocessing(capsys, tmp_path):
    from sd_fsmis.core.model.folder import load_pipeline

    out = tmp_path / "reference-recipe"
    assert (
        main(["models", "create", "--preset", "tiny", "--out", str(out), "--preprocessing", "reference"]) == 0
    )
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 2
    assert (
        config["preprocessing"]["image_interpolation"]
        == config["preprocessing"]["mask_interpolation"]
        == "nearest"
    )
    vtct = config["vtct"]
    assert (vtct["mask_alignment"], vtct["quantize_8bit"], vtct["position_embedding_interpolation"]) == (
        "reference",
        True,
        "reference",
    )
    assert main(["models", "info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["DINOv2", "positions", "reference"] for line in lines)
    assert any(line.split() == ["format", "version", "2"] for line in lines)
    pipe = load_pipeline(out)  # the loaded DINOv2 uses the recorded interpolation
    assert pipe.image_encoder.embeddings.sd_fsmis_position_interpolation == "reference"
    # ours by default
    assert main(["models", "create", "--preset", "tiny", "--out", str(tmp_path / "ours")]) == 0
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours["format_version"] == 1 and ours["vtct"]["position_embedding_interpolation"] == "size"
    assert ours["preprocessing"]["image_interpolation"] == "bilinear"
