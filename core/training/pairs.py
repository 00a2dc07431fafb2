"""The volumes a person brings to fine-tuning: (image, label map) pairs, each checked before training
(:func:`check_pair`: problems that make it unusable, warnings that do not), written from studies open in
the application (:func:`save_study_pair`) or read from a data set, and the training manifest."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sd_fsmis.core.errors import JobCancelled, UserError
from sd_fsmis.core.io.atomic import atomic_path, atomic_write_text
from sd_fsmis.core.jobs import CancelToken

log = logging.getLogger(__name__)


class FineTuneError(UserError):
    """A fine-tuning plan that cannot be run as chosen."""


#: label values above this are unusual for organ labels (an image or an instance map picked by mistake?)
LARGE_LABEL = 255


#: relative difference of the row and column spacing above which the in-plane grid is called anisotropic
ANISOTROPY = 0.05


# ------------------------------------------------------------------------------------------ pairs
@dataclass
class TrainingPair:
    """A volume (file or folder; ``series_uid`` picks a series of a DICOM folder) and its label map
    (``label=""``: an unlabelled volume, for self-supervised fine-tuning)."""

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
        if not isinstance(data, Mapping) or not data.get("image"):
            raise FineTuneError("a training pair needs an image path")
        return cls(
            image=str(data["image"]),
            label=str(data.get("label") or ""),
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


def one_line(exc: BaseException) -> str:
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
    from sd_fsmis.core.io.labelmap import LabelMap
    from sd_fsmis.core.io.loader import load_volume

    result = PairCheck(pair=pair, ok=False)
    try:
        volume = load_volume(pair.image, pair.series_uid, cancel=cancel)
    except JobCancelled:
        raise
    except UserError as exc:
        result.problems.append(f"image: {one_line(exc)}")
        volume = None
    except Exception as exc:  # a reader's own error on a damaged file: still one line, never a crash
        log.debug("reading %s failed", pair.image, exc_info=True)
        result.problems.append(f"image: {pair.image} cannot be read ({one_line(exc)})")
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
    if not pair.label:  # an unlabelled volume: usable for self-supervised training (supervoxels)
        result.ok = not result.problems
        return result
    try:
        label_map = LabelMap.load(pair.label)
    except JobCancelled:
        raise
    except UserError as exc:
        result.problems.append(f"label map: {one_line(exc)}")
        return result
    except Exception as exc:
        log.debug("reading %s failed", pair.label, exc_info=True)
        result.problems.append(f"label map: {pair.label} cannot be read ({one_line(exc)})")
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
    :class:`~sd_fsmis.core.io.labelmap.LabelMap`, e.g. ``study.volume`` and ``layer.copy_label_map()``) as
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
            raise OSError(f"{image_path}: cannot write the image ({one_line(exc)})") from exc
    return TrainingPair(image=str(image_path), label=str(label_path), name=str(name) or stem)


def pairs_from_dataset(
    path: str | os.PathLike[str], *, require_labels: bool = True
) -> tuple[list[TrainingPair], dict[int, str]]:
    """The pairs of a CHAOS-like folder (images/, labels/) or a .json/.csv manifest, and its class names.

    ``require_labels=False``: images without a label map come as pairs with ``label=""``."""
    from sd_fsmis.core.io.datasets import FewShotDataset

    dataset = FewShotDataset.open(path, require_labels=require_labels)
    pairs = [
        TrainingPair(str(c.image), str(c.label or ""), c.series_uid, name=f"{Path(path).name} {c.id}")
        for c in dataset.cases
    ]
    return pairs, dict(dataset.class_names)


def write_manifest(
    pairs: Sequence[TrainingPair], class_names: Mapping[int, str], path: str | os.PathLike[str]
) -> Path:
    """Write the JSON manifest :mod:`sd_fsmis.core.io.datasets` reads (ids 1..N in order), atomically."""
    cases = []
    for number, pair in enumerate(pairs, start=1):
        row: dict[str, Any] = {
            "id": number,
            "image": str(Path(pair.image).expanduser().resolve()),
            "name": pair.display_name,
        }
        if pair.label:  # an unlabelled volume has none (self-supervised training)
            row["label"] = str(Path(pair.label).expanduser().resolve())
        if pair.series_uid:
            row["series"] = pair.series_uid
        cases.append(row)
    document = {"classes": {str(int(k)): str(v) for k, v in sorted(class_names.items())}, "cases": cases}
    path = Path(path)
    atomic_write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path
