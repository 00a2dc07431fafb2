"""Which studies a cohort holds: a folder of studies or a manifest, each study with an id and its supports.

A **folder**: every NIfTI file (``.nii``, ``.nii.gz``) directly in it is a study named by its file name
(``image_5.nii.gz`` -> ``image_5``), every sub-folder a DICOM study named by the folder; a folder laid out
like CHAOS (``images/``) gives the files of ``images/``. Files that are neither (notes, label tables) are
left out and named. A file is listed by its name, not read: a damaged study fails when it is segmented,
is recorded and skipped.

A **manifest** (``.json`` or ``.csv``; relative paths are relative to the manifest's folder) lists the
studies and may give each its own supports::

    {"studies": [
        {"id": "p001", "image": "p001/CT/", "series": "1.2.3"},
        {"id": "p002", "image": "p002.nii.gz", "support_mask": "p002_painted.nii.gz",
         "support_slices": [40, 52], "label": 1},
        {"id": "p003", "image": "p003.nii.gz",
         "supports": [{"image": "atlas.nii.gz", "mask": "atlas_liver.nii.gz", "slices": [30]}]}]}

CSV columns: ``id,image[,series][,support][,support_series][,support_mask][,support_slices][,label]``
(``support_slices`` as ``40;52``). A ``support_mask`` without ``support`` is painted on the study itself
(the study is its own support, as in the GUI). A study without supports uses the cohort's
(``--support``/``--support-mask`` of ``segment``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sd_fsmis.core.errors import UserError


class CohortError(UserError):
    """A folder or manifest of studies that cannot be used as a cohort (before any study is segmented)."""


NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: study ids become file names: anything but these characters is replaced by "_"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class SupportSpec:
    """Annotated slices used as support: a label map on ``image``'s grid (``image`` None: the study)."""

    mask: str
    image: str | None = None
    series: str | None = None
    #: support slice indices (None: the middle slice of those holding the label)
    slices: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "series": self.series,
            "mask": self.mask,
            "slices": None if self.slices is None else list(self.slices),
        }


@dataclass(frozen=True)
class CohortStudy:
    """One study of a cohort: its id (the output's name), where it is, and its own supports if any."""

    id: str
    image: str
    series: str | None = None
    #: this study's supports; empty: the cohort's
    supports: tuple[SupportSpec, ...] = ()
    #: this study's label value; None: the cohort's
    label: int | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "image": self.image,
            "series": self.series,
            "supports": [s.to_dict() for s in self.supports],
            "label": self.label,
        }


@dataclass
class Cohort:
    """The studies of a folder (sorted by id) or manifest (in its order); the files a folder left out."""

    source: Path
    studies: list[CohortStudy]
    left_out: list[str]

    def input_paths(self) -> list[tuple[str, str]]:
        """Every file the cohort reads, with what it is (outputs must never land on one)."""
        out = []
        for study in self.studies:
            out.append((study.image, f"the study {study.id}"))
            for support in study.supports:
                out.append((support.mask, f"a support mask of {study.id}"))
                if support.image:
                    out.append((support.image, f"a support study of {study.id}"))
        return out


