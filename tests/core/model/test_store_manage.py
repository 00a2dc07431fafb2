"""Managing the store: the default model, rename, import (atomic, cancellable), registering a trained run."""

from __future__ import annotations

import errno
import json
from collections import namedtuple

import pytest

from sd_fsmis.core.engines.registry import available_engines, default_engine_name
from sd_fsmis.core.errors import JobCancelled, ModelError
from sd_fsmis.core.jobs import CancelToken
from sd_fsmis.core.model import store
from sd_fsmis.core.model.config import ModelConfig
from sd_fsmis.core.model.create import create_base_model, create_preset_model
from sd_fsmis.core.model.store import (
    default_model_name,
    import_model_folder,
    list_models,
    model_info,
    register_trained_model,
    remove_model,
    rename_model,
    resolve_model,
    set_default_model,
)
from sd_fsmis.paths import models_dir


def _hidden_leftovers() -> list[str]:
    return sorted(p.name for p in models_dir().iterdir() if p.name.startswith(".") and p.is_dir())


def test_default_model_is_chosen_followed_and_cleared():
    create_preset_model(name="alpha", seed=1)
    create_preset_model(name="beta", seed=2)
    assert default_model_name() is None
    with pytest.raises(ModelError, match="no default model chosen"):  # nothing chosen: not the newest
        resolve_model(None)
    assert default_engine_name() not in ("alpha", "beta")  # the built-in engine
    labels = {c.name: c.label for c in available_engines() if c.kind == "model"}
    assert "[untrained (random weights)]" in labels["alpha"]  # marked wherever it is offered

    set_default_model("alpha")
    assert default_model_name() == "alpha"
    assert resolve_model(None).name == "alpha"
    assert default_engine_name() == "alpha"
    flags = {m.name: m.is_default for m in list_models()}
    assert flags == {"alpha": True, "beta": False}
    assert model_info("alpha").is_default and not model_info("beta").is_default
    labels = {c.name: c.label for c in available_engines() if c.kind == "model"}
    assert labels["alpha"].startswith("alpha (default) [") and "(default)" not in labels["beta"]

    with pytest.raises(ModelError, match="no model named 'gamma'"):
        set_default_model("gamma")
    with pytest.raises(ModelError, match="not a folder path"):
        set_default_model("./alpha")
    assert default_model_name() == "alpha"

    # a default that breaks is ignored (the built-in engine is used), not an error
    (models_dir() / "alpha" / "mapper" / "diffusion_pytorch_model.safetensors").rename(
        models_dir() / "alpha" / "mapper" / "moved.safetensors"
    )
    assert default_model_name() is None and default_engine_name() not in ("alpha", "beta")
    (models_dir() / "alpha" / "mapper" / "moved.safetensors").rename(
        models_dir() / "alpha" / "mapper" / "diffusion_pytorch_model.safetensors"
    )
    assert default_model_name() == "alpha"

    remove_model("alpha")
    assert default_model_name() is None and not (models_dir() / store.DEFAULT_FILE).exists()
    set_default_model("beta")
    assert resolve_model(None).name == "beta"
    set_default_model(None)
    assert default_model_name() is None and default_engine_name() != "beta"


def test_rename_moves_the_folder_and_updates_name_and_default():
    create_preset_model(name="old-name")
    create_preset_model(name="other")
    set_default_model("old-name")
    path = rename_model("old-name", "new-name")
    assert path == models_dir() / "new-name" and not (models_dir() / "old-name").exists()
    assert ModelConfig.load(path).name == "new-name"
    assert default_model_name() == "new-name" and resolve_model(None) == path.resolve()
    assert [m.name for m in list_models()] == ["new-name", "other"]

    with pytest.raises(ModelError, match="'other' already exists"):
        rename_model("new-name", "other")
    with pytest.raises(ModelError, match="invalid model name"):
        rename_model("new-name", "bad name!")
    with pytest.raises(ModelError, match="not folder paths"):
        rename_model("new-name", "sub/dir")
    with pytest.raises(ModelError, match="no model named 'missing'"):
        rename_model("missing", "x")
    # nothing moved by the refusals
    assert [m.name for m in list_models()] == ["new-name", "other"]
    assert all(m.valid for m in list_models())


