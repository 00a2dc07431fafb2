"""``sd-fsmis train``: episodic fine-tuning of an SD-FSMIS model on a CHAOS-like data folder or a manifest.

``--validation-volumes N`` holds N of the training volumes out for model selection (OUT/best, chosen by
their Dice with the "study" protocol on the training classes; never on the test fold); without it there
is no validation and no OUT/best, only the last model. ``--validation-ids`` replaces the fold split by
explicit held-out volumes (validated the same way); ``--classes`` restricts training to some label values;
``--validate-before`` also measures the validation Dice at step 0. ``--exclusion``, ``--episode-minimum``
and ``--augmentation`` choose between our defaults and the reference's training (README, "Reproducing the
paper").

Settings come from ``--config FILE.json`` (a :class:`~sd_fsmis.core.training.config.TrainingConfig` as JSON)
and/or flags; a flag overrides the file. Defaults are the reference's hyper-parameters (15,000 steps,
batch 1 x accumulation 4, AdamW 1e-5 / 5e-5, seed 42). Runs unchanged under ``accelerate launch`` (several
GPUs). The first Ctrl+C stops after the current step with a checkpoint (continue with ``--resume``).
"""

from __future__ import annotations

import argparse

#: flag destination -> TrainingConfig field, for flags that override the config file when given
_OVERRIDES = {
    "model": "model",
    "data": "data",
    "out": "out",
    "fold": "fold",
    "steps": "steps",
    "device": "device",
    "setting": "setting",
    "exclusion": "exclusion",
    "episode_minimum": "episode_minimum",
    "augmentation": "augmentation",
    "validation_volumes": "validation_volumes",
    "source": "source",
    "shots": "shots",
    "lr_unet": "lr_unet",
    "lr_mapper": "lr_mapper",
    "accumulation": "accumulation",
    "checkpoint_every": "checkpoint_every",
    "checkpoints_limit": "checkpoints_total_limit",
    "validate_every": "validate_every",
    "heldout_episodes": "heldout_episodes",
    "lora_rank": "lora_rank",
    "precision": "precision",
    "seed": "seed",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model with episodic training on a data folder (folds, Setting 1/2)",
        description="Fine-tune an SD-FSMIS model (from 'sd-fsmis models create') with episodic training "
        "on a folder laid out like CHAOS T2. The test fold's volumes are never trained on; the test "
        "classes are never targets (Setting 1) or every slice holding one is removed (Setting 2). "
        "Writes OUT/checkpoints/checkpoint-<step>, OUT/model (last) and, with --validation-volumes, "
        "OUT/best (best Dice on those held-out training volumes).",
    )
    p.add_argument("--config", metavar="FILE.json", help="training config as JSON (flags override it)")
    p.add_argument("--model", metavar="NAME|DIR", help="model to start from (store name or folder)")
    p.add_argument(
        "--data",
        metavar="DIR|MANIFEST",
        help="data folder with images/ and labels/ (like CHAOS), or a .json/.csv manifest",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (checkpoints, models)")
    p.add_argument("--fold", type=int, metavar="K", help="test fold 0..4 (default 0)")
    p.add_argument("--steps", type=int, metavar="N", help="optimiser steps (default 15000)")
    p.add_argument("--device", type=str.lower, choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    p.add_argument("--setting", type=int, choices=[1, 2], help="1 (default) or 2 (test organs unseen)")
    p.add_argument(
        "--exclusion",
        choices=["any", "all", "reference"],
        help="Setting 2: remove training slices holding any (default) / all of the test classes, or "
        "(reference) those holding liver, both kidneys and spleen, as the reference's code does",
    )
    p.add_argument(
        "--episode-minimum",
        choices=["every", "largest"],
        help="every (default) slice of an episode needs 200 pixels of the class, or only the largest "
        "(the reference)",
    )
    p.add_argument(
        "--augmentation",
        choices=["ours", "reference"],
        help="augmentation preset: ours (default) or the reference's (shared geometry over shots, gamma "
        "side drawn apart, grey border, reflecting elastic edges)",
    )
    p.add_argument(
        "--validation-volumes",
        type=int,
        metavar="N",
        help="hold N training volumes out to choose the best model (OUT/best); default 0: no validation, "
        "the last model",
    )
    p.add_argument("--test-classes", metavar="L1,L2", help="held-out classes (default 2,3: kidneys; or 1,4)")
    p.add_argument(
        "--classes",
        metavar="L1,L2",
        help="train only on these label values (default: all but the test classes)",
    )
    p.add_argument(
        "--validation-ids",
        metavar="ID1,ID2",
        help="held-out volumes instead of the fold, validated with the study protocol "
        "(supports taken from each volume itself)",
    )
    p.add_argument(
        "--validate-before",
        action="store_true",
        help="also measure the validation Dice before training (step 0)",
    )
    p.add_argument(
        "--source",
        choices=["labels", "supervoxels", "mixed"],
        help="labels (default); supervoxels: self-supervised, computed and cached for volumes without "
        "supervoxel files; mixed: labels where a volume has a label map, supervoxels elsewhere",
    )
    p.add_argument("--shots", type=int, metavar="K", help="support slices per episode (default 1)")
    p.add_argument("--lr-unet", type=float, metavar="LR", help="U-Net learning rate (default 1e-5)")
    p.add_argument("--lr-mapper", type=float, metavar="LR", help="VTCT mapper learning rate (default 5e-5)")
    p.add_argument("--accumulation", type=int, metavar="N", help="gradient accumulation (default 4)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints (500)")
    p.add_argument("--checkpoints-limit", type=int, metavar="N", help="checkpoints kept (default 3)")
    p.add_argument("--validate-every", type=int, metavar="N", help="steps between validations (1000)")
    p.add_argument("--no-validation", action="store_true", help="skip the Dice validation")
    p.add_argument("--heldout-episodes", type=int, metavar="N", help="fixed held-out loss episodes (16)")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--lora", action="store_true", help="LoRA on the U-Net attention (small GPUs)")
    p.add_argument("--lora-rank", type=int, metavar="R", help="LoRA rank (default 16)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="mixed precision")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (default 42)")
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    """The TrainingConfig of the file (if any) with the given flags applied."""
    from sd_fsmis.core.training.config import TrainingConfig, TrainingConfigError

    data = TrainingConfig.load(args.config).to_dict() if args.config else {}
    for dest, key in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            data[key] = value
    for flag, key, example in (
        ("test_classes", "test_classes", "2,3"),
        ("classes", "classes", "1,4"),
        ("validation_ids", "validation_ids", "3,7"),
    ):
        text = getattr(args, flag, None)
        if text:
            try:
                data[key] = [int(v) for v in text.replace(" ", "").split(",") if v]
            except ValueError:
                option = "--" + flag.replace("_", "-")
                raise TrainingConfigError(
                    f"{option}: expected values such as {example}, got {text!r}"
                ) from None
    for flag, key, value in (
        ("resume", "resume", True),
        ("no_validation", "dice_validation", False),
        ("no_augment", "augment", False),
        ("lora", "lora", True),
        ("gradient_checkpointing", "gradient_checkpointing", True),
        ("validate_before", "validate_before", True),
    ):
        if getattr(args, flag, False):
            data[key] = value
    data.setdefault("supervoxel_cache", str(supervoxel_cache_dir()))
    data.setdefault("model", "")
    data.setdefault("data", "")
    data.setdefault("out", "")
    return TrainingConfig.from_dict(data)


def supervoxel_cache_dir():
    """The application's supervoxel cache (``<cache dir>/supervoxels``)."""
    from sd_fsmis.paths import cache_dir

    return cache_dir() / "supervoxels"


def _prepare_supervoxels(config, cancel) -> None:
    """Self-supervised runs: compute the missing supervoxels first, with their own progress bar."""
    from sd_fsmis.core.io.datasets import FewShotDataset
    from sd_fsmis.core.training.supervoxels import prepare_supervoxels, volumes_needing_supervoxels
    from sd_fsmis.terminal import progress_bar

    if config.source == "labels" or not config.supervoxel_cache:
        return
    dataset = FewShotDataset.open(config.data, require_labels=False)
    ids = volumes_needing_supervoxels(dataset, None, config.source)
    if ids:
        with progress_bar("supervoxels", unit="volume") as bar:
            prepare_supervoxels(dataset, ids, config.supervoxel_cache, progress=bar, cancel=cancel)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from sd_fsmis.core.jobs import CancelToken, Progress
    from sd_fsmis.core.training.trainer import train
    from sd_fsmis.terminal import progress_bar

    config = build_config(args)
    cancel = CancelToken()
    previous = None

    def on_interrupt(signum, frame):  # first Ctrl+C: stop after this step with a checkpoint
        if cancel.cancelled:
            raise KeyboardInterrupt
        print("\nsd-fsmis: stopping after this step (Ctrl+C again to abort)", file=sys.stderr)
        cancel.cancel()

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        _prepare_supervoxels(config, cancel)
        with progress_bar("train", unit="step") as bar:

            def progress(p: Progress) -> None:
                extra = dict(p.extra)
                if "loss" in extra:
                    eta = extra.get("eta_s")
                    p = Progress(
                        p.done,
                        p.total,
                        f"loss {extra['loss']:.4f} lr {extra['lr']:.2e} "
                        f"{extra['samples_per_s']:.1f} ep/s" + (f" eta {eta / 60:.0f} min" if eta else ""),
                        p.elapsed_s,
                        extra,
                    )
                bar(p)
                validation = extra.get("validation")
                if validation:
                    parts = [f"{k} {v:.4f}" for k, v in validation.items() if isinstance(v, float)]
                    print(f"step {extra.get('step', p.done)}: " + ", ".join(parts), file=sys.stderr)

            result = train(config, progress=progress, cancel=cancel)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if result.model_dir is None:  # not the main process
        return 0
    first = next(iter(result.heldout_losses.items()), None)
    last = list(result.heldout_losses.items())[-1] if result.heldout_losses else None
    print(f"trained {result.steps} steps ({result.steps_per_second:.2f} steps/s)")
    if result.losses:
        print(f"training loss: first step {result.losses[0]:.4f}, last step {result.losses[-1]:.4f}")
    if first and last:
        print(f"held-out loss: step {first[0]} {first[1]:.4f} -> step {last[0]} {last[1]:.4f}")
    if config.validation_ids is not None:
        where = "study protocol, volumes " + ",".join(str(i) for i in config.validation_ids)
    else:
        where = f"study protocol, {config.validation_volumes} held-out training volumes"
    for step, dice in result.validation.items():
        per_class = ", ".join(
            f"{name} {100 * d:.2f}" for name, d in result.class_validation.get(step, {}).items()
        )
        print(
            f"validation Dice ({where}) at step {step}: {100 * dice:.2f} %"
            + (f" ({per_class})" if per_class else "")
        )
    print(f"last model: {result.model_dir}")
    if result.best_dir is not None:
        print(f"best model: {result.best_dir} (Dice {100 * (result.best_dice or 0):.2f} %)")
    return 0