def study_id(name: str) -> str:
    """A study's id from a file or folder name: without the NIfTI suffix, safe as a file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    safe = _UNSAFE.sub("_", name).strip("._")
    return safe or "study"


def open_cohort(path: str | os.PathLike[str], *, exclude: Iterable[str | os.PathLike[str]] = ()) -> Cohort:
    """The studies of a folder or a manifest (``.json``/``.csv``). ``exclude``: paths never taken as a
    study (the output folder, when it lies inside the studies' folder)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CohortError(f"--queries {p}: no such folder or manifest")
    if p.is_dir():
        cohort = _open_folder(p, [Path(e).resolve() for e in exclude])
    elif p.suffix.lower() in (".json", ".csv"):
        cohort = Cohort(p, _read_manifest(p), [])
    else:
        raise CohortError(f"--queries {p}: give a folder of studies or a manifest (.json or .csv)")
    if not cohort.studies:
        raise CohortError(f"--queries {p}: no study found (NIfTI files or DICOM folders)")
    ids = [s.id for s in cohort.studies]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise CohortError(f"--queries {p}: two studies have the id {twice[0]} (ids name the outputs)")
    if p.is_dir():  # a manifest's order is the user's
        cohort.studies.sort(key=lambda s: _natural_key(s.id))
    return cohort


def _natural_key(text: str) -> list:
    """``image_2`` before ``image_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _open_folder(folder: Path, exclude: Sequence[Path]) -> Cohort:
    images = folder / "images"
    root = images if images.is_dir() and (folder / "labels").is_dir() else folder
    studies: list[CohortStudy] = []
    left_out: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.resolve() in exclude:
            continue
        if entry.is_dir():
            if root is folder and entry.name in ("labels", "supervoxels"):
                left_out.append(entry.name + "/")
                continue
            studies.append(CohortStudy(study_id(entry.name), str(entry)))
        elif entry.name.lower().endswith(NIFTI_SUFFIXES):
            studies.append(CohortStudy(study_id(entry.name), str(entry)))
        else:
            left_out.append(entry.name)
    return Cohort(folder, studies, left_out)


# -------------------------------------------------------------------------------------------- manifests
def _read_manifest(path: Path) -> list[CohortStudy]:
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(path.read_text("utf-8"))
            rows = document.get("studies", document.get("cases")) if isinstance(document, dict) else document
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise CohortError(f"{path}: cannot read the manifest ({' '.join(str(exc).split())})") from None
    if not isinstance(rows, list) or not rows:
        raise CohortError(f'{path}: the manifest lists no studies (expected {{"studies": [...]}} or rows)')
    base = path.parent
    return [_manifest_study(path, base, number, row) for number, row in enumerate(rows, start=1)]


def _manifest_study(path: Path, base: Path, number: int, row: object) -> CohortStudy:
    where = f"{path}: study {number}"
    if not isinstance(row, Mapping) or not row.get("image"):
        raise CohortError(f"{where} needs an image path")
    image = _path(base, row["image"])
    name = str(row.get("id") or "").strip()
    sid = study_id(name) if name else study_id(Path(image).name)
    series = str(row.get("series") or "").strip() or None
    label = row.get("label")
    if label in ("", None):
        label = None
    else:
        try:
            label = int(label)
        except (TypeError, ValueError):
            raise CohortError(f"{where}: label {label!r} is not a label value (a whole number)") from None
        if not 1 <= label <= 65535:
            raise CohortError(f"{where}: label {label} is not a label value (1..65535)")
    supports: list[SupportSpec] = []
    listed = row.get("supports")
    if listed:
        if not isinstance(listed, list):
            raise CohortError(f"{where}: supports must be a list of {{image, mask, slices}}")
        for k, item in enumerate(listed, start=1):
            if not isinstance(item, Mapping) or not item.get("mask"):
                raise CohortError(f"{where}: support {k} needs a mask path")
            supports.append(_support(base, where, item.get("image"), item.get("series"), item["mask"], item))
    elif row.get("support_mask"):
        supports.append(
            _support(base, where, row.get("support"), row.get("support_series"), row["support_mask"], row)
        )
    elif row.get("support"):
        raise CohortError(f"{where}: a support study needs its support_mask")
    return CohortStudy(sid, image, series, tuple(supports), label)


def _support(base: Path, where: str, image, series, mask, row: Mapping) -> SupportSpec:
    slices = row.get("slices", row.get("support_slices"))
    return SupportSpec(
        mask=_path(base, mask),
        image=_path(base, image) if image else None,
        series=str(series).strip() or None if series else None,
        slices=_slices(where, slices),
    )


def _slices(where: str, value) -> tuple[int, ...] | None:
    if value in (None, "", []):
        return None
    items = value if isinstance(value, list) else re.split(r"[;, ]+", str(value).strip())
    try:
        return tuple(int(v) for v in items if str(v) != "")
    except (TypeError, ValueError):
        raise CohortError(f"{where}: support slices {value!r} are not slice indices") from None


def _path(base: Path, value) -> str:
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else base / p)
