"""DICOM series: find them (GDCM), check and split them, and say what volume each will give.

GDCM (through SimpleITK) groups the files of a folder into series and sorts them along the slice normal
(``ImageSeriesReader.GetGDCMSeriesIDs`` / ``GetGDCMSeriesFileNames``). The slice headers
(:mod:`sd_fsmis.core.io.dicom.headers`) then show what GDCM does not check: images of different size or
orientation in one series (split into separate series: never a wrong volume), slices sharing positions,
missing slices, non-uniform spacing and shear (gantry tilt): such a series is planned onto a regular grid
(:mod:`sd_fsmis.core.io.dicom.regularize`) and said so in its warnings.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.io.dicom.headers import SliceHeader, has_dicm_prefix
from sd_fsmis.core.io.dicom.regularize import Regularization, acquired_slices, plan_regular_grid
from sd_fsmis.core.jobs import CancelToken

log = logging.getLogger(__name__)

#: File names that are never DICOM images (skipped without asking GDCM).
NOT_DICOM_SUFFIXES = (
    ".txt", ".json", ".xml", ".html", ".htm", ".pdf", ".csv", ".md", ".ini", ".inf", ".log",
    ".exe", ".dll", ".bat", ".sh", ".py", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".zip", ".gz",
    ".nii", ".mha", ".mhd", ".nrrd", ".raw",
)  # fmt: skip

#: Two slice orientations closer than this (largest cosine difference) are the same orientation.
ORIENTATION_ATOL = 1e-3
#: Slice steps agreeing within this fraction of the typical step (at least SPACING_ATOL_MM) are uniform.
SPACING_RTOL = 0.02
SPACING_ATOL_MM = 0.01
#: Slices whose stack direction leans from the slice normal by more than this are reported as sheared.
SHEAR_WARN_DEG = 0.5


# ------------------------------------------------------------------------------------ finding series


@dataclass
class FolderScan:
    """What a recursive folder search found: DICOM file groups (one per GDCM series), NIfTI files."""

    dicom_groups: list[list[str]] = field(default_factory=list)
    nifti_files: list[str] = field(default_factory=list)
    n_files: int = 0
    n_folders: int = 0
    unreadable_folders: list[str] = field(default_factory=list)
    skipped_dicom: list[str] = field(default_factory=list)  # DICOM files GDCM put in no series
    #: DICOM files of folders GDCM could not scan (one damaged file stops its scan): read one by one
    unscanned_dicom: list[str] = field(default_factory=list)


def find_series_files(root: str | os.PathLike[str], cancel: CancelToken | None = None) -> FolderScan:
    """Search ``root`` recursively; in each folder let GDCM group the DICOM files into sorted series.

    When the first series GDCM returns already holds every candidate file of a folder (the usual case:
    one series per folder), the second GDCM pass that lists series ids is skipped.
    """
    from sd_fsmis.core.io.imagefile import is_nifti

    scan = FolderScan()

    def on_error(exc: OSError) -> None:
        scan.unreadable_folders.append(str(getattr(exc, "filename", exc)))

    for folder, dirnames, filenames in os.walk(root, onerror=on_error):
        if cancel is not None:
            cancel.raise_if_cancelled()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = sorted(n for n in filenames if not n.startswith("."))
        scan.n_folders += 1
        scan.n_files += len(names)
        scan.nifti_files.extend(os.path.join(folder, n) for n in names if is_nifti(n))
        candidates = [
            n for n in names if n.upper() != "DICOMDIR" and not n.lower().endswith(NOT_DICOM_SUFFIXES)
        ]
        if not candidates:
            continue
        listed: set[str] = set()
        try:
            first = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
            if first and len(first) == len(candidates):
                scan.dicom_groups.append(first)
                continue
            groups = []
            for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) if first else ():
                files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_id))
                if files:
                    groups.append(files)
        except RuntimeError as exc:
            # one file GDCM cannot parse stops its scan of the whole folder: read every DICOM file of
            # this folder with pydicom instead (the series are then grouped and sorted by us)
            log.info(
                "GDCM cannot scan %s (%s); reading its files one by one", folder, " ".join(str(exc).split())
            )
            paths = (os.path.join(folder, n) for n in candidates)
            scan.unscanned_dicom.extend(p for p in paths if has_dicm_prefix(p))
            continue
        for files in groups:
            scan.dicom_groups.append(files)
            listed.update(os.path.normpath(f) for f in files)
        # DICOM files GDCM did not take: non-images, or images it cannot parse (damaged, truncated)
        for name in candidates:
            path = os.path.join(folder, name)
            if os.path.normpath(path) not in listed and has_dicm_prefix(path):
                scan.skipped_dicom.append(path)
    return scan


# ------------------------------------------------------------------------------ splitting and checks


@dataclass
class DicomSeries:
    """One series as it will be loaded: its slices in order, its z step, warnings, or why it cannot load."""

    uid: str  # the Series Instance UID, suffixed ".1", ".2", ... when the series had to be split
    series_instance_uid: str
    slices: list[SliceHeader]
    z_spacing: float | None = None  # None: take what GDCM says (single files, multi-frame files)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    part: str = ""  # what distinguishes this part of a split series ("256x256", "echo 2", ...)
    #: the regular grid the series is resampled to (missing slices, uneven spacing, tilt); None: regular
    regularization: Regularization | None = None

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]

    @property
    def files(self) -> list[str]:
        return [s.path for s in self.slices]

    @property
    def is_multiframe(self) -> bool:
        return len(self.slices) == 1 and self.first.frames > 1

    def output_pixel_type(self) -> int:
        """``sitkFloat32`` where the slices' rescale or storage differ or the rescale is fractional.

        GDCM picks the output type from the first slice; different slopes/intercepts or bit depths across
        slices would then be cast into that type. Otherwise GDCM's choice (int16/int32 for CT) stands.
        """
        if self.first.is_colour:
            return sitk.sitkUnknown
        rescales = {(s.slope, s.intercept) for s in self.slices}
        formats = {(s.bits_allocated, s.bits_stored, s.pixel_representation) for s in self.slices}
        fractional = any(not (float(a).is_integer() and float(b).is_integer()) for a, b in rescales)
        if fractional or len(rescales) > 1 or len(formats) > 1:
            return sitk.sitkFloat32
        return sitk.sitkUnknown


def _orientation_groups(slices: list[SliceHeader]) -> list[list[SliceHeader]]:
    groups: list[tuple[tuple[float, ...] | None, list[SliceHeader]]] = []
    for s in slices:
        for key, members in groups:
            same = (
                key is None
                if s.orientation is None
                else key is not None
                and max(abs(a - b) for a, b in zip(key, s.orientation)) <= ORIENTATION_ATOL
            )
            if same:
                members.append(s)
                break
        else:
            groups.append((s.orientation, [s]))
    return [members for _, members in groups]


def sort_slices(slices: list[SliceHeader]) -> list[SliceHeader]:
    """Sort along the slice normal, then by instance number, then by file name (GDCM's own rules)."""
    normal = slices[0].normal if slices else None
    if normal is not None and all(s.position is not None for s in slices):
        return sorted(
            slices, key=lambda s: (float(np.dot(s.position, normal)), s.instance_number or 0, s.path)
        )
    if all(s.instance_number is not None for s in slices):
        return sorted(slices, key=lambda s: (s.instance_number, s.path))
    return sorted(slices, key=lambda s: s.path)


def _positions_along_normal(slices: list[SliceHeader]) -> np.ndarray | None:
    normal = slices[0].normal
    if normal is None or any(s.position is None for s in slices):
        return None
    return np.array([float(np.dot(s.position, normal)) for s in slices])


def _has_duplicate_positions(slices: list[SliceHeader]) -> bool:
    d = _positions_along_normal(slices)
    return d is not None and len(d) > 1 and bool(np.any(np.abs(np.diff(np.sort(d))) < SPACING_ATOL_MM))


#: Header fields that tell apart volumes interleaved in one series (echoes, phases, acquisitions).
_STACK_KEYS = (
    ("echo_number", "echo", "echoes"),
    ("temporal_position", "phase", "phases"),
    ("acquisition_number", "acquisition", "acquisitions"),
)


def _split_stacked(slices: list[SliceHeader]) -> tuple[list[tuple[str, list[SliceHeader]]], str]:
    """Split slices that share positions into volumes by echo, phase or acquisition number.

    Returns the parts (label, slices) and what they are ("echoes"), or no parts and why not.
    """
    for attr, label, plural in _STACK_KEYS:
        values = sorted({getattr(s, attr) for s in slices}, key=lambda v: (v is None, v or 0))
        if len(values) < 2:
            continue
        parts = [(f"{label} {v}", [s for s in slices if getattr(s, attr) == v]) for v in values]
        if not any(_has_duplicate_positions(p) for _, p in parts):
            return parts, plural
    d = _positions_along_normal(slices)
    n_positions = len(np.unique(np.round(d / SPACING_ATOL_MM))) if d is not None else 0
    return [], (
        f"{len(slices)} images at only {n_positions} distinct slice positions (several echoes, phases or "
        "time points in one series that no header field tells apart); cannot build one volume"
    )


def split_series(slices: list[SliceHeader], *, presorted: bool) -> list[DicomSeries]:
    """Turn the image headers of one Series Instance UID into loadable series.

    Images of different size, orientation or colour model become separate series (``uid.1``, ``uid.2``...);
    so does every multi-frame file, and interleaved echoes/phases. ``presorted`` slices (GDCM's order) keep
    their order unless a split or an unsorted position list requires sorting them again.
    """
    uid = slices[0].series_uid or "(no series uid)"
    parts, notes = _parts(slices)
    result: list[tuple[str, list[SliceHeader], str]] = []  # (label, slices, error)
    for label, members in parts:
        if len(parts) > 1 or not presorted:
            members = sort_slices(members)
        if not _has_duplicate_positions(members):
            result.append((label, members, ""))
            continue
        stacked, reason = _split_stacked(members)
        if not stacked:
            result.append((label, members, reason))
            continue
        notes.append(f"interleaved {reason}")
        prefix = label + ", " if label else ""
        result.extend((prefix + sub, sort_slices(sub_members), "") for sub, sub_members in stacked)

    if len(result) == 1:
        result = [("", result[0][1], result[0][2])]
    repeated = Counter(label for label, _, _ in result)
    numbered: Counter = Counter()
    for i, (label, members, error) in enumerate(result):
        if repeated[label] > 1:  # e.g. several oblique planes: number them
            numbered[label] += 1
            result[i] = (f"{label} {numbered[label]}", members, error)
    why = " and ".join(dict.fromkeys(notes))
    series: list[DicomSeries] = []
    for k, (label, members, error) in enumerate(result, start=1):
        s = DicomSeries(
            uid=f"{uid}.{k}" if len(result) > 1 else uid,
            series_instance_uid=slices[0].series_uid,
            slices=members,
            part=label,
            error=error,
        )
        if len(result) > 1:
            s.warnings.append(f"series {uid} holds {why}: split into {len(result)} volumes")
        if not error:
            check_spacing(s)
        series.append(s)
    return series


def _parts(slices: list[SliceHeader]) -> tuple[list[tuple[str, list[SliceHeader]]], list[str]]:
    """Group slices by image size, colour model and orientation; every multi-frame file on its own.

    Returns the groups (label, slices) in acquisition order, and notes on why there are several.
    """
    parts: list[tuple[str, list[SliceHeader]]] = []
    multiframe = [s for s in slices if s.frames > 1]
    single = [s for s in slices if s.frames == 1]
    for s in multiframe:
        parts.append((f"multi-frame file {Path(s.path).name}", [s]))
    by_size: dict[tuple, list[SliceHeader]] = {}
    for s in single:
        key = (s.rows, s.columns, s.samples_per_pixel, s.photometric == "PALETTE COLOR")
        by_size.setdefault(key, []).append(s)
    size_split = len(by_size) > 1
    orient_split = False
    for (rows, cols, *_), members in by_size.items():
        groups = _orientation_groups(members)
        orient_split = orient_split or len(groups) > 1
        for group in groups:
            label = f"{cols}x{rows}" if size_split else ""
            if len(groups) > 1:
                label = (label + ", " if label else "") + plane_name(group[0])
            parts.append((label, group))
    # one order whatever order the files came in (GDCM's per folder, a DICOMDIR's): acquisition order
    parts.sort(key=lambda part: _acquisition_order(part[1]))
    notes: list[str] = []
    if size_split:
        notes.append("images of different sizes")
    if orient_split:
        notes.append("images of different orientations")
    if multiframe and (single or len(multiframe) > 1):
        notes.append("multi-frame files")
    return parts, notes


def _acquisition_order(slices: list[SliceHeader]) -> tuple:
    numbers = [s.instance_number for s in slices if s.instance_number is not None]
    return (min(numbers) if numbers else math.inf, min(s.path for s in slices))


def plane_name(header: SliceHeader) -> str:
    """'axial', 'coronal', 'sagittal' (or 'oblique axial', ...) for a slice's orientation."""
    normal = header.normal
    if normal is None:
        return "no orientation"
    k = int(np.argmax(np.abs(normal)))
    name = ("sagittal", "coronal", "axial")[k]
    return name if abs(normal[k]) >= 0.95 else f"oblique {name}"


def check_spacing(series: DicomSeries) -> None:
    """Set ``z_spacing``; find missing slices, non-uniform spacing and shear (gantry tilt), say what they
    are, and plan the regular grid the series is resampled to (``regularization``)."""
    slices = series.slices
    first = slices[0]
    if series.is_multiframe:
        return
    fallback = first.spacing_between_slices or first.slice_thickness or 1.0
    if len(slices) == 1:
        series.z_spacing = float(fallback)
        return
    if not monotonic_positions(slices):
        series.slices = slices = sort_slices(slices)
    d = _positions_along_normal(slices)
    if d is None:
        series.z_spacing = float(fallback)
        order = "instance" if first.instance_number is not None else "file"
        series.warnings.append(
            f"no slice positions in the headers: slices stacked in {order} order "
            f"with an assumed spacing of {fallback:g} mm"
        )
        return
    irregular: list[str] = []
    steps = np.diff(d)
    step = float(np.median(steps))
    tol = max(SPACING_RTOL * step, SPACING_ATOL_MM)
    if np.all(np.abs(steps - step) <= tol):
        series.z_spacing = float((d[-1] - d[0]) / (len(d) - 1))
    else:
        series.z_spacing = step
        multiples = np.round(steps / step)
        # gaps of whole steps are missing slices (unless more is missing than there: then just uneven)
        gaps = np.all(multiples >= 1) and np.all(np.abs(steps - multiples * step) <= tol * multiples)
        if gaps and np.sum(multiples - 1) <= len(d):
            missing = int(np.sum(multiples - 1))
            where = [int(i) + 2 for i in np.nonzero(multiples > 1)[0]]  # 1-based slice after each gap
            shown = ", ".join(str(w) for w in where[:5]) + (", ..." if len(where) > 5 else "")
            irregular.append(
                f"{missing} missing slice{'s' if missing > 1 else ''} (gap{'s' if len(where) > 1 else ''} "
                f"before slice {shown} of {len(d)})"
            )
        else:
            irregular.append(
                f"non-uniform slice spacing: {float(steps.min()):.4g} to {float(steps.max()):.4g} mm between "
                "slices"
            )
    stack = np.asarray(slices[-1].position) - np.asarray(slices[0].position)
    length = float(np.linalg.norm(stack))
    if length > 0:
        cosine = min(1.0, abs(float(np.dot(stack, first.normal))) / length)
        angle = math.degrees(math.acos(cosine))
        if angle > SHEAR_WARN_DEG:
            irregular.append(f"slices are sheared by {angle:.1f} degrees (gantry tilt?)")
    if not irregular:
        return
    series.warnings.extend(irregular)
    if first.pixel_spacing is None or first.orientation is None or not (first.rows and first.columns):
        series.warnings.append(
            "the headers lack what a regular grid needs (pixel spacing, orientation): the slices are "
            f"stacked {step:.4g} mm apart, so positions away from the first slice are approximate"
        )
        return
    acquired = acquired_slices(
        [s.position for s in slices], first.orientation, first.pixel_spacing, (first.columns, first.rows)
    )
    series.regularization = plan_regular_grid(acquired)
    series.warnings.append(series.regularization.note)


def monotonic_positions(slices: list[SliceHeader]) -> bool:
    """True when positions along the normal never decrease (or are missing, leaving the order as is)."""
    d = _positions_along_normal(slices)
    return d is None or bool(np.all(np.diff(d) >= -SPACING_ATOL_MM))


def header_geometry(
    series: DicomSeries,
) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    """Origin, spacing and direction from the headers (used where GDCM cannot read the file)."""
    first = series.first
    origin = tuple(first.position) if first.position else (0.0, 0.0, 0.0)
    row_mm, col_mm = first.pixel_spacing or (1.0, 1.0)
    z = series.z_spacing or first.spacing_between_slices or first.slice_thickness or 1.0
    if first.orientation is not None and first.normal is not None:
        x, y, n = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:]), first.normal
        direction = tuple(float(v) for v in np.column_stack([x, y, n]).ravel())
    else:
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    return origin, (float(col_mm), float(row_mm), float(z)), direction


