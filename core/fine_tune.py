"""Fine-tuning on a person's own annotated volumes: the core of the GUI's wizard (no Qt), usable headless.

The steps of the wizard, each a plain function here:

1. volumes with label maps become :class:`TrainingPair` objects (files or folders, DICOM or NIfTI; a study
   open in the app is written to disk first with :func:`save_study_pair`; a CHAOS-like folder or a manifest
   gives its pairs through :func:`pairs_from_dataset`);
2. :func:`check_pair` reads each pair and says why it cannot be used (``problems``) or what is odd about it
   (``warnings``), and which classes it holds on how many slices;
3. a :class:`FineTunePlan` holds the choices (base model, classes, held-out volumes, settings);
   :meth:`FineTunePlan.training_config` turns it into a :class:`~sd_fsmis.core.training_config.TrainingConfig`
   over a manifest ``out/data.json`` (volume ids 1..N in the order of the pairs);
4. :func:`fine_tune` is the job: it writes ``out/fine_tune_plan.json`` and runs
   :func:`sd_fsmis.core.trainer.train` (pause, cancel, checkpoints, resume are the trainer's);
5. :func:`dice_before_after` gives the per-class Dice on the held-out volumes before and after (the "study"
   protocol of :mod:`sd_fsmis.core.evaluation`: one or three slices of each volume are the supports, the rest
   of its labelled range is scored); :func:`find_interrupted_runs` lists runs that can be resumed.

Held-out volumes are optional: with none, nothing is validated (no Dice, no before/after comparison) and
the last model is the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sd_fsmis.core.atomic import atomic_path, atomic_write_text
from sd_fsmis.core.errors import JobCancelled, UserError
from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.core.training_config import PRECISIONS, TrainingConfig

if TYPE_CHECKING:
    from sd_fsmis.core.trainer import TrainingResult

log = logging.getLogger(__name__)

PLAN_FILE = "fine_tune_plan.json"
MANIFEST_FILE = "data.json"
PLAN_FORMAT = "sd-fsmis fine-tuning plan"
PLAN_VERSION = 1
#: fixed held-out episodes whose loss is followed during a fine-tuning run
HELDOUT_EPISODES = 8
#: label values above this are unusual for organ labels (an image or an instance map picked by mistake?)
LARGE_LABEL = 255
#: relative difference of the row and column spacing above which the in-plane grid is called anisotropic
ANISOTROPY = 0.05


class FineTuneError(UserError):
    """A fine-tuning plan that cannot be run as chosen."""


# ------------------------------------------------------------------------------------------ pairs
@dataclass
class TrainingPair:
    """A volume (file or folder; ``series_uid`` picks a series of a DICOM folder) and its label map."""

    image: str
    label: str
    series_uid: str | None = None
    #: display name (default: the image's file or folder name)
    name: str = ""

    @property
    def display_name(self) -> str:
        return self.name or Path(self.image).name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingPair:
        if not isinstance(data, Mapping) or not data.get("image") or not data.get("label"):
            raise FineTuneError("a training pair needs an image and a label path")
        return cls(
            image=str(data["image"]),
            label=str(data["label"]),
            series_uid=str(data["series_uid"]) if data.get("series_uid") else None,
            name=str(data.get("name") or ""),
        )


@dataclass
class PairCheck:
    """What :func:`check_pair` found: usable (``ok``) or not (``problems``), and what the pair holds."""

    pair: TrainingPair
    ok: bool
    #: why the pair cannot be used, one line each
    problems: list[str] = field(default_factory=list)
    #: usable, but odd (a class too small to train on, large label values, anisotropic pixels...)
    warnings: list[str] = field(default_factory=list)
    #: label value -> number of slices holding it
    classes: dict[int, int] = field(default_factory=dict)
    #: the image's ``(slices, rows, columns)``
    shape: tuple[int, int, int] = (0, 0, 0)
    #: voxel spacing in mm, ``(slice, row, column)`` (the order of ``shape``)
    spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)
    modality: str = ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_pair(
    pair: TrainingPair,
    *,
    shots: int = 1,
    min_pixels: int = 200,
    cancel: CancelToken | None = None,
) -> PairCheck:
    """Read a pair and check it can be trained on; never raises for bad input (only when cancelled).

    Problems: an unreadable image or label map, a 4-D image, a label map not on the image's grid (the size,
    spacing, origin or direction difference is named), negative or fractional label values, an empty label
    map. Warnings: a class without ``shots + 1`` consecutive slices of ``min_pixels`` pixels (no training
    episode can be drawn from it), label values above 255, anisotropic in-plane spacing.
    """
    from sd_fsmis.core.labelmap import LabelMap
    from sd_fsmis.core.study_io import load_volume

    result = PairCheck(pair=pair, ok=False)
    try:
        volume = load_volume(pair.image, pair.series_uid, cancel=cancel)
    except JobCancelled:
        raise
    except UserError as exc:
        result.problems.append(f"image: {_one_line(exc)}")
        volume = None
    except Exception as exc:  # a reader's own error on a damaged file: still one line, never a crash
        log.debug("reading %s failed", pair.image, exc_info=True)
        result.problems.append(f"image: {pair.image} cannot be read ({_one_line(exc)})")
        volume = None
    if volume is not None:
        result.shape = tuple(int(s) for s in volume.shape)
        sx, sy, sz = volume.geometry.spacing
        result.spacing = (float(sz), float(sy), float(sx))
        result.modality = volume.metadata.modality or ""
        result.warnings.extend(volume.warnings)
        if min(sx, sy) > 0 and abs(sx - sy) / min(sx, sy) > ANISOTROPY:
            result.warnings.append(
                f"anisotropic in-plane spacing ({sy:g} x {sx:g} mm): slices are resized to square model "
                "inputs, so shapes are stretched"
            )
    if cancel is not None:
        cancel.raise_if_cancelled()
    try:
        label_map = LabelMap.load(pair.label)
    except JobCancelled:
        raise
    except UserError as exc:
        result.problems.append(f"label map: {_one_line(exc)}")
        return result
    except Exception as exc:
        log.debug("reading %s failed", pair.label, exc_info=True)
        result.problems.append(f"label map: {pair.label} cannot be read ({_one_line(exc)})")
        return result
    result.warnings.extend(label_map.warnings)
    if volume is not None:
        diffs = volume.geometry.differences(label_map.geometry)
        if diffs:
            result.problems.append(
                "the label map is not on the image's grid (image vs label map): " + "; ".join(diffs)
            )
    array = np.asarray(label_map.array)
    values = label_map.present_labels()
    if not values:
        result.problems.append("the label map is empty: no voxel is labelled")
    else:
        counts = _pixels_per_slice(array, values)  # [Z, C]
        result.classes = {v: int(np.count_nonzero(counts[:, j])) for j, v in enumerate(values)}
        for j, v in enumerate(values):
            if _longest_run(counts[:, j] >= min_pixels) < shots + 1:
                result.warnings.append(
                    f"class {v}: no {shots + 1} consecutive slices with at least {min_pixels} pixels of it, "
                    "so it cannot be trained on in this volume"
                )
        if max(values) > LARGE_LABEL:
            result.warnings.append(
                f"label values up to {max(values)} ({len(values)} classes): is this an image or an instance "
                "map rather than a label map?"
            )
    result.ok = not result.problems
    return result


def _pixels_per_slice(array: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``[Z, len(values)]``: the pixels of each value on each slice."""
    top = int(max(values)) + 1
    out = np.zeros((array.shape[0], len(values)), dtype=np.int64)
    index = np.asarray(values, dtype=np.int64)
    for z, plane in enumerate(array):
        out[z] = np.bincount(plane.ravel(), minlength=top)[index]
    return out


