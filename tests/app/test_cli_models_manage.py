"""``sd-fsmis models rename/default/import/download`` and how they play with ``list`` and ``remove``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sd_fsmis.cli import main
from sd_fsmis.core.model.create import create_preset_model
from sd_fsmis.paths import models_dir


def _out(capsys) -> str:
    return capsys.readouterr().out


def _listed(capsys) -> dict[str, dict]:
    assert main(["models", "list", "--json"]) == 0
    return {m["name"]: m for m in json.loads(_out(capsys))}


def _one_line_error(capsys, argv, pattern: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sd-fsmis: error:") and pattern in err[0], err


def test_default_rename_import_remove(capsys, tmp_path):
    create_preset_model(name="first", seed=1)
    create_preset_model(name="second", seed=2)
    assert main(["models", "default"]) == 0
    assert _out(capsys).strip().startswith("no default model chosen: the built-in engine is used")

    assert main(["models", "default", "first"]) == 0
    assert "default model: first" in _out(capsys)
    assert main(["models", "default"]) == 0
    assert _out(capsys).strip() == "first"
    listed = _listed(capsys)
    assert listed["first"]["is_default"] and not listed["second"]["is_default"]
    assert listed["first"]["validation_dice"] is None and listed["first"]["size_bytes"] > 0
    assert main(["models", "list"]) == 0
    table = _out(capsys).splitlines()
    assert "DICE" in table[0] and "SIZE" in table[0]
    assert table[1].startswith("first (default)") and table[2].startswith("second ")

    # renaming the default keeps it the default
    assert main(["models", "rename", "first", "renamed"]) == 0
    assert "renamed model first to renamed" in _out(capsys)
    assert main(["models", "default"]) == 0
    assert _out(capsys).strip() == "renamed"
    _one_line_error(capsys, ["models", "rename", "renamed", "second"], "'second' already exists")
    _one_line_error(capsys, ["models", "rename", "nope", "x"], "no model named 'nope'")
    _one_line_error(capsys, ["models", "default", "nope"], "no model named 'nope'")
    _one_line_error(capsys, ["models", "default", "second", "--clear"], "or --clear")

    # import a training run's model folder as the new default
    run_model = create_preset_model(out=tmp_path / "run" / "best", seed=3)
    config = json.loads((run_model / "config.json").read_text())
    config["training"]["extra"] = {"best_dice": 0.8123, "validation_dice": {"100": 0.7, "200": 0.8123}}
    (run_model / "config.json").write_text(json.dumps(config))
    assert main(["models", "import", str(run_model), "--name", "trained", "--default"]) == 0
    assert "imported model trained into" in _out(capsys) and run_model.is_dir()
    listed = _listed(capsys)
    assert listed["trained"]["is_default"] and listed["trained"]["validation_dice"] == pytest.approx(0.8123)
    assert main(["models", "list"]) == 0
    assert any(line.startswith("trained (default)") and "0.812" in line for line in _out(capsys).splitlines())
    _one_line_error(capsys, ["models", "import", str(run_model), "--name", "trained"], "already exists")
    _one_line_error(capsys, ["models", "import", str(tmp_path / "none")], "model folder not found")

    # removing the default falls back to the newest; clearing forgets the choice
    assert main(["models", "remove", "trained"]) == 0
    _out(capsys)
    assert main(["models", "default"]) == 0
    assert "no default model chosen" in _out(capsys)
    assert main(["models", "default", "second"]) == 0
    assert main(["models", "default", "--clear"]) == 0
    assert "default model cleared" in _out(capsys)
    assert not any(m["is_default"] for m in _listed(capsys).values())
    assert sorted(p.name for p in models_dir().iterdir()) == ["renamed", "second"]


def test_download_prints_both_folders(capsys, tmp_path, monkeypatch):
    """The Hub is replaced at its network boundary (``HfApi.model_info`` and ``hf_hub_download``) by a
    stand-in that writes the files into a temporary Hugging Face cache; the rest is the real code."""
    import huggingface_hub
    import huggingface_hub.constants

    files = {
        "owner/sd": {"unet/config.json": b"{}", "vae/config.json": b"{}", "text_encoder/config.json": b"{}"},
        "owner/dino": {"config.json": b"{}", "model.safetensors": b"x" * 100},
    }
    cache = tmp_path / "hf-cache"

    def model_info(self, repo_id, revision=None, files_metadata=False, **_):
        siblings = [SimpleNamespace(rfilename=n, size=len(d)) for n, d in files[repo_id].items()]
        return SimpleNamespace(sha="0" * 40, siblings=siblings)

    def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None, tqdm_class=None, **_):
        target = (
            Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40) / filename
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[repo_id][filename])
        return str(target)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert main(["models", "download", "--sd", "owner/sd", "--dinov2", "owner/dino"]) == 0
    lines = _out(capsys).splitlines()
    sd_dir = Path(lines[0].removeprefix("Stable Diffusion: "))
    dino_dir = Path(lines[1].removeprefix("DINOv2: "))
    assert (sd_dir / "unet" / "config.json").is_file() and not (sd_dir / "text_encoder").exists()
    assert (dino_dir / "model.safetensors").stat().st_size == 100
    assert sd_dir.is_relative_to(cache) and dino_dir.is_relative_to(cache)
    _one_line_error(
        capsys,
        ["models", "download", "--sd", "owner/missing"],
        "could not download Stable Diffusion 'owner/missing'",
    )
