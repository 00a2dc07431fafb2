"""A training run's folder: checkpoints (``checkpoints/checkpoint-<step>`` with ``trainer_state.json``), the
last and best models, and ``finished.json``, which tells a finished run from an interrupted one."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sd_fsmis.core.io.atomic import atomic_write_text

CHECKPOINTS = "checkpoints"


CHECKPOINT_PREFIX = "checkpoint-"


TRAINER_STATE = "trainer_state.json"


FINISHED = "finished.json"


FINISHED_FORMAT = "sd-fsmis training run"


LAST_MODEL = "model"


BEST_MODEL = "best"


@dataclass
class TrainingResult:
    """What a finished run leaves: its folders, the loss history, the validation results."""

    out: Path
    model_dir: Path | None
    best_dir: Path | None
    steps: int
    #: mean training loss of each optimiser step (step 1 first)
    losses: list[float] = field(default_factory=list)
    #: step -> mean loss of the fixed held-out episodes (step 0 = before training)
    heldout_losses: dict[int, float] = field(default_factory=dict)
    #: step -> validation mean Dice (study protocol on the validation volumes; never the test fold)
    validation: dict[int, float] = field(default_factory=dict)
    #: step -> class name -> validation Dice (NaN where a class could not be scored)
    class_validation: dict[int, dict[str, float]] = field(default_factory=dict)
    best_dice: float | None = None
    #: the step of the best model (``best_dir``); None when no validation after step 0 ran
    best_step: int | None = None
    seconds: float = 0.0
    steps_per_second: float = 0.0
    resumed_from: int = 0


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints in ``out/checkpoints``, oldest first."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).is_file():
            with contextlib.suppress(ValueError):
                found.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
    return [p for _, p in sorted(found)]


def finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def write_finished(result: TrainingResult) -> Path:
    """Write ``out/finished.json`` (atomically): the mark of a run that ended normally, with its summary."""
    import datetime

    chosen = result.best_step if result.best_step is not None else result.steps
    document = {
        "format": FINISHED_FORMAT,
        "version": 1,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "step": result.steps,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 3),
        "model": str(result.model_dir) if result.model_dir else None,
        "best": str(result.best_dir) if result.best_dir else None,
        "best_dice": finite_or_none(result.best_dice),
        "best_step": result.best_step,
        "registered_step": chosen,
        "validation": {str(k): finite_or_none(v) for k, v in result.validation.items()},
        "class_dice_before": {k: finite_or_none(v) for k, v in result.class_validation.get(0, {}).items()},
        "class_dice_after": {
            k: finite_or_none(v) for k, v in result.class_validation.get(chosen, {}).items()
        },
    }
    path = result.out / FINISHED
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return path


#: which model of a run folder ``sd-fsmis evaluate --run-model`` reports
RUN_MODELS = ("last", "best")


@dataclass
class RunModel:
    """One model of a training run folder, with what a report should say about it."""

    run: Path
    which: str  # "last" or "best"
    folder: Path
    step: int | None
    #: e.g. "run-3 (last model, step 15000)": the model's name in an evaluation report
    label: str
    #: a warning when the "best" model was chosen on the test fold (runs of earlier versions)
    caution: str | None = None


def is_run_folder(path: str | Path) -> bool:
    """True for a training run's folder (``training_config.json`` or ``finished.json``, with ``model/``
    or ``checkpoints/``), which is not itself a model folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or (folder / "config.json").is_file():
        return False
    marked = (folder / "training_config.json").is_file() or (folder / FINISHED).is_file()
    return marked and ((folder / LAST_MODEL).is_dir() or (folder / CHECKPOINTS).is_dir())


def run_model(run: str | Path, which: str = "last") -> RunModel:
    """The ``last`` (``model/``) or ``best`` (``best/``) model of a run folder; ModelError when absent."""
    from sd_fsmis.core.errors import ModelError
    from sd_fsmis.core.model.config import ModelConfig

    if which not in RUN_MODELS:
        raise ModelError(f"unknown run model '{which}' (choose {' or '.join(RUN_MODELS)})")
    root = Path(run).expanduser().resolve()
    folder = root / (LAST_MODEL if which == "last" else BEST_MODEL)
    if not (folder / "config.json").is_file():
        if which == "best":
            raise ModelError(
                f"the training run {root} has no best/ model: it was trained without validation volumes "
                f"(sd-fsmis train --validation-volumes N); its last model is {root / LAST_MODEL}"
            )
        raise ModelError(
            f"the training run {root} has no model/ yet (interrupted before saving one?); continue it with "
            "sd-fsmis train --resume"
        )
    config = ModelConfig.load(folder)
    step = config.training.steps
    caution = None
    extra = config.training.extra or {}
    if which == "best" and "model_selection" not in extra:
        trained = extra.get("training_config") or {}
        if trained.get("validation_ids") is None:
            caution = (
                f"the best model of {root.name} was chosen by its Dice on the test fold "
                f"{trained.get('fold', '?')} (a run of an earlier sd-fsmis): numbers on that fold are "
                "optimistic; report its last model instead"
            )
    label = f"{root.name} ({which} model, step {step})"
    return RunModel(run=root, which=which, folder=folder, step=step, label=label, caution=caution)
