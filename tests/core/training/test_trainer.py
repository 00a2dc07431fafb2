"""The trainer on CHAOS with the tiny preset: the loss falls, cancel + resume reproduce, models load."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.checkpoint

from sd_fsmis.core.errors import JobCancelled
from sd_fsmis.core.jobs import CancelToken
from sd_fsmis.core.model.config import ModelConfig
from sd_fsmis.core.model.create import create_preset_model
from sd_fsmis.core.model.presets import build_random_pipeline
from sd_fsmis.core.training.config import TrainingConfig, TrainingConfigError
from sd_fsmis.core.training.networks import add_lora, merged_unet, sqi_checkpointing
from sd_fsmis.core.training.run_folder import checkpoint_dirs
from sd_fsmis.core.training.trainer import train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return create_preset_model("tiny", out=tmp_path_factory.mktemp("base") / "tiny", seed=0)


def config_for(tiny_model, chaos_dir, out, **overrides) -> TrainingConfig:
    values = dict(
        model=str(tiny_model),
        data=str(chaos_dir),
        out=str(out),
        device="cpu",
        fold=0,
        checkpoint_every=1000,
        validate_every=0,
        dice_validation=False,
        heldout_episodes=0,
    )
    values.update(overrides)
    return TrainingConfig(**values)


def test_config_json_round_trip_and_errors(tmp_path):
    config = TrainingConfig(
        model="m",
        data="d",
        out="o",
        steps=7,
        adam_betas=(0.8, 0.99),
        classes=[1, 4],
        validation_ids=[3],
        validate_before=True,
        class_names={1: "liver", 4: "spleen"},
        test_classes=[],
    )
    path = tmp_path / "run.json"
    path.write_text(config.to_json())
    assert json.loads(path.read_text())["class_names"] == {"1": "liver", "4": "spleen"}
    assert TrainingConfig.load(path) == config
    with pytest.raises(TrainingConfigError, match="both training and validation"):
        TrainingConfig.from_dict({**config.to_dict(), "train_ids": [1, 3]})
    with pytest.raises(TrainingConfigError, match="both trained on and held out"):
        TrainingConfig.from_dict({**config.to_dict(), "test_classes": [4]})
    with pytest.raises(TrainingConfigError, match="whole numbers"):
        TrainingConfig.from_dict({**config.to_dict(), "classes": [1.5]})
    defaults = TrainingConfig(model="m", data="d", out="o")
    assert (defaults.steps, defaults.accumulation, defaults.seed) == (15_000, 4, 42)
    assert (defaults.lr_unet, defaults.lr_mapper, defaults.weight_decay) == (1e-5, 5e-5, 1e-2)
    with pytest.raises(TrainingConfigError, match="unknown"):
        TrainingConfig.from_dict({**config.to_dict(), "learning_rate": 1})
    with pytest.raises(TrainingConfigError, match="setting"):
        TrainingConfig.from_dict({**config.to_dict(), "setting": 3})


def test_training_lowers_the_heldout_loss(tiny_model, chaos_dir, tmp_path):
    config = config_for(
        tiny_model,
        chaos_dir,
        tmp_path / "run",
        steps=60,
        accumulation=2,
        heldout_episodes=12,
        dice_validation=True,
        validate_every=30,
        validation_volumes=2,
    )
    seen = []
    result = train(config, progress=lambda p: seen.append(p.extra))
    # "best" was chosen on two training volumes held out from training, never on the test fold (1, 2, 3, 5, 8)
    selection = ModelConfig.load(result.best_dir).training.extra["model_selection"]
    held_out = selection["validation_volumes"]
    assert len(held_out) == 2 and not set(held_out) & {1, 2, 3, 5, 8}
    assert selection["test_volumes"] == [1, 2, 3, 5, 8] and selection["classes"] == [1, 4]
    trained_on = ModelConfig.load(result.model_dir).training.datasets[0]
    assert not any(f" {i}," in f" {trained_on}," for i in held_out)
    first, last = result.heldout_losses[0], result.heldout_losses[60]
    print(f"held-out loss {first:.4f} -> {last:.4f}; {result.steps_per_second:.2f} steps/s")
    assert last < 0.8 * first
    assert len(result.losses) == 60 and np.isfinite(result.losses).all()
    assert set(result.validation) == {30, 60} and all(0.0 <= d <= 1.0 for d in result.validation.values())
    steps = [e for e in seen if "loss" in e]
    assert [e["step"] for e in steps] == list(range(1, 61))
    assert steps[0]["lr"] == pytest.approx(1e-5 * 59 / 60) and steps[-1]["lr"] == 0.0  # linear, no warm-up
    assert steps[0]["lr_mapper"] == pytest.approx(5e-5 * 59 / 60)
    assert all(e["samples_per_s"] > 0 for e in steps) and steps[-1]["eta_s"] == 0
    # the last and the best models, with the provenance
    saved = ModelConfig.load(result.model_dir)
    assert saved.training.kind == "fine-tuned" and saved.training.steps == 60 and saved.training.seed == 42
    assert saved.training.held_out_classes == ["right kidney", "left kidney"]
    assert saved.classes == ["liver", "spleen"]
    assert saved.training.extra["training_config"]["fold"] == 0
    assert result.best_dir is not None and ModelConfig.load(result.best_dir).training.extra["best_dice"] >= 0


def test_without_validation_volumes_nothing_is_chosen_on_the_test_fold(tiny_model, chaos_dir, tmp_path):
    config = config_for(
        tiny_model,
        chaos_dir,
        tmp_path / "run",
        steps=2,
        accumulation=1,
        dice_validation=True,
        validate_every=1,
        validate_before=True,
        heldout_episodes=4,
        # the reference's training recipe runs through the same loop
        setting=2,
        exclusion="reference",
        episode_minimum="largest",
        augmentation="reference",
    )
    result = train(config)
    assert result.validation == {} and result.heldout_losses == {} and result.best_dir is None
    assert not (tmp_path / "run" / "best").exists() and result.model_dir.is_dir()
    saved = ModelConfig.load(result.model_dir)
    assert saved.training.extra["model_selection"]["validation_volumes"] == []
    recipe = saved.training.extra["training_config"]
    assert (recipe["exclusion"], recipe["episode_minimum"], recipe["augmentation"]) == (
        "reference",
        "largest",
        "reference",
    )
    with pytest.raises(TrainingConfigError, match="at least one must stay"):
        train(
            config_for(
                tiny_model, chaos_dir, tmp_path / "run2", steps=1, train_ids=[10, 13], validation_volumes=2
            )
        )


def test_cancel_then_resume_reproduces_the_uninterrupted_run(tiny_model, chaos_dir, tmp_path):
    from sd_fsmis.core.model.engine import SDFSMISEngine

    common = dict(steps=10, accumulation=2, checkpoint_every=4, checkpoints_total_limit=2)
    full = train(config_for(tiny_model, chaos_dir, tmp_path / "full", **common))

    cancel = CancelToken()

    def stop_at_6(p):
        if p.extra.get("step") == 6:
            cancel.cancel()

    interrupted = config_for(tiny_model, chaos_dir, tmp_path / "cut", **common)
    # the token is set while step 6 is reported; the trainer sees it after step 7 and checkpoints there
    with pytest.raises(JobCancelled, match="step 7"):
        train(interrupted, progress=stop_at_6, cancel=cancel)
    names = [p.name for p in checkpoint_dirs(tmp_path / "cut")]
    assert names == ["checkpoint-4", "checkpoint-7"]
    state = json.loads((checkpoint_dirs(tmp_path / "cut")[-1] / "trainer_state.json").read_text())
    assert state["step"] == 7 and len(state["losses"]) == 7 and "bit_generator" in state["sampler"]
    assert not list((tmp_path / "cut" / "checkpoints").glob(".tmp-*"))
    # the cancelled run's model loads and segments
    engine = SDFSMISEngine.from_pretrained(tmp_path / "cut" / "model", device="cpu")
    image = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    mask = np.zeros((1, 64, 64), dtype=np.float32)
    mask[0, 20:40, 20:40] = 1
    soft = engine.pipeline.segment_slices(image[:1], mask, image[1:])
    assert soft.shape == (2, 64, 64) and np.isfinite(soft).all()

    resumed = train(TrainingConfig(**{**interrupted.to_dict(), "adam_betas": (0.9, 0.999), "resume": True}))
    assert resumed.resumed_from == 7 and resumed.steps == 10
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-5, atol=1e-7)
    assert [p.name for p in checkpoint_dirs(tmp_path / "cut")][-1] == "checkpoint-10"
    assert len(checkpoint_dirs(tmp_path / "cut")) == 2  # keeps the newest checkpoints_total_limit


def test_a_full_disk_while_checkpointing_leaves_no_half_written_checkpoint(
    tiny_model, chaos_dir, tmp_path, monkeypatch
):
    import errno

    import sd_fsmis.core.training.trainer as trainer

    real_write = trainer.atomic_write_text

    def write(path, text, *args, **kwargs):
        if Path(path).name == trainer.TRAINER_STATE and "checkpoint-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(trainer, "atomic_write_text", write)
    config = config_for(tiny_model, chaos_dir, tmp_path / "run", steps=4, checkpoint_every=2)
    with pytest.raises(OSError, match="No space left"):
        train(config)
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["checkpoint-2"]  # the last good one
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def test_cancel_token_pause_resume_and_cancel_wake_a_waiting_job():
    token = CancelToken()
    token.wait_while_paused()  # not paused: returns at once
    token.pause()
    assert token.paused and not token.cancelled
    threading.Timer(0.1, token.resume).start()
    token.wait_while_paused(poll_s=5)  # woken by resume(), not by the poll
    assert not token.paused
    token.pause()
    threading.Timer(0.1, token.cancel).start()
    started = time.perf_counter()
    token.wait_while_paused(poll_s=5)
    assert token.cancelled and time.perf_counter() - started < 2


def test_pause_checkpoints_waits_and_leaves_the_run_unchanged(tiny_model, chaos_dir, tmp_path):
    common = dict(steps=4, accumulation=1, checkpoint_every=1000)
    plain = train(config_for(tiny_model, chaos_dir, tmp_path / "plain", **common))
    token = CancelToken()
    seen: list[tuple[float, object]] = []

    def on_progress(p):
        seen.append((time.perf_counter(), p))
        if p.extra.get("step") == 2 and "loss" in p.extra:
            token.pause()  # as the Pause button would, while step 2 is reported
        if p.extra.get("paused"):
            threading.Timer(0.5, token.resume).start()  # the GUI thread resumes later

    result = train(
        config_for(tiny_model, chaos_dir, tmp_path / "paused", **common), progress=on_progress, cancel=token
    )
    np.testing.assert_allclose(result.losses, plain.losses, rtol=1e-6, atol=1e-8)  # deterministic
    messages = [p.message for _, p in seen]
    paused = messages.index("paused at step 2")
    assert messages[paused + 1] == "resumed at step 2" and messages[paused - 1].startswith("step 2:")
    extra = seen[paused][1].extra
    assert extra["paused"] is True and extra["step"] == 2
    assert Path(extra["checkpoint"]).name == "checkpoint-2"  # a crash while paused loses nothing
    assert (Path(extra["checkpoint"]) / "trainer_state.json").is_file()
    # the pause counts neither in the elapsed (ETA) time nor in the run's seconds
    (wall2, step2), (wall3, step3) = seen[paused - 1], seen[paused + 2]
    assert step3.extra["step"] == 3
    assert (wall3 - wall2) - (step3.elapsed_s - step2.elapsed_s) >= 0.4
    assert (tmp_path / "paused" / "finished.json").is_file()


def _loss_and_grads(pipeline, checkpointing: bool):
    if checkpointing:
        pipeline.unet.enable_gradient_checkpointing(sqi_checkpointing(pipeline.bank))
    pipeline.unet.train()
    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.random((1, 1, 64, 64), dtype=np.float32))
    q = torch.from_numpy(rng.random((1, 1, 64, 64), dtype=np.float32))
    m = torch.zeros(1, 1, 64, 64)
    m[..., 16:40, 20:44] = 1
    loss = pipeline.training_loss(s, m, q, m, generator=torch.Generator().manual_seed(0))
    loss.backward()
    params = [*pipeline.unet.parameters(), *pipeline.conv_in_ref.parameters(), *pipeline.mapper.parameters()]
    return float(loss.detach()), [p.grad.clone() for p in params if p.grad is not None]


def test_gradient_checkpointing_keeps_the_support_bank_and_the_gradients():
    # diffusers' default checkpointing recomputes the query pass after the bank is cleared: it fails
    plain = build_random_pipeline("tiny", seed=1)
    plain.unet.enable_gradient_checkpointing()
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        _loss_and_grads(plain, checkpointing=False)
    loss, grads = _loss_and_grads(build_random_pipeline("tiny", seed=1), checkpointing=False)
    loss_ck, grads_ck = _loss_and_grads(build_random_pipeline("tiny", seed=1), checkpointing=True)
    assert loss == pytest.approx(loss_ck)
    assert len(grads) == len(grads_ck)
    for a, b in zip(grads, grads_ck, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_lora_trains_adapters_and_merges_exactly(tiny_model, chaos_dir, tmp_path):
    pipeline = build_random_pipeline("tiny", seed=2)
    add_lora(pipeline.unet, rank=4, alpha=4.0)
    trainable = {n for n, p in pipeline.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("conv_in.") for n in trainable)
    with torch.no_grad():
        for name, p in pipeline.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x, t = torch.randn(1, 8, 8, 8), torch.tensor(1)
    cond = torch.randn(1, 1, 32)
    merged = merged_unet(pipeline.unet)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            merged(x, t, encoder_hidden_states=cond).sample,
            pipeline.unet(x, t, encoder_hidden_states=cond).sample,
            rtol=1e-4,
            atol=1e-5,
        )
    result = train(config_for(tiny_model, chaos_dir, tmp_path / "lora", steps=3, accumulation=1, lora=True))
    from sd_fsmis.core.model.engine import SDFSMISEngine

    engine = SDFSMISEngine.from_pretrained(result.model_dir, device="cpu")
    assert "LoRA" in engine.pipeline.config.training.notes


def test_runs_in_one_process_with_other_precision_and_checkpointing(tiny_model, chaos_dir, tmp_path):
    """A second run (as from the GUI) may change the precision; bf16 autocast + SQI-safe checkpointing."""
    plain = train(config_for(tiny_model, chaos_dir, tmp_path / "a", steps=2, accumulation=1))
    other = train(
        config_for(
            tiny_model,
            chaos_dir,
            tmp_path / "b",
            steps=2,
            accumulation=1,
            precision="bf16",
            gradient_checkpointing=True,
        )
    )
    np.testing.assert_allclose(other.losses, plain.losses, rtol=0.05)  # same episodes, bf16 rounding