def image_information(
    series: DicomSeries,
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    """Size, spacing, origin and direction of the volume a series will load as, without reading pixels.

    In-plane spacing, origin and direction come from GDCM (``ReadImageInformation`` on the first file), so
    that they are exactly what the loaded volume will have; the slice count and step from the headers.
    """
    if series.regularization is not None:  # the grid it is resampled to
        grid = series.regularization.grid
        return grid.size, grid.spacing, grid.origin, grid.direction
    first = series.first
    reader = sitk.ImageFileReader()
    reader.SetFileName(first.path)
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        origin, spacing, direction = header_geometry(series)
        n = first.frames if series.is_multiframe else len(series.slices)
        return (int(first.columns or 0), int(first.rows or 0), n), spacing, origin, direction
    size = list(reader.GetSize()) + [1] * (3 - reader.GetDimension())
    spacing = list(reader.GetSpacing()) + [1.0] * (3 - reader.GetDimension())
    origin = list(reader.GetOrigin()) + [0.0] * (3 - reader.GetDimension())
    direction = tuple(float(v) for v in reader.GetDirection())
    if len(direction) == 4:
        direction = (direction[0], direction[1], 0.0, direction[2], direction[3], 0.0, 0.0, 0.0, 1.0)
    if not series.is_multiframe:
        size[2] = len(series.slices)
        if series.z_spacing is not None:
            spacing[2] = float(series.z_spacing)
    return (
        tuple(int(v) for v in size[:3]),
        tuple(float(v) for v in spacing[:3]),
        tuple(float(v) for v in origin[:3]),
        direction,
    )
