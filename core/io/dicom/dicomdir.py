"""DICOMDIR (the index file of a DICOM CD/DVD/USB file-set): which image files it lists, grouped by series."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sd_fsmis.core.errors import StudyReadError
from sd_fsmis.core.io.dicom.headers import DICOMDIR_SOP_CLASS, read_dataset

#: Directory record types that reference image files (others: SR documents, RT plans, presentation states).
IMAGE_RECORD_TYPES = ("IMAGE",)


@dataclass
class DicomdirIndex:
    """The image files a DICOMDIR lists, grouped by Series Instance UID (file-set order), and what is off."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)  # per series: listed files that do not exist
    other_records: int = 0  # non-image records (reports, plans, ...) that were skipped


def is_dicomdir(path: str | os.PathLike[str]) -> bool:
    """True for a file named DICOMDIR, or a DICOM file whose media storage class is a directory."""
    p = Path(path)
    if p.name.upper() == "DICOMDIR":
        return True
    try:
        ds = read_dataset(p)
    except StudyReadError:
        return False
    meta = getattr(ds, "file_meta", None)
    return meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS


def read_dicomdir(path: str | os.PathLike[str]) -> DicomdirIndex:
    """Parse a DICOMDIR with pydicom's ``FileSet`` and list the image files per series."""
    import pydicom
    from pydicom.fileset import FileSet

    p = Path(path)
    try:
        ds = pydicom.dcmread(str(p))
        file_set = FileSet(ds)
        instances = list(file_set)
    except pydicom.errors.InvalidDicomError as exc:
        raise StudyReadError(f"{p}: not a DICOMDIR ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise StudyReadError(f"{p}: cannot be read ({exc})") from exc
    except Exception as exc:  # pydicom raises ValueError/KeyError/... on damaged directory records
        raise StudyReadError(f"{p}: a damaged DICOMDIR ({' '.join(str(exc).split())})") from exc
    index = DicomdirIndex()
    for instance in instances:
        node = instance.node
        if node.record_type not in IMAGE_RECORD_TYPES:
            index.other_records += 1
            continue
        series_record = node.parent._record if node.parent is not None else None
        uid = str(series_record.get("SeriesInstanceUID", "")) if series_record is not None else ""
        file_path = _existing(Path(instance.path))
        if file_path is None:
            index.missing.setdefault(uid, []).append(str(instance.path))
            continue
        index.groups.setdefault(uid, []).append(str(file_path))
    return index


def _existing(path: Path) -> Path | None:
    """The referenced file, tolerating a different letter case (CD file names are upper case, copies not)."""
    if path.exists():
        return path
    parts = path.parts
    # walk down from the first existing ancestor, matching each name case-insensitively
    for i in range(len(parts) - 1, 0, -1):
        base = Path(*parts[:i])
        if base.is_dir():
            current = base
            for name in parts[i:]:
                try:
                    matches = [e for e in os.listdir(current) if e.lower() == name.lower()]
                except OSError:
                    return None
                if not matches:
                    return None
                current = current / matches[0]
            return current
    return None