def _longest_run(ok: np.ndarray) -> int:
    best = run = 0
    for flag in np.asarray(ok, dtype=bool):
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "study"


def save_study_pair(volume: Any, label_map: Any, folder: str | os.PathLike[str], name: str) -> TrainingPair:
    """Write a study held in memory (a :class:`~sd_fsmis.core.volume.Volume` and a
    :class:`~sd_fsmis.core.labelmap.LabelMap`, e.g. ``study.volume`` and ``layer.copy_label_map()``) as
    ``<folder>/<name>_image.nii.gz`` and ``<name>_label.nii.gz`` (atomically) and return the pair.

    The label map must lie on the volume's grid (:class:`~sd_fsmis.core.errors.GeometryMismatchError`).
    """
    import SimpleITK as sitk

    volume.geometry.require_match(label_map.geometry, what="label map", of="volume")
    folder = Path(folder)
    stem = _safe_name(name)
    image_path, label_path = folder / f"{stem}_image.nii.gz", folder / f"{stem}_label.nii.gz"
    label_map.save(label_path)  # the label map first, the image last: the image's presence says complete
    with atomic_path(image_path) as tmp:
        try:
            sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=True)
        except RuntimeError as exc:
            raise OSError(f"{image_path}: cannot write the image ({_one_line(exc)})") from exc
    return TrainingPair(image=str(image_path), label=str(label_path), name=str(name) or stem)


