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
