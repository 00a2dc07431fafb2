"""Episodic fine-tuning of SD-FSMIS, in the idiom of the diffusers training examples (Accelerate).

``train(config, progress=..., cancel=...)`` is a core job shared by the CLI (``sd-fsmis train``, also under
``accelerate launch``) and the GUI:

- ``Accelerator(mixed_precision, gradient_accumulation_steps)``; the trained networks (U-Net with both input
  convolutions, VTCT mapper) are one module passed to ``accelerator.prepare`` with the optimiser and the
  scheduler; VAE and DINOv2 are frozen (cast to the mixed-precision dtype on a GPU);
- AdamW with two parameter groups (U-Net + ``conv_in_ref``: ``lr_unet``; mapper: ``lr_mapper``), linear
  decay to 0 without warm-up (``diffusers.optimization.get_scheduler``), gradient clipping, accumulation;
- loss: :meth:`SDFSMISPipeline.training_loss` (MSE between ``o`` and ``-z_query_mask``); the VAE's posterior
  sample uses a generator seeded from (seed, process, micro-step), so it needs no saved state;
- checkpoints ``out/checkpoints/checkpoint-<step>`` via ``accelerator.save_state`` into a temporary folder
  renamed into place, with ``trainer_state.json`` (step, episode sampler RNG state, loss history, best
  validation); the newest ``checkpoints_total_limit`` are kept; ``resume=True`` continues from the newest
  and reproduces the uninterrupted run's losses;
- cancellation is checked after every optimiser step: a checkpoint and the last model are written, then
  :class:`~sd_fsmis.core.errors.JobCancelled` is raised;
- pause (:meth:`CancelToken.pause`, one process only) is honoured after an optimiser step: a checkpoint is
  written (a crash while paused loses nothing), a "paused" report is sent, the job waits for ``resume()``
  (or ``cancel()``) and sends a "resumed" report; the paused time counts neither in the ETA nor in the
  steps per second, nor in the run's seconds;
- validation every ``validate_every`` steps (and at step 0 with ``validate_before``) on held-out volumes that
  are never the test fold's: ``validation_volumes`` training volumes drawn with the seed (fold split), or
  the explicit ``validation_ids``; the mean loss of fixed held-out episodes and the Dice
  (:func:`sd_fsmis.core.evaluation.protocols.evaluate`, "study" protocol: supports from each volume itself)
  of the training classes (or ``classes``); the best (by that Dice) and last models are saved in the
  model-folder format with the training provenance. Without validation volumes nothing is validated and
  only the last model is saved (as the reference reports its last checkpoint): choosing the best by Dice
  on the test fold, as this trainer once did, would inflate every number later reported on that fold;
- a finished run writes ``out/finished.json`` (steps, seconds, models, best Dice, class Dice before and
  after), so that an interrupted run (checkpoints, no ``finished.json``) can be told from a finished one.

The networks (loss module, LoRA, gradient checkpointing with the SQI bank) are
:mod:`sd_fsmis.core.training.networks`; the run folder's layout (checkpoints, models, ``finished.json``) is
:mod:`sd_fsmis.core.training.run_folder`. This module is over 500 lines because :func:`train` is one
Accelerate loop from set-up to the last save, as in diffusers' training examples, so that it can be read
against them step by step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sd_fsmis.core.errors import DeviceError, JobCancelled
from sd_fsmis.core.io.atomic import atomic_write_text
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback
from sd_fsmis.core.training.augmentation import AUGMENTATIONS
from sd_fsmis.core.training.config import TrainingConfig, TrainingConfigError
from sd_fsmis.core.training.episodes import (
    Episode,
    EpisodeSampler,
    TrainingVolume,
    load_training_volumes,
    reference_exclusion_classes,
)
from sd_fsmis.core.training.networks import EpisodeLoss, add_lora, merged_unet, sqi_checkpointing
from sd_fsmis.core.training.run_folder import (
    BEST_MODEL,
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    FINISHED,
    LAST_MODEL,
    TRAINER_STATE,
    TrainingResult,
    checkpoint_dirs,
    finite_or_none,
    write_finished,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ helpers
def mixed_precision_for(config: TrainingConfig, device_type: str) -> str:
    """Accelerate's ``mixed_precision``: "no", "bf16" or "fp16"."""
    if config.precision == "fp32":
        return "no"
    if config.precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if config.precision == "fp16" and device_type != "cuda":
        raise DeviceError("fp16 mixed precision needs a CUDA GPU; use --precision fp32 or bf16")
    return config.precision


