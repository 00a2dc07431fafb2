"""Annotated volumes on disk for training and evaluation: a CHAOS-like folder or a manifest file.

A folder laid out like the CHAOS T2 one::

    DIR/images/image_<ID>.nii.gz     the volumes
    DIR/labels/label_<ID>.nii.gz     their label maps (0 background, 1..N classes)
    DIR/supervoxels/supervoxel_<ID>.nii.gz   optional pseudo-labels (self-supervised training)

or a manifest for a user's own data (DICOM folders/files or NIfTI; paths relative to the manifest)::

    manifest.json  {"classes": {"1": "liver", "2": "spleen"},
                    "cases": [{"id": 7, "image": "pat7/CT/", "series": "1.2.3...", "label": "pat7.nii.gz"}]}
    manifest.csv   id,image,label[,series][,supervoxels][,classes]   (classes like "1:liver;2:spleen")

Self-supervised training (``sd-fsmis train --source supervoxels|mixed``) also takes volumes without a label
map: ``FewShotDataset.open(path, require_labels=False)`` accepts an image without ``labels/label_<ID>`` (or
a manifest row without "label"); such a case has ``label=None``.

IDs are whole numbers and are sorted as integers (the literature's folds index that order); a manifest
without ids numbers its cases 1..N in file order. Class names are known for the CHAOS layout (1 liver,
2 right kidney, 3 left kidney, 4 spleen); other data get "Label N" unless names are given. Each label map
must lie on its image's grid: the loaders check it and refuse a mismatch with a clear message.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sd_fsmis.core.errors import UserError

#: Class names of the CHAOS T2-SPIR labels (Abd-MRI).
CHAOS_CLASSES: dict[int, str] = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}

_IMAGE_RE = re.compile(r"^image_(\d+)\.nii(\.gz)?$")


class DatasetError(UserError):
    """A data folder that is missing or not laid out as images/image_ID + labels/label_ID."""


@dataclass(frozen=True)
class Case:
    """One volume of a dataset: its integer id and its files."""

    id: int
    image: Path
    #: None: an unlabelled volume (only opened with ``require_labels=False``)
    label: Path | None
    supervoxels: Path | None = None
    #: the series to read when ``image`` is a DICOM folder holding several
    series_uid: str | None = None


@dataclass
class FewShotDataset:
    """The cases of a data folder, sorted by integer id, and the names of its classes."""

    root: Path
    cases: list[Case]
    class_names: dict[int, str] = field(default_factory=lambda: dict(CHAOS_CLASSES))
    #: the classes a manifest lists itself ("classes"): evaluated even where no label map holds them, so
    #: that their absence is shown rather than passed over (a folder declares none)
    declared_classes: tuple[int, ...] = ()

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        class_names: Mapping[int, str] | None = None,
        *,
        require_labels: bool = True,
    ) -> FewShotDataset:
        """Index ``root`` (a folder or a .json/.csv manifest); :class:`DatasetError` if it is unusable.

        ``require_labels=False``: volumes without a label map are accepted (``Case.label`` is None).
        """
        root = Path(root)
        if not root.exists():
            raise DatasetError(f"{root}: no such data folder or manifest")
        if root.is_file() and root.suffix.lower() in (".json", ".csv"):
            return _open_manifest(root, class_names, require_labels)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a folder (expected images/ and labels/ inside)")
        images, labels = root / "images", root / "labels"
        if not images.is_dir():
            raise DatasetError(f"{root}: expected the sub-folders images/ and labels/ (as in CHAOS T2)")
        if require_labels and not labels.is_dir():
            raise DatasetError(
                f"{root}: expected the sub-folders images/ and labels/ (as in CHAOS T2); volumes without "
                "label maps are trained on self-supervised (--source supervoxels)"
            )
        cases = []
        for path in images.iterdir():
            match = _IMAGE_RE.match(path.name)
            if match is None:
                continue
            case_id = int(match.group(1))
            label = _first_existing(labels, f"label_{match.group(1)}")
            if label is None and require_labels:
                raise DatasetError(
                    f"{root}: {path.name} has no label map labels/label_{match.group(1)}.nii.gz "
                    "(volumes without label maps: --source supervoxels or mixed)"
                )
            supervoxels = _first_existing(root / "supervoxels", f"supervoxel_{match.group(1)}")
            cases.append(Case(case_id, path, label, supervoxels))
        if not cases:
            raise DatasetError(f"{root}: no images/image_<ID>.nii.gz files")
        ids = [c.id for c in cases]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{root}: the same id appears twice in images/ (e.g. .nii and .nii.gz)")
        cases.sort(key=lambda c: c.id)
        names = dict(CHAOS_CLASSES if class_names is None else class_names)
        return cls(root, cases, names)

    @property
    def ids(self) -> list[int]:
        """Case ids in sorted (integer) order: the order folds are defined on."""
        return [c.id for c in self.cases]

    def case(self, case_id: int) -> Case:
        for c in self.cases:
            if c.id == int(case_id):
                return c
        raise DatasetError(f"{self.root}: no case with id {case_id}")

    @property
    def labelled_ids(self) -> list[int]:
        """The ids of the cases with a label map."""
        return [c.id for c in self.cases if c.label is not None]

    def class_name(self, label: int) -> str:
        return self.class_names.get(int(label), f"Label {int(label)}")

    def inputs(self):
        """The files this dataset reads (manifest, images, label maps, supervoxels): never written over."""
        from sd_fsmis.core.io.destinations import Inputs

        inputs = Inputs()
        if self.root.is_file():
            inputs.add(self.root, f"the manifest {self.root.name}")
        for case in self.cases:
            inputs.add(case.image, f"the image of case {case.id}")
            inputs.add(case.label, f"the label map of case {case.id}")
            inputs.add(case.supervoxels, f"the supervoxels of case {case.id}")
        return inputs


def _open_manifest(
    path: Path, class_names: Mapping[int, str] | None, require_labels: bool = True
) -> FewShotDataset:
    """Read a JSON or CSV manifest (see the module docstring)."""
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(path.read_text("utf-8"))
            rows = document.get("cases") if isinstance(document, dict) else document
            classes = document.get("classes", {}) if isinstance(document, dict) else {}
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            classes = {}
            for row in rows:
                for item in filter(None, (row.get("classes") or "").split(";")):
                    value, _, name = item.partition(":")
                    classes[value.strip()] = name.strip()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the manifest ({exc})") from None
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"{path}: the manifest lists no cases")
    base = path.parent
    cases = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("image"):
            raise DatasetError(f"{path}: case {number} needs an image path")
        if require_labels and not row.get("label"):
            raise DatasetError(f"{path}: case {number} needs an image and a label path")
        try:
            case_id = int(row.get("id") or number)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: case {number}: id {row.get('id')!r} is not a whole number") from None
        image = base / str(row["image"])
        label = base / str(row["label"]) if row.get("label") else None
        for what, p in (("image", image), ("label map", label)):
            if p is not None and not p.exists():
                raise DatasetError(f"{path}: case {case_id}: the {what} {p} does not exist")
        supervoxels = base / str(row["supervoxels"]) if row.get("supervoxels") else None
        cases.append(Case(case_id, image, label, supervoxels, str(row.get("series") or "") or None))
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: the same case id appears twice")
    cases.sort(key=lambda c: c.id)
    try:
        names = {int(k): str(v) for k, v in dict(classes).items()}
    except (TypeError, ValueError):
        raise DatasetError(f'{path}: classes must map label values to names, e.g. {{"1": "liver"}}') from None
    declared = tuple(sorted(names))
    if class_names is not None:
        names.update(class_names)
    return FewShotDataset(path, cases, names, declared)


def _first_existing(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None
