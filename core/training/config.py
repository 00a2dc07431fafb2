"""A training run's configuration (JSON file or CLI flags); defaults are the reference's hyper-parameters."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.training.augmentation import AUGMENTATIONS

#: as sd_fsmis.core.training.episodes (kept here so that a config is checked without loading any data)
EXCLUSION_RULES = ("any", "all", "reference")
EPISODE_MINIMUMS = ("every", "largest")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: where episodes take their classes from (:mod:`sd_fsmis.core.training.episodes`)
SOURCES = ("labels", "supervoxels", "mixed")


class TrainingConfigError(UserError):
    """A training configuration that cannot be run as written."""


@dataclass
class TrainingConfig:
    """Everything a training run needs; ``TrainingConfig.load("run.json")`` or keyword arguments."""

    #: model to start from: a model folder or a store name (``sd-fsmis models create``)
    model: str = ""
    #: data folder laid out like CHAOS T2 (images/, labels/, optional supervoxels/)
    data: str = ""
    #: output folder: checkpoints/, model/ (last), best/ (best validation), training_config.json
    out: str = ""
    # -- data and protocol ---------------------------------------------------------------------------------
    fold: int = 0
    n_folds: int = 5
    #: 1: test classes never targets; 2: slices holding test classes removed (``exclusion``: any / all of
    #: them, or "reference": those holding liver, both kidneys and spleen, the reference's code)
    setting: int = 1
    exclusion: str = "any"
    #: the held-out (test) classes of this model: {kidneys} = [2, 3] or {liver, spleen} = [1, 4]
    test_classes: list[int] = field(default_factory=lambda: [2, 3])
    #: "labels" (annotation), "supervoxels" (self-supervised pseudo-labels: the data's supervoxel files, else
    #: computed) or "mixed" (labels where a volume has a label map, supervoxels elsewhere)
    source: str = "labels"
    #: folder where computed supervoxels are cached ("": computed again every run); the application gives
    #: its cache folder
    supervoxel_cache: str = ""
    #: training volumes (default: every volume outside the fold, or outside ``validation_ids``)
    train_ids: list[int] | None = None
    #: train only on these label values (default: every class except ``test_classes``)
    classes: list[int] | None = None
    #: explicit held-out volumes: replaces the fold split; validation uses the "study" protocol on them
    #: ([]: no held-out volume, so no validation at all; None: the fold split)
    validation_ids: list[int] | None = None
    #: with the fold split: training volumes held out for model selection ("best"), drawn with ``seed``
    #: and validated with the "study" protocol on the training classes; 0: no validation, no best model
    #: (the test fold is never used to choose a model)
    validation_volumes: int = 0
    #: names of the label values (default: the dataset's names, else "Label N")
    class_names: dict[int, str] | None = None
    shots: int = 1
    min_pixels: int = 200
    #: "every" slice of an episode needs ``min_pixels`` of the class (ours), or the "largest" (reference)
    episode_minimum: str = "every"
    augment: bool = True
    #: augmentation preset: "ours" or "reference" (see sd_fsmis.core.training.augmentation)
    augmentation: str = "ours"
    # -- optimisation (reference values) ---------------------------------------------------------------------
    steps: int = 15_000
    batch_size: int = 1
    accumulation: int = 4
    lr_unet: float = 1e-5
    lr_mapper: float = 5e-5
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    seed: int = 42
    # -- memory and speed ------------------------------------------------------------------------------------
    device: str = "auto"
    #: auto: bf16 (fp16 without bf16) mixed precision on CUDA, fp32 on the CPU
    precision: str = "auto"
    gradient_checkpointing: bool = False
    #: LoRA on the U-Net attention projections (to_q, to_k, to_v, to_out.0); input convs and mapper full
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: float = 16.0
    # -- checkpoints, validation, output --------------------------------------------------------------------
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3
    #: validation (EP1 Dice on the fold's test volumes, test classes) every N steps; 0: only at the end
    validate_every: int = 1000
    #: skip the Dice validation entirely (the held-out loss is still measured)
    dice_validation: bool = True
    #: also run the Dice validation at step 0, before any training (the "before" of a before/after table)
    validate_before: bool = False
    #: fixed held-out episodes (from the fold's test volumes) whose mean loss is measured at each validation
    heldout_episodes: int = 16
    #: copy the frozen VAE / DINOv2 into the saved models (else they reference the base model's folders)
    copy_frozen: bool = True
    resume: bool = False

    # -- JSON ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        if self.class_names is not None:
            data["class_names"] = {str(k): v for k, v in self.class_names.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        if not isinstance(data, dict):
            raise TrainingConfigError("the training config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainingConfigError(f"unknown training config key(s): {', '.join(unknown)}")
        values = dict(data)
        if "adam_betas" in values:
            values["adam_betas"] = tuple(float(b) for b in values["adam_betas"])
        if values.get("class_names") is not None:
            names = values["class_names"]
            if not isinstance(names, dict):
                raise TrainingConfigError('class_names must map label values to names, e.g. {"1": "liver"}')
            try:
                values["class_names"] = {int(k): str(v) for k, v in names.items()}
            except (TypeError, ValueError):
                raise TrainingConfigError(
                    f"class_names: label values must be whole numbers, got {sorted(names)}"
                ) from None
        for key in ("classes", "validation_ids", "train_ids", "test_classes"):
            if values.get(key) is not None:
                values[key] = _int_list(values[key], key)
        return cls(**values).validate()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainingConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TrainingConfigError(
                f"cannot read the training config {path}: {exc.strerror or exc}"
            ) from None
        except json.JSONDecodeError as exc:
            raise TrainingConfigError(f"the training config {path} is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def validate(self) -> TrainingConfig:
        """Raise :class:`TrainingConfigError` for values that cannot be honoured; return self."""
        if not self.model:
            raise TrainingConfigError("no model to start from (--model NAME|DIR)")
        if not self.data:
            raise TrainingConfigError("no data folder (--data DIR)")
        if not self.out:
            raise TrainingConfigError("no output folder (--out DIR)")
        checks = [
            (self.setting in (1, 2), f"setting must be 1 or 2, not {self.setting}"),
            (
                self.exclusion in EXCLUSION_RULES,
                f"exclusion must be {' or '.join(EXCLUSION_RULES)}, not {self.exclusion!r}",
            ),
            (
                self.episode_minimum in EPISODE_MINIMUMS,
                f"episode_minimum must be {' or '.join(EPISODE_MINIMUMS)}, not {self.episode_minimum!r}",
            ),
            (
                self.augmentation in AUGMENTATIONS,
                f"augmentation must be {' or '.join(AUGMENTATIONS)}, not {self.augmentation!r}",
            ),
            (self.validation_volumes >= 0, "validation_volumes must be 0 or more"),
            (
                not (self.validation_volumes and self.validation_ids is not None),
                "give either validation volumes from the training volumes (a count) or explicit "
                "validation ids, not both",
            ),
            (
                self.source in SOURCES,
                f"source must be labels, supervoxels or mixed, not {self.source!r}",
            ),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.batch_size == 1, "batch size 1 only (one episode per micro-batch; use accumulation)"),
            (self.accumulation >= 1, "accumulation must be at least 1"),
            (self.shots >= 1, "shots must be at least 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be at least 1"),
            (self.checkpoints_total_limit >= 1, "checkpoints_total_limit must be at least 1"),
            (self.validate_every >= 0, "validate_every must be 0 or more"),
            (self.lr_unet >= 0 and self.lr_mapper >= 0, "learning rates must not be negative"),
            (0 <= self.fold < self.n_folds, f"fold must be 0..{self.n_folds - 1}"),
            (self.lora_rank >= 1, "lora_rank must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingConfigError(message)
        if self.classes is not None:
            if not self.classes:
                raise TrainingConfigError("classes: choose at least one class to train on")
            if any(int(c) < 1 for c in self.classes):
                raise TrainingConfigError("classes are label values 1 and above (0 is the background)")
            both = sorted(set(self.classes) & set(self.test_classes))
            if both and self.source == "labels":
                raise TrainingConfigError(
                    f"class(es) {_ids(both)} cannot be both trained on and held out as test classes"
                )
        if self.validation_ids is not None:
            both = sorted(set(self.validation_ids) & set(self.train_ids or []))
            if both:
                raise TrainingConfigError(
                    f"volume(s) {_ids(both)} cannot be both training and validation volumes"
                )
        if self.class_names is not None and any(int(k) < 1 for k in self.class_names):
            raise TrainingConfigError("class_names: label values are 1 and above")
        return self


def _ids(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _int_list(value: Any, key: str) -> list[int]:
    """A JSON list of whole numbers as ``list[int]``; :class:`TrainingConfigError` otherwise."""
    if not isinstance(value, (list, tuple)):
        raise TrainingConfigError(f"{key} must be a list of whole numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise TrainingConfigError(f"{key} must be a list of whole numbers, got {v!r}")
        out.append(int(v))
    return out