def episode_tensors(episode: Episode, pipeline: Any) -> tuple[torch.Tensor, ...]:
    """An episode at model size: support images/masks ``[K, 1, S, S]``, query ones ``[1, 1, S, S]``."""
    s_img, s_mask = pipeline.support_inputs(episode.support_images, episode.support_masks)
    q_img, q_mask = pipeline.support_inputs(episode.query_images, episode.query_masks)
    return s_img, s_mask, q_img, q_mask


def heldout_loss(pipeline: Any, tensors: list[tuple[torch.Tensor, ...]], seed: int) -> float:
    """Mean episode loss over fixed episodes, with a fixed VAE sampling generator (no gradients)."""
    if not tensors:
        return float("nan")
    generator = torch.Generator(pipeline.device).manual_seed(seed)
    with torch.no_grad():
        values = [float(pipeline.training_loss(*t, generator=generator)) for t in tensors]
    return float(np.mean(values))


def _fresh_accelerate_state() -> None:
    """Forget a previous run's Accelerate state in this process (another precision or device may follow,
    e.g. in the GUI); under ``accelerate launch`` (several processes) the launcher's state is kept."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state.get("num_processes", 1) > 1:
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _fold_ids(ids: list[int], config: TrainingConfig) -> list[int]:
    from sd_fsmis.core.evaluation.folds import fold_split

    return fold_split(ids, config.fold, n_folds=config.n_folds, shots=config.shots).ids


def validation_volume_ids(candidates: list[int], count: int, seed: int) -> list[int]:
    """``count`` of the training volumes ``candidates``, drawn with ``seed`` (sorted), held out for model
    selection; :class:`TrainingConfigError` when fewer than one training volume would be left."""
    if count <= 0:
        return []
    if count >= len(candidates):
        raise TrainingConfigError(
            f"--validation-volumes {count}: only {len(candidates)} training volumes; at least one must stay "
            "for training"
        )
    chosen = np.random.default_rng(seed).choice(sorted(candidates), size=count, replace=False)
    return sorted(int(i) for i in chosen)


def _study_validation_labels(dataset: Any, ids: list[int], classes: list[int] | None) -> list[int]:
    """The classes the study-protocol validation scores: ``classes`` (each in some validation volume) or
    every class present in the validation volumes; :class:`TrainingConfigError` when there is none."""
    from sd_fsmis.core.io.labelmap import LabelMap

    present: set[int] = set()
    for case_id in ids:
        present.update(LabelMap.load(dataset.case(case_id).label).present_labels())
    if classes is None:
        if not present:
            raise TrainingConfigError(f"the validation volumes {ids} hold no labelled class")
        return sorted(present)
    absent = [c for c in classes if c not in present]
    if absent:
        names = ", ".join(f"{c} ({dataset.class_name(c)})" for c in absent)
        raise TrainingConfigError(f"class(es) {names} are in none of the validation volumes {ids}")
    return sorted(classes)


# ------------------------------------------------------------------------------------------ the job
def train(
    config: TrainingConfig,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainingResult:
    """Fine-tune the model ``config.model`` on episodes of ``config.data``; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    from sd_fsmis.core.device import select_device
    from sd_fsmis.core.io.datasets import FewShotDataset
    from sd_fsmis.core.io.destinations import check_destination_folder
    from sd_fsmis.core.model.folder import load_pipeline
    from sd_fsmis.core.model.store import resolve_model

    config = config.validate()
    _fresh_accelerate_state()
    out = Path(config.out).expanduser().resolve()
    # before any work: the run folder must be writable and hold none of the data it trains on
    labels_needed = config.source == "labels"  # self-supervised data may hold unlabelled volumes
    check_destination_folder(
        out, FewShotDataset.open(config.data, require_labels=labels_needed).inputs(), option="--out"
    )
    device_name = (config.device or "auto").lower()
    wanted = select_device(device_name)  # DeviceError with one line when missing
    accelerator = Accelerator(
        mixed_precision=mixed_precision_for(config, wanted.type),
        gradient_accumulation_steps=config.accumulation,
        cpu=wanted.type == "cpu",
        project_config=ProjectConfiguration(project_dir=str(out)),
    )
    set_seed(config.seed)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "training_config.json", config.to_json())

    # -- data --------------------------------------------------------------------------------------------
    dataset = FewShotDataset.open(config.data, require_labels=labels_needed)
    if config.class_names:
        dataset.class_names.update(config.class_names)
    study_validation = config.validation_ids is not None  # explicit held-out volumes, no fold
    test_ids: list[int] = []  # the test fold: never trained on, never used to choose a model
    if study_validation:
        unknown = [i for i in config.validation_ids if i not in dataset.ids]
        if unknown:
            raise TrainingConfigError(f"validation volume(s) {unknown} are not in {config.data}")
        held_out_ids = sorted(set(config.validation_ids))
        train_ids = (
            config.train_ids
            if config.train_ids is not None
            else [i for i in dataset.ids if i not in held_out_ids]
        )
    else:
        test_ids = _fold_ids(dataset.ids, config)
        pool = (
            config.train_ids
            if config.train_ids is not None
            else [i for i in dataset.ids if i not in test_ids]
        )
        in_fold = sorted(set(pool) & set(test_ids))
        if in_fold:
            raise TrainingConfigError(f"training volumes {in_fold} belong to test fold {config.fold}")
        held_out_ids = validation_volume_ids(pool, config.validation_volumes, config.seed)
        train_ids = [i for i in pool if i not in held_out_ids]
    overlap = sorted(set(train_ids) & set(held_out_ids))
    if overlap:
        raise TrainingConfigError(f"volume(s) {overlap} cannot be both training and validation volumes")
    if not train_ids:
        raise TrainingConfigError("no training volume is left once the validation volumes are held out")
    # Dice needs label maps: the labelled held-out volumes only (the others give the held-out loss)
    scored_ids = [i for i in held_out_ids if i in set(dataset.labelled_ids)]
    validate_dice = config.dice_validation and bool(scored_ids)
    if config.dice_validation and held_out_ids and not validate_dice:
        log.warning("no Dice can be measured: no held-out volume has a label map (held-out loss only)")
    validation_labels: list[int] = []
    if validate_dice:
        validation_labels = _study_validation_labels(dataset, scored_ids, config.classes)
        if not study_validation:  # the training classes only: the test classes stay unseen
            validation_labels = [c for c in validation_labels if c not in config.test_classes]
            if not validation_labels:
                raise TrainingConfigError(
                    f"the validation volumes {scored_ids} hold no training class to validate on"
                )

    def preparing(p: Progress) -> None:  # self-supervised: reading the volumes, computing supervoxels
        if progress is not None and main and not labels_needed:
            progress(Progress(0, config.steps, p.message, p.elapsed_s, {"preparing": p.fraction}))

    volumes = load_training_volumes(
        dataset,
        train_ids,
        source=config.source,
        supervoxel_cache=config.supervoxel_cache or None,
        progress=preparing,
        cancel=cancel,
    )
    sampler = EpisodeSampler(
        volumes,
        shots=config.shots,
        min_pixels=config.min_pixels,
        setting=config.setting,
        test_classes=config.test_classes,
        exclusion=config.exclusion,
        classes=config.classes,
        augmentation=AUGMENTATIONS[config.augmentation] if config.augment else None,
        seed=config.seed + 1000 * accelerator.process_index,
        episode_minimum=config.episode_minimum,
        reference_classes=(
            reference_exclusion_classes(dataset.class_names)
            if config.setting == 2 and config.exclusion == "reference"
            else None
        ),
    )
    labelled_classes = {c for v, w in zip(volumes, sampler.windows, strict=True) if not v.pseudo for c in w}
    trained_classes = [dataset.class_name(c) for c in sorted(labelled_classes)]

    # -- model -------------------------------------------------------------------------------------------
    base_dir = resolve_model(config.model)
    pipeline = load_pipeline(base_dir, device=accelerator.device, dtype=torch.float32)
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        accelerator.mixed_precision, torch.float32
    )
    if accelerator.device.type == "cuda" and weight_dtype != torch.float32:
        pipeline.image_encoder.to(dtype=weight_dtype)
        if not (weight_dtype == torch.float16 and pipeline.vae.config.get("force_upcast")):
            pipeline.vae.to(dtype=weight_dtype)
    pipeline.vae.requires_grad_(False).eval()
    pipeline.image_encoder.requires_grad_(False).eval()
    if config.lora:
        add_lora(pipeline.unet, config.lora_rank, config.lora_alpha)
    if config.gradient_checkpointing:
        pipeline.unet.enable_gradient_checkpointing(sqi_checkpointing(pipeline.bank))
    model = EpisodeLoss(pipeline)
    model.train()
    unet_params = [
        p for p in [*pipeline.unet.parameters(), *pipeline.conv_in_ref.parameters()] if p.requires_grad
    ]
    mapper_params = [p for p in pipeline.mapper.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": unet_params, "lr": config.lr_unet}, {"params": mapper_params, "lr": config.lr_mapper}],
        betas=tuple(config.adam_betas),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.warmup_steps * accelerator.num_processes,
        num_training_steps=config.steps * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    trainable = unet_params + mapper_params

    # -- resume ------------------------------------------------------------------------------------------
    global_step = 0
    state: dict[str, Any] = {
        "losses": [],
        "heldout_losses": {},
        "validation": {},
        "class_validation": {},
        "best_dice": None,
        "best_step": None,
    }
    if config.resume:
        found = checkpoint_dirs(out)
        if found:
            newest = found[-1]
            accelerator.load_state(str(newest))
            state = json.loads((newest / TRAINER_STATE).read_text(encoding="utf-8"))
            global_step = int(state["step"])
            samplers = state.get("samplers", {})
            sampler.load_state_dict(samplers.get(str(accelerator.process_index), state["sampler"]))
            log.info("resumed from %s (step %d)", newest, global_step)
        else:
            log.info("no checkpoint in %s: starting a new run", out / CHECKPOINTS)
    resumed_from = global_step
    losses: list[float] = list(state["losses"])
    heldout: dict[int, float] = {int(k): v for k, v in state["heldout_losses"].items()}
    validation: dict[int, float] = {int(k): v for k, v in state["validation"].items()}
    class_validation: dict[int, dict[str, float]] = {
        int(k): {name: (np.nan if d is None else float(d)) for name, d in v.items()}
        for k, v in state.get("class_validation", {}).items()
    }
    best_dice: float | None = state["best_dice"]
    best_step: int | None = state.get("best_step")
    if main:
        (out / FINISHED).unlink(missing_ok=True)  # this run is under way again until it finishes

    # -- held-out episodes (fixed) -----------------------------------------------------------------------
    heldout_tensors: list[tuple[torch.Tensor, ...]] = []
    if config.heldout_episodes > 0 and main and held_out_ids:
        from sd_fsmis.core.training.episodes import EpisodeError

        ho_volumes = load_training_volumes(
            dataset,
            held_out_ids,
            source="labels" if labels_needed else "mixed",  # unlabelled held-out volumes: supervoxels
            supervoxel_cache=config.supervoxel_cache or None,
            progress=preparing,
            cancel=cancel,
        )
        try:
            ho_sampler = EpisodeSampler(
                ho_volumes,
                shots=config.shots,
                min_pixels=config.min_pixels,
                classes=config.classes,
                test_classes=[] if study_validation else config.test_classes,
                seed=config.seed + 7,
                episode_minimum=config.episode_minimum,
            )
        except EpisodeError as exc:
            log.warning("no held-out loss: the validation volumes give no episode (%s)", exc)
        else:
            heldout_tensors = [
                episode_tensors(ho_sampler.sample(), pipeline) for _ in range(config.heldout_episodes)
            ]

    def provenance_config(step: int, dice: float | None):
        from sd_fsmis.core.model.config import TrainingProvenance

        base = pipeline.config
        extra = {
            "training_config": config.to_dict(),
            "validation_dice": {str(k): v for k, v in validation.items()},
            "class_validation": {
                str(k): {name: finite_or_none(d) for name, d in v.items()}
                for k, v in class_validation.items()
            },
            "heldout_loss": {str(k): v for k, v in heldout.items()},
        }
        if config.source != "labels":  # how the pseudo-labels were made (those the data did not bring)
            from sd_fsmis.core.training.supervoxels import SupervoxelParameters

            extra["supervoxels"] = SupervoxelParameters().to_dict()
        if dice is not None:
            extra["best_dice"] = dice
        elif best_dice is not None:
            extra["best_dice"] = best_dice
        # what chose "best" (never the test fold), for evaluate to say which model it reports
        extra["model_selection"] = {
            "validation_volumes": list(scored_ids) if validate_dice else [],
            "test_volumes": list(test_ids),
            "protocol": "study" if validate_dice else None,
            "classes": list(validation_labels),
        }
        if study_validation:
            how = f"{len(train_ids)} volumes, validated on {len(held_out_ids)}"
            notes = f"validation volumes {', '.join(str(i) for i in held_out_ids)}"
        else:
            how = f"fold {config.fold}, setting {config.setting}"
            notes = f"fold {config.fold}, setting {config.setting} ({config.exclusion})"
            if held_out_ids:
                notes += f", validation volumes {', '.join(str(i) for i in held_out_ids)}"
        return dataclasses.replace(
            base,
            name="",
            created="",
            description=f"fine-tuned from {base_dir.name}: {how}, {step} steps",
            classes=trained_classes,
            training=TrainingProvenance(
                kind="fine-tuned",
                sources={"parent": str(base_dir), "data": str(Path(config.data).resolve())},
                steps=step,
                seed=config.seed,
                held_out_classes=[dataset.class_name(c) for c in config.test_classes],
                datasets=[f"{Path(config.data).name}: volumes {', '.join(str(i) for i in train_ids)}"],
                notes=f"{notes}, source {config.source}" + (", LoRA merged" if config.lora else ""),
                extra=extra,
            ),
        )

    def save_model(folder: str, step: int, dice: float | None = None) -> Path | None:
        from sd_fsmis.core.model.folder import write_model_folder

        if not main:
            return None
        unwrapped = accelerator.unwrap_model(model)
        sources = pipeline.component_dirs
        return write_model_folder(
            out / folder,
            config=dataclasses.replace(provenance_config(step, dice), name=f"{out.name}-{folder}"),
            unet=merged_unet(unwrapped.unet),
            conv_in_ref=unwrapped.conv_in_ref,
            mapper=unwrapped.mapper,
            vae=sources.get("vae", pipeline.vae),
            image_encoder=sources.get("image_encoder", pipeline.image_encoder),
            dino_preprocessing=pipeline.dino_preprocessing,
            copy_weights=config.copy_frozen,
            overwrite=True,
        )

    def save_checkpoint(step: int) -> Path:
        root = out / CHECKPOINTS
        final = root / f"{CHECKPOINT_PREFIX}{step}"
        tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"  # the same name on every process
        if main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
        accelerator.wait_for_everyone()
        try:
            _write_checkpoint(tmp, final, step)
        except BaseException:  # a full disk, a cancel from outside: no half-written checkpoint stays
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        accelerator.wait_for_everyone()
        return final

    def _write_checkpoint(tmp: Path, final: Path, step: int) -> None:
        accelerator.save_state(str(tmp))
        samplers = {str(accelerator.process_index): sampler.state_dict()}
        if accelerator.num_processes > 1:  # every process keeps its own sampler state
            atomic_write_text(
                tmp / f"sampler_{accelerator.process_index}.json", json.dumps(sampler.state_dict())
            )
        accelerator.wait_for_everyone()
        if main:
            for p in tmp.glob("sampler_*.json"):
                samplers[p.stem.split("_", 1)[1]] = json.loads(p.read_text(encoding="utf-8"))
            trainer_state = {
                "step": step,
                "sampler": sampler.state_dict(),
                "samplers": samplers,
                "losses": losses,
                "heldout_losses": {str(k): v for k, v in heldout.items()},
                "validation": {str(k): v for k, v in validation.items()},
                "class_validation": {
                    str(k): {name: finite_or_none(d) for name, d in v.items()}
                    for k, v in class_validation.items()
                },
                "best_dice": best_dice,
                "best_step": best_step,
                "config": config.to_dict(),
            }
            atomic_write_text(tmp / TRAINER_STATE, json.dumps(trainer_state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in checkpoint_dirs(out)[: -config.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)

    def run_validation(step: int) -> dict[str, Any]:
        nonlocal best_dice, best_step
        results: dict[str, Any] = {}
        if main and heldout_tensors:
            model.eval()
            with accelerator.autocast():
                heldout[step] = heldout_loss(pipeline, heldout_tensors, config.seed)
            results["heldout_loss"] = heldout[step]
        if main and validate_dice:
            from sd_fsmis.core.evaluation.protocols import evaluate
            from sd_fsmis.core.model.engine import SDFSMISEngine

            model.eval()
            engine = SDFSMISEngine(pipeline, name=f"{out.name}@{step}")
            with accelerator.autocast():  # the frozen parts may be bf16/fp16, the trained ones fp32
                report = evaluate(
                    dataset,
                    engine,
                    protocol="study",
                    ids=scored_ids,
                    labels=validation_labels,
                    shots=config.shots,
                    surface=False,
                )
            dice = float(report.mean_dice())
            validation[step] = dice
            class_validation[step] = {dataset.class_name(k): float(v) for k, v in report.class_dice().items()}
            results["dice"] = dice
            results["class_dice"] = dict(class_validation[step])
            if step > 0 and np.isfinite(dice) and (best_dice is None or dice > best_dice):
                best_dice, best_step = dice, step
                save_model(BEST_MODEL, step, dice)
                results["best"] = True
        model.train()
        accelerator.wait_for_everyone()
        return results

    # -- the loop ----------------------------------------------------------------------------------------
    report = progress or (lambda p: None)
    start = time.perf_counter()
    window_start, window_steps = start, 0
    paused_s = 0.0  # time spent paused: not training time

    def emit(message: str, **extra: Any) -> None:
        report(
            Progress(
                done=global_step,
                total=config.steps,
                message=message,
                elapsed_s=time.perf_counter() - start - paused_s,
                extra=extra,
            )
        )

    if global_step == 0 and config.validate_before and validate_dice:
        emit("before training", step=0, validation=run_validation(0))
    elif global_step == 0 and main and (heldout_tensors or (validate_dice and config.validate_every > 0)):
        if heldout_tensors:
            model.eval()
            with accelerator.autocast():
                heldout[0] = heldout_loss(pipeline, heldout_tensors, config.seed)
            model.train()
        emit("before training", step=0, validation={"heldout_loss": heldout.get(0)})
    micro = global_step * config.accumulation
    step_losses: list[torch.Tensor] = []
    while global_step < config.steps:
        episode = sampler.sample()
        tensors = episode_tensors(episode, pipeline)
        generator = torch.Generator(accelerator.device).manual_seed(
            (config.seed * 1_000_003 + micro * 97 + accelerator.process_index) % (2**63)
        )
        micro += 1
        with accelerator.accumulate(model):
            loss = model(*tensors, generator=generator)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step_losses.append(loss.detach())
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        window_steps += 1
        step_loss = accelerator.gather(torch.stack(step_losses).mean()[None]).mean()
        losses.append(float(step_loss))
        step_losses = []
        elapsed = time.perf_counter() - window_start
        steps_per_s = window_steps / elapsed if elapsed > 0 else 0.0
        extra: dict[str, Any] = {
            "step": global_step,
            "loss": losses[-1],
            "lr": lr_scheduler.get_last_lr()[0],
            "lr_mapper": lr_scheduler.get_last_lr()[-1],
            "samples_per_s": steps_per_s * config.accumulation * accelerator.num_processes,
            "eta_s": (config.steps - global_step) / steps_per_s if steps_per_s > 0 else None,
        }
        if config.validate_every and global_step % config.validate_every == 0 and global_step < config.steps:
            extra["validation"] = run_validation(global_step)
        cancelled = cancel is not None and cancel.cancelled
        if accelerator.num_processes > 1:  # stop together: every process must join the checkpoint
            flag = torch.tensor([float(cancelled)], device=accelerator.device)
            cancelled = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        if global_step % config.checkpoint_every == 0 or cancelled:
            extra["checkpoint"] = str(save_checkpoint(global_step))
        emit(f"step {global_step}: loss {losses[-1]:.4f}", **extra)
        if cancelled:
            save_model(LAST_MODEL, global_step)
            raise JobCancelled(
                f"training cancelled at step {global_step}; checkpoint {extra['checkpoint']} "
                "(continue with --resume)"
            )
        if (
            cancel is not None
            and accelerator.num_processes == 1
            and getattr(cancel, "paused", False)
            and global_step < config.steps
        ):
            checkpoint = extra.get("checkpoint") or str(save_checkpoint(global_step))
            emit(f"paused at step {global_step}", step=global_step, paused=True, checkpoint=checkpoint)
            paused_at = time.perf_counter()
            cancel.wait_while_paused()
            waited = time.perf_counter() - paused_at
            paused_s += waited
            window_start += waited  # samples/s and the ETA count training time only
            if cancel.cancelled:
                save_model(LAST_MODEL, global_step)
                raise JobCancelled(
                    f"training cancelled at step {global_step} while paused; checkpoint {checkpoint} "
                    "(continue with --resume)"
                )
            emit(f"resumed at step {global_step}", step=global_step, paused=False, resumed=True)

    # -- the end -----------------------------------------------------------------------------------------
    seconds = time.perf_counter() - start - paused_s
    final_validation = run_validation(global_step) if global_step > resumed_from or not validation else {}
    if not checkpoint_dirs(out) or checkpoint_dirs(out)[-1].name != f"{CHECKPOINT_PREFIX}{global_step}":
        save_checkpoint(global_step)
    model_dir = save_model(LAST_MODEL, global_step)
    done = global_step - resumed_from
    result = TrainingResult(
        out=out,
        model_dir=model_dir,
        best_dir=(out / BEST_MODEL) if (out / BEST_MODEL).is_dir() else None,
        steps=global_step,
        losses=losses,
        heldout_losses=dict(sorted(heldout.items())),
        validation=dict(sorted(validation.items())),
        class_validation=dict(sorted(class_validation.items())),
        best_dice=best_dice,
        best_step=best_step,
        seconds=seconds,
        steps_per_second=done / seconds if seconds > 0 and done else 0.0,
        resumed_from=resumed_from,
    )
    if main:
        write_finished(result)
    emit("finished", step=global_step, validation=final_validation)
    accelerator.end_training()
    return result


__all__ = [
    "EpisodeLoss",
    "TrainingConfig",
    "TrainingResult",
    "TrainingVolume",
    "checkpoint_dirs",
    "heldout_loss",
    "merged_unet",
    "sqi_checkpointing",
    "train",
    "write_finished",
]
