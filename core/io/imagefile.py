"""Reading one image file with SimpleITK, turning every failure into one clear message."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from sd_fsmis.core.errors import StudyReadError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def check_readable_file(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`StudyReadError` if ``path`` is missing, not a file, unreadable or empty."""
    p = Path(path)
    if not p.exists():
        raise StudyReadError(f"{p}: no such file or folder")
    if not p.is_file():
        raise StudyReadError(f"{p}: not a file")
    if not os.access(p, os.R_OK):
        raise StudyReadError(f"{p}: permission denied")
    if p.stat().st_size == 0:
        raise StudyReadError(f"{p}: the file is empty (0 bytes)")
    return p


def read_image(path: str | os.PathLike[str], pixel_type: int = sitk.sitkUnknown) -> sitk.Image:
    """Read an image file (NIfTI, one DICOM, ...) with SimpleITK; errors become :class:`StudyReadError`."""
    p = check_readable_file(path)
    try:
        return sitk.ReadImage(str(p), pixel_type)
    except RuntimeError as exc:
        raise StudyReadError(f"{p}: cannot be read as an image ({itk_reason(exc)})") from exc


def itk_reason(exc: RuntimeError) -> str:
    """The useful last line of an ITK exception text."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1] if lines else "unknown error"
