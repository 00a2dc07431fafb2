"""Fine-tuning on a person's own annotated volumes: the core of the GUI's wizard (no Qt), usable headless.

The steps of the wizard, each a plain function here:

1. volumes with label maps become :class:`TrainingPair` objects (files or folders, DICOM or NIfTI; a study
   open in the app is written to disk first with :func:`save_study_pair`; a CHAOS-like folder or a manifest
   gives its pairs through :func:`pairs_from_dataset`);
2. :func:`check_pair` reads each pair and says why it cannot be used (``problems``) or what is odd about it
   (``warnings``), and which classes it holds on how many slices;
3. a :class:`FineTunePlan` holds the choices (base model, classes, held-out volumes, settings);
   :meth:`FineTunePlan.training_config` turns it into a :class:`~sd_fsmis.core.training.config.TrainingConfig`
   over a manifest ``out/data.json`` (volume ids 1..N in the order of the pairs);
4. :func:`fine_tune` is the job: it writes ``out/fine_tune_plan.json`` and runs
   :func:`sd_fsmis.core.training.trainer.train` (pause, cancel, checkpoints, resume are the trainer's);
5. :func:`dice_before_after` gives the per-class Dice on the held-out volumes before and after (the "study"
   protocol of :mod:`sd_fsmis.core.evaluation.protocols`: one or three slices of each volume are the
   supports, the rest of its labelled range is scored); :func:`find_interrupted_runs` lists runs that can be
   resumed.

Held-out volumes are optional: with none, nothing is validated (no Dice, no before/after comparison) and
the last model is the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sd_fsmis.core.io.atomic import atomic_write_text
from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.core.training.config import PRECISIONS, TrainingConfig
from sd_fsmis.core.training.pairs import (
    FineTuneError,
    PairCheck,
    TrainingPair,
    check_pair,
    one_line,
    pairs_from_dataset,
    save_study_pair,
    write_manifest,
)

if TYPE_CHECKING:
    from sd_fsmis.core.training.run_folder import TrainingResult

log = logging.getLogger(__name__)

PLAN_FILE = "fine_tune_plan.json"
MANIFEST_FILE = "data.json"
PLAN_FORMAT = "sd-fsmis fine-tuning plan"
PLAN_VERSION = 1
#: fixed held-out episodes whose loss is followed during a fine-tuning run
HELDOUT_EPISODES = 8


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class FineTunePlan:
    """The wizard's choices; :meth:`training_config` makes the trainer's configuration of them."""

    #: model to start from: a store name or a model folder
    base_model: str
    pairs: list[TrainingPair]
    #: label values to train on
    classes: list[int]
    class_names: dict[int, str]
    #: indices into ``pairs`` of the held-out (validation) volumes; may be empty (then no Dice)
    validation: list[int]
    #: the run's folder
    out: str
    steps: int = 1000
    lr_unet: float = 1e-5
    lr_mapper: float = 5e-5
    batch_size: int = 1
    accumulation: int = 4
    lora: bool = False
    lora_rank: int = 16
    precision: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    shots: int = 1
    checkpoint_every: int = 100
    validate_every: int = 250
    seed: int = 42
    #: "My volumes have no labels": training episodes from supervoxels (computed and cached); label maps,
    #: where volumes have them, serve the validation Dice only
    self_supervised: bool = False

    @property
    def labelled_validation(self) -> list[int]:
        """The held-out volumes with a label map (those a Dice can be measured on)."""
        return [i for i in self.validation if 0 <= int(i) < len(self.pairs) and self.pairs[int(i)].label]

    @property
    def measures_dice(self) -> bool:
        """Whether the run gives a validation Dice (a held-out volume with a label map)."""
        return bool(self.labelled_validation)

    @property
    def training_indices(self) -> list[int]:
        held = set(self.validation)
        return [i for i in range(len(self.pairs)) if i not in held]

    def validate(self) -> None:
        """Raise :class:`FineTuneError` (one line) for a plan that cannot run."""
        if not self.base_model:
            raise FineTuneError("choose a model to start from")
        if not self.pairs:
            raise FineTuneError(
                "add at least one volume" + ("" if self.self_supervised else " with its label map")
            )
        unlabelled = [p.display_name for p in self.pairs if not p.label]
        if unlabelled and not self.self_supervised:
            raise FineTuneError(
                f"{unlabelled[0]} has no label map: train self-supervised (supervoxels) or add its label map"
            )
        if not self.classes and not self.self_supervised:
            raise FineTuneError("choose at least one class to train on")
        if any(int(c) < 1 for c in self.classes):
            raise FineTuneError("classes are label values 1 and above (0 is the background)")
        if not self.out:
            raise FineTuneError("choose a folder for the run")
        bad = [i for i in self.validation if not 0 <= int(i) < len(self.pairs)]
        if bad:
            raise FineTuneError(
                f"held-out volume(s) {bad} do not exist (there are {len(self.pairs)} volumes)"
            )
        if len(set(self.validation)) != len(self.validation):
            raise FineTuneError("a volume is held out twice")
        if not self.training_indices:
            raise FineTuneError("every volume is held out: keep at least one volume for training")
        if self.precision not in PRECISIONS:
            raise FineTuneError(f"precision must be one of {', '.join(PRECISIONS)}")
        self._config().validate()  # the trainer's own checks (steps, rates, accumulation...)

    def warnings(self) -> list[str]:
        """What the person should know before starting (the plan still runs)."""
        if not self.validation:
            return [
                "no volume is held out: nothing is validated, so there is no Dice before / after "
                "fine-tuning and the last model is the result"
            ]
        if not self.measures_dice:
            return [
                "no held-out volume has a label map: no Dice can be measured; the held-out episode loss "
                "(on their supervoxels) is shown instead, and the last model is the result"
            ]
        return []

    def _config(self) -> TrainingConfig:
        out = Path(self.out).expanduser()
        validating = bool(self.validation)
        dice = self.measures_dice
        return TrainingConfig(
            model=self.base_model,
            data=str(out / MANIFEST_FILE),
            out=str(out),
            train_ids=[i + 1 for i in self.training_indices],
            validation_ids=sorted(i + 1 for i in self.validation),
            classes=sorted({int(c) for c in self.classes}) or None,
            class_names={int(k): str(v) for k, v in self.class_names.items()} or None,
            test_classes=[],
            shots=self.shots,
            steps=self.steps,
            lr_unet=self.lr_unet,
            lr_mapper=self.lr_mapper,
            batch_size=self.batch_size,
            accumulation=self.accumulation,
            lora=self.lora,
            lora_rank=self.lora_rank,
            lora_alpha=float(self.lora_rank),
            precision=self.precision,
            device=self.device,
            gradient_checkpointing=self.gradient_checkpointing,
            checkpoint_every=self.checkpoint_every,
            validate_every=self.validate_every if validating else 0,
            dice_validation=dice,
            validate_before=dice,
            heldout_episodes=HELDOUT_EPISODES if validating else 0,
            seed=self.seed,
            **(
                {"source": "supervoxels", "supervoxel_cache": str(supervoxel_cache_dir())}
                if self.self_supervised
                else {}
            ),
        )

    def training_config(self) -> TrainingConfig:
        """The trainer's configuration; writes the manifest ``out/data.json`` it reads."""
        self.validate()
        config = self._config()
        write_manifest(self.pairs, self.class_names, config.data)
        return config

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pairs"] = [p.to_dict() for p in self.pairs]
        data["class_names"] = {str(k): v for k, v in self.class_names.items()}
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FineTunePlan:
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise FineTuneError("not an sd-fsmis fine-tuning plan")
        if int(data.get("version", 0)) > PLAN_VERSION:
            raise FineTuneError(
                f"the fine-tuning plan was written by a newer version ({data.get('version')})"
            )
        values = {k: v for k, v in data.items() if k not in ("format", "version")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FineTuneError(f"unknown fine-tuning plan key(s): {', '.join(unknown)}")
        try:
            values["pairs"] = [TrainingPair.from_dict(p) for p in values.get("pairs", [])]
            values["class_names"] = {int(k): str(v) for k, v in dict(values.get("class_names", {})).items()}
            values["classes"] = [int(c) for c in values.get("classes", [])]
            values["validation"] = [int(i) for i in values.get("validation", [])]
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise FineTuneError(f"the fine-tuning plan is damaged ({one_line(exc)})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON, atomically."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FineTunePlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FineTuneError(f"cannot read the fine-tuning plan {path}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FineTuneError(f"the fine-tuning plan {path} is not valid JSON ({exc})") from None
        return cls.from_dict(data)


# -------------------------------------------------------------------------------------------- the job
def calibrate_plan(
    plan: FineTunePlan,
    *,
    timed_steps: int = 3,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
):
    """A few real, timed steps of the plan's training on its device (the wizard's Measure button): a
    :class:`~sd_fsmis.core.training.calibration.Calibration`. Nothing is written to the plan's run folder
    (the manifest and the run are temporary)."""
    import tempfile

    from sd_fsmis.core.training.calibration import calibrate_training

    with tempfile.TemporaryDirectory(prefix="sd-fsmis-calibration-data-") as tmp:
        config = dataclasses.replace(plan._config(), data=str(Path(tmp) / MANIFEST_FILE))
        write_manifest(plan.pairs, plan.class_names, config.data)
        return calibrate_training(config, timed_steps=timed_steps, progress=progress, cancel=cancel)


def fine_tune(
    plan: FineTunePlan,
    *,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainingResult:
    """Run ``plan`` (a core job): write ``out/fine_tune_plan.json`` and the manifest, then train.

    ``resume``: continue from the newest checkpoint in ``plan.out`` (a fresh run when there is none).
    Returns the :class:`~sd_fsmis.core.training.run_folder.TrainingResult`; pause / cancel as :func:`train`.
    """
    from sd_fsmis.core.training.trainer import train

    config = plan.training_config()  # validates the plan and writes the manifest
    plan.save(Path(config.out) / PLAN_FILE)
    config.resume = bool(resume)
    return train(config, progress=progress, cancel=cancel)


def supervoxel_cache_dir() -> Path:
    """Where computed supervoxels are kept (the application's cache folder)."""
    from sd_fsmis.paths import cache_dir

    return cache_dir() / "supervoxels"


def runs_dir() -> Path:
    """Where the wizard puts fine-tuning runs by default."""
    from sd_fsmis.paths import data_dir

    return data_dir() / "fine-tuning"


@dataclass
class InterruptedRun:
    """A run folder with a checkpoint and no ``finished.json``: it can be resumed."""

    out: Path
    plan: FineTunePlan | None
    #: the newest checkpoint's step
    step: int
    total_steps: int
    #: when the newest checkpoint was written (seconds since the epoch)
    updated: float


def find_interrupted_runs(root: str | os.PathLike[str] | None = None) -> list[InterruptedRun]:
    """Run folders under ``root`` (default :func:`runs_dir`) that can be resumed, newest first."""
    from sd_fsmis.core.training.run_folder import CHECKPOINT_PREFIX, FINISHED, TRAINER_STATE, checkpoint_dirs

    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if not folder.is_dir() or (folder / FINISHED).exists():
            continue
        checkpoints = checkpoint_dirs(folder)
        if not checkpoints:
            continue
        newest = checkpoints[-1]
        step = int(newest.name[len(CHECKPOINT_PREFIX) :])
        plan = None
        if (folder / PLAN_FILE).is_file():
            try:
                plan = FineTunePlan.load(folder / PLAN_FILE)
            except FineTuneError as exc:
                log.warning("%s: %s", folder, exc)
        total = plan.steps if plan is not None else _steps_of(folder, step)
        try:
            updated = (newest / TRAINER_STATE).stat().st_mtime
        except OSError:
            continue
        found.append(InterruptedRun(folder, plan, step, total, updated))
    return sorted(found, key=lambda r: r.updated, reverse=True)


def _steps_of(folder: Path, default: int) -> int:
    try:
        return int(json.loads((folder / "training_config.json").read_text("utf-8"))["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def dice_before_after(result: TrainingResult) -> dict[str, tuple[float | None, float | None]]:
    """Class name -> (validation Dice before training, Dice of the model to register: best step, else last).

    ``result`` is a :class:`~sd_fsmis.core.training.run_folder.TrainingResult`; None where a value was not
    measured.
    """
    before = result.class_validation.get(0, {})
    chosen = result.best_step if result.best_step is not None else result.steps
    after = result.class_validation.get(chosen, {})

    def value(d: Mapping[str, float], name: str) -> float | None:
        v = d.get(name)
        return float(v) if v is not None and np.isfinite(v) else None

    names = list(dict.fromkeys([*before, *after]))
    return {name: (value(before, name), value(after, name)) for name in names}


def read_finished(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The summary a finished run wrote (``out/finished.json``), or None for an unfinished run."""
    from sd_fsmis.core.training.run_folder import FINISHED

    try:
        return json.loads((Path(out) / FINISHED).read_text("utf-8"))
    except (OSError, ValueError):
        return None


__all__ = [
    "FineTuneError",
    "FineTunePlan",
    "InterruptedRun",
    "PairCheck",
    "TrainingPair",
    "check_pair",
    "dice_before_after",
    "find_interrupted_runs",
    "fine_tune",
    "pairs_from_dataset",
    "read_finished",
    "runs_dir",
    "save_study_pair",
    "write_manifest",
]