def test_import_copies_into_the_store_with_byte_progress(tmp_path):
    source = create_preset_model(out=tmp_path / "run" / "best", seed=4)
    reports = []
    path = import_model_folder(source, "imported", progress=reports.append)
    assert path == models_dir() / "imported"
    info = model_info("imported")
    assert info.valid and info.name == "imported" and ModelConfig.load(path).name == "imported"
    assert source.is_dir()  # a copy: the source stays
    size = store.folder_size(source)
    assert abs(info.size_bytes - size) < 100  # only config.json's name differs
    done = [r.done for r in reports]
    assert done == sorted(done) and done[-1] == size and {r.total for r in reports} == {size}
    # the weights are the same bytes
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (path / rel).read_bytes() == (source / rel).read_bytes()

    # the default name is the folder's; an existing name is refused
    assert import_model_folder(source).name == "best"
    with pytest.raises(ModelError, match="'imported' already exists"):
        import_model_folder(source, "imported")
    with pytest.raises(ModelError, match="model folder not found"):
        import_model_folder(tmp_path / "nowhere", "x")
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError, match=r"config\.json is missing"):
        import_model_folder(tmp_path / "not-a-model", "x")
    assert _hidden_leftovers() == []


def test_import_leaves_nothing_on_cancel_full_disk_or_write_error(tmp_path, monkeypatch):
    source = create_preset_model(out=tmp_path / "m")
    token = CancelToken()

    def cancel_after_first(report):
        if report.done > 0:
            token.cancel()

    with pytest.raises(JobCancelled):
        import_model_folder(source, "cancelled", progress=cancel_after_first, cancel=token)
    assert not (models_dir() / "cancelled").exists() and _hidden_leftovers() == []

    # a write that fails half way (the disk fills up): one line, nothing left behind
    real_copy = store._copy_file
    calls = []

    def failing_copy(src, dst, reporter):
        calls.append(src)
        if len(calls) == 3:
            dst.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst, reporter)

    monkeypatch.setattr(store, "_copy_file", failing_copy)
    with pytest.raises(ModelError, match=r"cannot import .* into the store: No space left on device"):
        import_model_folder(source, "full")
    assert not (models_dir() / "full").exists() and _hidden_leftovers() == []
    monkeypatch.setattr(store, "_copy_file", real_copy)

    # not enough free space: refused before the first byte
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ModelError, match=r"needs .* free on .*: free some space"):
        import_model_folder(source, "no-space")
    assert not (models_dir() / "no-space").exists() and _hidden_leftovers() == []


def _as_trained(folder, parent, validation: dict[str, float], best: float | None = None) -> None:
    """Give a model folder the provenance the trainer writes (see core/training/trainer.py
    provenance_config)."""
    data = json.loads((folder / "config.json").read_text())
    data["classes"] = ["liver", "spleen"]
    data["training"].update(
        kind="fine-tuned",
        sources={"parent": str(parent), "data": "/data/chaos"},
        steps=200,
        extra={"validation_dice": validation, **({"best_dice": best} if best is not None else {})},
    )
    (folder / "config.json").write_text(json.dumps(data))


def test_register_trained_model_reports_dice_classes_and_bases(tmp_path):
    parent = create_preset_model(name="base-tiny")
    run = create_preset_model(out=tmp_path / "run" / "best")
    _as_trained(run, parent, {"100": 0.41, "200": 0.52}, best=0.55)
    info = register_trained_model(run, "liver-ft", make_default=True)
    assert info.valid and info.is_default and info.name == "liver-ft"
    assert info.validation_dice == pytest.approx(0.55)
    assert info.trained_classes == ["liver", "spleen"] and info.kind == "fine-tuned"
    # the parent, and what the parent was built from; not the training data
    assert info.base_models == {"parent": str(parent), "preset": "tiny"}
    assert info.modified.endswith("Z") and info.created
    assert default_model_name() == "liver-ft" and default_engine_name() == "liver-ft"

    # without best_dice: the last validation (by step, not by text order)
    other = create_preset_model(out=tmp_path / "run2" / "model")
    _as_trained(other, parent, {"900": 0.3, "1000": 0.6})
    assert register_trained_model(other, "second").validation_dice == pytest.approx(0.6)
    assert default_model_name() == "liver-ft"
    assert model_info("base-tiny").validation_dice is None
    with pytest.raises(ModelError, match="'second' already exists"):
        register_trained_model(other, "second")


def test_import_keeps_absolute_references(hub_like_sources, tmp_path):
    sd_dir, dinov2_dir, _ = hub_like_sources
    source = create_base_model(sd_dir, dinov2_dir, out=tmp_path / "ref-model", copy_weights=False)
    path = import_model_folder(source, "ref-imported")
    info = model_info("ref-imported")
    assert info.valid and info.references == {"vae": str(sd_dir / "vae"), "image_encoder": str(dinov2_dir)}
    assert not (path / "vae").exists()
    assert info.base_models == {"stable_diffusion": str(sd_dir), "dinov2": str(dinov2_dir)}
