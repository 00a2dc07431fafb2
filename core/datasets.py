"""Few-shot evaluation datasets on disk: a folder laid out like the CHAOS T2 one.

::

    DIR/images/image_<ID>.nii.gz     the volumes
    DIR/labels/label_<ID>.nii.gz     their label maps (0 background, 1..N classes)
    DIR/supervoxels/supervoxel_<ID>.nii.gz   optional pseudo-labels (self-supervised training)

IDs are whole numbers and are sorted as integers (the literature's folds index that order). Class names
are known for the CHAOS layout (1 liver, 2 right kidney, 3 left kidney, 4 spleen); other folders get
"Label N" unless the caller passes names.
"""

from __future__ import annotations

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
    label: Path
    supervoxels: Path | None = None


@dataclass
class FewShotDataset:
    """The cases of a data folder, sorted by integer id, and the names of its classes."""

    root: Path
    cases: list[Case]
    class_names: dict[int, str] = field(default_factory=lambda: dict(CHAOS_CLASSES))

    @classmethod
    def open(
        cls, root: str | os.PathLike[str], class_names: Mapping[int, str] | None = None
    ) -> FewShotDataset:
        """Index ``root``; raise :class:`DatasetError` if it is missing or not laid out as expected."""
        root = Path(root)
        if not root.exists():
            raise DatasetError(f"{root}: no such data folder")
        if not root.is_dir():
            raise DatasetError(f"{root}: not a folder (expected images/ and labels/ inside)")
        images, labels = root / "images", root / "labels"
        if not images.is_dir() or not labels.is_dir():
            raise DatasetError(f"{root}: expected the sub-folders images/ and labels/ (as in CHAOS T2)")
        cases = []
        for path in images.iterdir():
            match = _IMAGE_RE.match(path.name)
            if match is None:
                continue
            case_id = int(match.group(1))
            label = _first_existing(labels, f"label_{match.group(1)}")
            if label is None:
                raise DatasetError(
                    f"{root}: {path.name} has no label map labels/label_{match.group(1)}.nii.gz"
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

    def class_name(self, label: int) -> str:
        return self.class_names.get(int(label), f"Label {int(label)}")


def _first_existing(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None