def pairs_from_dataset(path: str | os.PathLike[str]) -> tuple[list[TrainingPair], dict[int, str]]:
    """The pairs of a CHAOS-like folder (images/, labels/) or a .json/.csv manifest, and its class names."""
    from sd_fsmis.core.datasets import FewShotDataset

    dataset = FewShotDataset.open(path)
    pairs = [
        TrainingPair(str(c.image), str(c.label), c.series_uid, name=f"{Path(path).name} {c.id}")
        for c in dataset.cases
    ]
    return pairs, dict(dataset.class_names)


def write_manifest(
    pairs: Sequence[TrainingPair], class_names: Mapping[int, str], path: str | os.PathLike[str]
) -> Path:
    """Write the JSON manifest :mod:`sd_fsmis.core.datasets` reads (ids 1..N in order), atomically."""
    cases = []
    for number, pair in enumerate(pairs, start=1):
        row: dict[str, Any] = {
            "id": number,
            "image": str(Path(pair.image).expanduser().resolve()),
            "label": str(Path(pair.label).expanduser().resolve()),
            "name": pair.display_name,
        }
        if pair.series_uid:
            row["series"] = pair.series_uid
        cases.append(row)
    document = {"classes": {str(int(k)): str(v) for k, v in sorted(class_names.items())}, "cases": cases}
    path = Path(path)
    atomic_write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


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

    @property
    def training_indices(self) -> list[int]:
        held = set(self.validation)
        return [i for i in range(len(self.pairs)) if i not in held]

    def validate(self) -> None:
        """Raise :class:`FineTuneError` (one line) for a plan that cannot run."""
        if not self.base_model:
            raise FineTuneError("choose a model to start from")
        if not self.pairs:
            raise FineTuneError("add at least one volume with its label map")
        if not self.classes:
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
        return []

    def _config(self) -> TrainingConfig:
        out = Path(self.out).expanduser()
        validating = bool(self.validation)
        return TrainingConfig(
            model=self.base_model,
            data=str(out / MANIFEST_FILE),
            out=str(out),
            train_ids=[i + 1 for i in self.training_indices],
            validation_ids=sorted(i + 1 for i in self.validation),
            classes=sorted({int(c) for c in self.classes}),
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
            dice_validation=validating,
            validate_before=validating,
            heldout_episodes=HELDOUT_EPISODES if validating else 0,
            seed=self.seed,
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
            raise FineTuneError(f"the fine-tuning plan is damaged ({_one_line(exc)})") from None

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
def fine_tune(
    plan: FineTunePlan,
    *,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainingResult:
    """Run ``plan`` (a core job): write ``out/fine_tune_plan.json`` and the manifest, then train.

    ``resume``: continue from the newest checkpoint in ``plan.out`` (a fresh run when there is none).
    Returns the :class:`~sd_fsmis.core.trainer.TrainingResult`; pause / cancel as :func:`train`.
    """
    from sd_fsmis.core.trainer import train

    config = plan.training_config()  # validates the plan and writes the manifest
    plan.save(Path(config.out) / PLAN_FILE)
    config.resume = bool(resume)
    return train(config, progress=progress, cancel=cancel)


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
    from sd_fsmis.core.trainer import CHECKPOINT_PREFIX, FINISHED, TRAINER_STATE, checkpoint_dirs

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

    ``result`` is a :class:`~sd_fsmis.core.trainer.TrainingResult`; None where a value was not measured.
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
    from sd_fsmis.core.trainer import FINISHED

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
