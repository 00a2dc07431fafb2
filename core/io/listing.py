"""What a path holds: the series of a DICOM folder, DICOMDIR, DICOM file, NIfTI or other image file
(:func:`list_series`), each as a :class:`SeriesInfo` (size, spacing, orientation, modality, warnings), and
choosing one (:func:`choose_series`). Reading a series is :mod:`sd_fsmis.core.io.loader`.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.errors import MultipleSeriesError, SeriesNotFoundError, StudyReadError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io import nifti
from sd_fsmis.core.io.dicom import headers as dicom_headers
from sd_fsmis.core.io.dicom import pixels as dicom_pixels
from sd_fsmis.core.io.dicom import series as dicom_series
from sd_fsmis.core.io.dicom.series import DicomSeries
from sd_fsmis.core.io.imagefile import check_readable_file, is_nifti, itk_reason
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter
from sd_fsmis.core.quiet import quiet_libraries

COLOUR_WARNING = "colour image: converted to grey values (luminance)"

#: Image formats (SimpleITK's reader names) whose files place the image in patient space; pictures
#: (PNG, JPEG, BMP, TIFF, ...) do not.
ORIENTED_FORMATS = ("nrrd", "meta", "nifti", "gipl", "vtk", "mrc")


def dicom_uid(info: SeriesInfo) -> str:
    return info.source.series_instance_uid if isinstance(info.source, DicomSeries) else ""


#: Series listed in a one-line error message before "...".
MAX_SERIES_IN_MESSAGE = 12


@dataclass(frozen=True)
class NiftiSource:
    path: str
    header: nifti.NiftiHeader


@dataclass(frozen=True)
class ImageFileSource:
    path: str
    io_name: str


@dataclass
class SeriesInfo:
    """One series (one volume to load) found under a path: identity, geometry and load warnings.

    ``size``, ``spacing``, ``origin`` and ``direction`` follow :class:`Geometry` (ITK order, mm, LPS) and are
    those of the volume :func:`load_series` returns. ``error`` is empty, or says why it cannot be loaded.
    """

    uid: str
    description: str
    modality: str
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    n_files: int
    warnings: list[str]
    path: str
    format: str  # "dicom", "dicomdir", "nifti", or the SimpleITK reader for other files ("nrrd", ...)
    series_number: int | None = None
    study_description: str = ""
    n_volumes: int = 1  # > 1: a 4-D image, of which only the first volume can be loaded
    oriented: bool = True  # False: no patient orientation in the file (the direction is a stand-in)
    error: str = ""
    files: tuple[str, ...] = field(default=(), repr=False)
    source: object = field(default=None, repr=False, compare=False)  # how to read it (internal)

    @property
    def geometry(self) -> Geometry:
        return Geometry(size=self.size, spacing=self.spacing, origin=self.origin, direction=self.direction)

    @property
    def label(self) -> str:
        """A one-line name for menus and messages: uid, description, modality and size."""
        what = ", ".join(v for v in (self.modality, "x".join(str(s) for s in self.size)) if v)
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid}{desc} ({what})"

    def to_dict(self) -> dict:
        """A JSON-able dict (without the file list)."""
        return {
            "uid": self.uid,
            "description": self.description,
            "modality": self.modality,
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "n_files": self.n_files,
            "n_volumes": self.n_volumes,
            "oriented": self.oriented,
            "series_number": self.series_number,
            "study_description": self.study_description,
            "warnings": list(self.warnings),
            "error": self.error,
            "path": self.path,
            "format": self.format,
        }


def list_series(
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[SeriesInfo]:
    """Every series under ``path``, without reading pixels (a job: reports progress, can be cancelled).

    Raises :class:`StudyReadError` when the path is missing or unreadable, when a single file is not a
    usable image, or when a folder or DICOMDIR holds no image at all. In a folder, a series that cannot be
    loaded is listed with its ``error`` so that the others stay usable.
    """
    p = Path(path)
    with quiet_libraries(), study_errors(p):
        check_path(p)
        if p.is_dir():
            return list_folder(p, progress, cancel)
        if is_nifti(p):
            return [_nifti_info(p, uid=p.name, root=p)]
        from sd_fsmis.core.io.dicom.dicomdir import is_dicomdir

        if is_dicomdir(p):
            return _list_dicomdir(p, progress, cancel)
        return [_single_file_info(p)]


def choose_series(
    series: list[SeriesInfo], series_uid: str | None, path: str | os.PathLike[str]
) -> SeriesInfo:
    """The series with ``series_uid`` (or the only one); a :class:`UserError` naming the choices otherwise."""
    if series_uid is None:
        if len(series) == 1:
            return series[0]
        raise MultipleSeriesError(
            f"{path} holds {len(series)} series; choose one by its uid: {_labels(series)}", series
        )
    for s in series:
        if s.uid == series_uid:
            return s
    parts = [s for s in series if s.uid.startswith(series_uid + ".") and dicom_uid(s) == series_uid]
    if len(parts) == 1:
        return parts[0]
    if parts:
        raise MultipleSeriesError(
            f"series {series_uid} of {path} was split into {len(parts)} volumes; "
            f"choose one: {_labels(parts)}",
            parts,
        )
    raise SeriesNotFoundError(f"{path} holds no series {series_uid}; it holds: {_labels(series)}")


def check_path(p: Path) -> None:
    if not p.exists():
        raise StudyReadError(f"{p}: no such file or folder")
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise StudyReadError(f"{p}: permission denied")
    else:
        check_readable_file(p)


@contextlib.contextmanager
def study_errors(path: Path) -> Iterator[None]:
    """Turn what the libraries raise on unreadable input (OSError, ITK's RuntimeError) into StudyReadError."""
    try:
        yield
    except StudyReadError:
        raise
    except PermissionError as exc:
        raise StudyReadError(f"{exc.filename or path}: permission denied") from exc
    except OSError as exc:
        raise StudyReadError(f"{exc.filename or path}: cannot be read ({exc.strerror or exc})") from exc
    except RuntimeError as exc:
        if "itk" not in str(exc).lower():
            raise
        raise StudyReadError(f"{path}: cannot be read ({itk_reason(exc)})") from exc


def list_folder(
    root: Path,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    scan: dicom_series.FolderScan | None = None,
) -> list[SeriesInfo]:
    scan = scan or dicom_series.find_series_files(root, cancel)
    total = sum(len(g) for g in scan.dicom_groups) + len(scan.unscanned_dicom)
    reporter = ProgressReporter(total, progress, cancel)
    by_uid: dict[str, list[list[dicom_headers.SliceHeader]]] = defaultdict(list)
    found = dicom_headers.HeaderScan()
    for group in scan.dicom_groups:
        headers = dicom_headers.read_headers(group, reporter)
        found.non_images += headers.non_images
        found.unreadable += headers.unreadable
        per_uid: dict[str, list[dicom_headers.SliceHeader]] = defaultdict(list)
        for h in headers.images:
            per_uid[h.series_uid].append(h)
        for uid, members in per_uid.items():
            by_uid[uid].append(members)
    unscanned = _read_unscanned(scan.unscanned_dicom, by_uid, found, reporter)
    left_out = _sort_out_skipped(scan.skipped_dicom, by_uid, found)
    for key, paths in unscanned.items():
        left_out[key].extend(paths)
    infos: list[SeriesInfo] = []
    for uid, groups in by_uid.items():
        # a series spread over several folders is merged, and then sorted by us rather than by GDCM
        members = [h for g in groups for h in g]
        for series in dicom_series.split_series(members, presorted=len(groups) == 1):
            lost = left_out.get(uid, []) + [
                p for folder in {os.path.dirname(f) for f in series.files} for p in left_out.get(folder, [])
            ]
            if lost:
                names = ", ".join(Path(p).name for p in lost[:3]) + (", ..." if len(lost) > 3 else "")
                series.warnings.append(
                    f"{len(lost)} DICOM file(s) of this series or its folder could not be read "
                    f"(damaged or truncated?) and were left out: {names}"
                )
            infos.append(_dicom_info(series, root, "dicom"))
    for f in scan.nifti_files:
        uid = Path(f).relative_to(root).as_posix()
        try:
            infos.append(_nifti_info(Path(f), uid=uid, root=root))
        except StudyReadError as exc:
            infos.append(_broken_info(uid, root, "nifti", str(exc)))
    if not infos:
        n_damaged = sum(len(v) for v in left_out.values())
        raise StudyReadError(f"{root}: {_nothing_found(scan, found, n_damaged)}")
    return infos


def _read_unscanned(
    files: list[str],
    by_uid: dict[str, list[list[dicom_headers.SliceHeader]]],
    found: dicom_headers.HeaderScan,
    reporter: ProgressReporter,
) -> dict[str, list[str]]:
    """Read the files of folders GDCM could not scan, one by one (pydicom); add their images to
    ``by_uid`` (each on its own, so that every series is sorted by position). Returns the damaged files
    (unreadable, or an image header that breaks off) by series uid, or by folder where it is unknown."""
    left_out: dict[str, list[str]] = defaultdict(list)
    if not files:
        return left_out
    headers = dicom_headers.read_headers(files, reporter)
    found.unreadable += headers.unreadable
    for path, _ in headers.unreadable:
        left_out[os.path.dirname(path)].append(path)
    for h in headers.non_images:
        if dicom_headers.is_image_sop_class(h.sop_class_uid) or not h.sop_class_uid:
            left_out[h.series_uid or os.path.dirname(h.path)].append(h.path)
        else:
            found.non_images.append(h)
    for h in headers.images:
        by_uid[h.series_uid].append([h])
    return left_out


def _sort_out_skipped(
    skipped_files: list[str],
    by_uid: dict[str, list[list[dicom_headers.SliceHeader]]],
    found: dicom_headers.HeaderScan,
) -> dict[str, list[str]]:
    """Look at the DICOM files GDCM put in no series: non-images, or images it cannot parse.

    An image whose series GDCM did read is left out of it (with a warning); a series GDCM cannot parse
    at all is added to ``by_uid`` (pydicom may decode it). Returns the left-out files by series uid, and by
    folder for those too damaged to tell their series.
    """
    skipped = dicom_headers.read_headers(skipped_files)
    found.unreadable += skipped.unreadable
    left_out: dict[str, list[str]] = defaultdict(list)
    for path, _ in skipped.unreadable:
        left_out[os.path.dirname(path)].append(path)
    for h in skipped.non_images:
        if dicom_headers.is_image_sop_class(h.sop_class_uid):  # an image whose header breaks off
            left_out[h.series_uid].append(h.path)
        else:
            found.non_images.append(h)
    for h in skipped.images:
        if h.series_uid in by_uid:
            left_out[h.series_uid].append(h.path)
        else:
            by_uid[h.series_uid].append([h])
    return left_out


def _nothing_found(scan: dicom_series.FolderScan, found: dicom_headers.HeaderScan, n_damaged: int) -> str:
    what = f"no DICOM or NIfTI images found ({scan.n_files} files in {scan.n_folders} folders"
    if found.non_images:
        kinds = sorted({dicom_headers.sop_class_name(h.sop_class_uid) for h in found.non_images})
        what += f"; {len(found.non_images)} DICOM objects that are not images: {', '.join(kinds[:4])}"
    if n_damaged:
        what += f"; {n_damaged} damaged DICOM images"
    elif found.unreadable:
        what += f"; {len(found.unreadable)} unreadable DICOM files, e.g. {found.unreadable[0][1]}"
    if scan.unreadable_folders:
        what += f"; {len(scan.unreadable_folders)} folders could not be read"
    return what + ")"


def _list_dicomdir(
    p: Path, progress: ProgressCallback | None, cancel: CancelToken | None
) -> list[SeriesInfo]:
    from sd_fsmis.core.io.dicom.dicomdir import read_dicomdir

    index = read_dicomdir(p)
    reporter = ProgressReporter(sum(len(g) for g in index.groups.values()), progress, cancel)
    infos: list[SeriesInfo] = []
    non_images: list[dicom_headers.SliceHeader] = []
    for record_uid, files in index.groups.items():
        headers = dicom_headers.read_headers(files, reporter)
        non_images += headers.non_images
        per_uid: dict[str, list[dicom_headers.SliceHeader]] = defaultdict(list)
        for h in headers.images:
            per_uid[h.series_uid].append(h)
        for members in per_uid.values():
            for series in dicom_series.split_series(members, presorted=False):
                info = _dicom_info(series, p, "dicomdir")
                missing = len(index.missing.get(record_uid, []))
                if missing:
                    info.warnings.append(f"{missing} file(s) the DICOMDIR lists for this series are missing")
                if headers.unreadable:
                    info.warnings.append(
                        f"{len(headers.unreadable)} file(s) of this series could not be read"
                    )
                infos.append(info)
    if not infos:
        n_missing = sum(len(v) for v in index.missing.values())
        detail = f"{sum(len(g) for g in index.groups.values())} image records"
        if n_missing:
            detail += f", {n_missing} of the files they name are missing"
        if non_images:
            detail += f", {len(non_images)} files without pixel data"
        raise StudyReadError(f"{p}: the DICOMDIR lists no readable images ({detail})")
    return infos


def _single_file_info(p: Path) -> SeriesInfo:
    """A single DICOM file, or another image format SimpleITK reads; DICOM without Part 10 header too."""
    if dicom_headers.has_dicm_prefix(p):
        header = dicom_headers.read_slice_header(p)
        return _single_dicom_info(p, header)
    io_name = sitk.ImageFileReader.GetImageIOFromFileName(str(p))  # "" when no reader knows the file
    if io_name and io_name != "GDCMImageIO":
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.SetImageIO(io_name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise StudyReadError(f"{p}: cannot be read as an image ({itk_reason(exc)})") from exc
        return _image_file_info(p, reader, io_name)
    # DICOM without the 128-byte preamble (old ACR-NEMA style exports): pydicom can still parse it
    try:
        header = dicom_headers.read_slice_header(p, force=True)
    except StudyReadError:
        header = None
    if header is None or not (header.sop_class_uid or header.is_image):
        raise StudyReadError(f"{p}: not a DICOM, NIfTI or other image file this application can read")
    return _single_dicom_info(p, header)


def _single_dicom_info(p: Path, header: dicom_headers.SliceHeader) -> SeriesInfo:
    if not header.is_image and dicom_headers.is_image_sop_class(header.sop_class_uid):
        raise StudyReadError(f"{p}: a damaged DICOM image (its header lacks the image size; truncated?)")
    if not header.is_image:
        raise StudyReadError(
            f"{p}: a DICOM {dicom_headers.sop_class_name(header.sop_class_uid)} object, not an image"
        )
    if not header.series_uid:
        header.series_uid = dicom_headers.header_value(header.dataset, "SOPInstanceUID", str, "") or p.name
    series = dicom_series.split_series([header], presorted=True)[0]
    dicom_pixels.check_pixel_data_sizes(series)
    return _dicom_info(series, p, "dicom")


def _dicom_info(series: DicomSeries, root: Path, fmt: str) -> SeriesInfo:
    ds = series.first.dataset
    get = dicom_headers.header_value
    if not series.error:
        try:
            dicom_pixels.check_pixel_data_sizes(series)
        except StudyReadError as exc:
            series.error = str(exc)
    size, spacing, origin, direction = dicom_series.image_information(series)
    warnings = list(series.warnings)
    if series.first.is_colour:
        warnings.append(COLOUR_WARNING)
    description = get(ds, "SeriesDescription", lambda v: str(v).strip(), "")
    if series.part:
        description = f"{description} [{series.part}]" if description else f"[{series.part}]"
    return SeriesInfo(
        uid=series.uid,
        description=description,
        modality=get(ds, "Modality", lambda v: str(v).strip(), ""),
        size=size,
        spacing=spacing,
        origin=origin,
        direction=direction,
        n_files=len(series.slices),
        warnings=warnings,
        path=str(root),
        format=fmt,
        series_number=get(ds, "SeriesNumber", int),
        study_description=get(ds, "StudyDescription", lambda v: str(v).strip(), ""),
        oriented=series.first.orientation is not None,
        error=series.error,
        files=tuple(series.files),
        source=series,
    )


def _nifti_info(p: Path, uid: str, root: Path) -> SeriesInfo:
    header = nifti.read_header(p)
    nifti.check_complete(p, header)
    reader = nifti.image_information(p, header)
    size, spacing, origin, direction = _reader_geometry(reader)
    warnings: list[str] = [w for w in (nifti.name_warning(p), nifti.transform_warning(header)) if w]
    if reader.GetDimension() == 2:  # ITK's 2-D geometry keeps neither the slice's place nor its rotation
        origin, spacing, direction = nifti.header_geometry(header)
    error = ""
    if header.ndim > 4:
        error = f"a {header.ndim}-D image (sizes {list(header.shape)}); only 3-D images open"
    elif header.n_volumes > 1:
        warnings.append(f"4-D image with {header.n_volumes} volumes: only its first volume can be opened")
    components = reader.GetNumberOfComponents()
    if header.is_colour:
        warnings.append(COLOUR_WARNING)
    elif components > 1:
        error = f"{components} values per voxel (a vector image); only scalar images open"
    if error and root == p:
        raise StudyReadError(f"{p}: {error}")
    return SeriesInfo(
        uid=uid,
        description=p.name,
        modality="",
        size=size,
        spacing=spacing,
        origin=origin,
        direction=direction,
        n_files=1,
        warnings=warnings,
        path=str(p),
        format="nifti",
        n_volumes=header.n_volumes,
        oriented=nifti.transform_in_use(header) != "pixdim",
        error=error,
        files=(str(p),),
        source=NiftiSource(str(p), header),
    )


def _image_file_info(p: Path, reader: sitk.ImageFileReader, io_name: str) -> SeriesInfo:
    if reader.GetDimension() > 3:
        raise StudyReadError(f"{p}: a {reader.GetDimension()}-D image; only 3-D images open")
    size, spacing, origin, direction = _reader_geometry(reader)
    warnings = [COLOUR_WARNING] if reader.GetNumberOfComponents() in (3, 4) else []
    if reader.GetNumberOfComponents() not in (1, 3, 4):
        raise StudyReadError(
            f"{p}: {reader.GetNumberOfComponents()} values per voxel; only scalar images open"
        )
    fmt = io_name.removesuffix("ImageIO").lower() or "image"
    return SeriesInfo(
        oriented=fmt in ORIENTED_FORMATS,
        uid=p.name,
        description=p.name,
        modality="",
        size=size,
        spacing=spacing,
        origin=origin,
        direction=direction,
        n_files=1,
        warnings=warnings,
        path=str(p),
        format=fmt,
        files=(str(p),),
        source=ImageFileSource(str(p), io_name),
    )


def _broken_info(uid: str, root: Path, fmt: str, error: str) -> SeriesInfo:
    return SeriesInfo(
        uid=uid,
        description=Path(uid).name,
        modality="",
        size=(0, 0, 0),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        n_files=1,
        warnings=[],
        path=str(root / uid),
        format=fmt,
        error=error,
    )


def _reader_geometry(
    reader: sitk.ImageFileReader,
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    """The 3-D geometry of an image file from its header (2-D padded with a slice, 4-D cut to its first 3)."""
    dim = reader.GetDimension()
    size = [int(v) for v in reader.GetSize()][:3] + [1] * max(0, 3 - dim)
    spacing = [float(v) for v in reader.GetSpacing()][:3] + [1.0] * max(0, 3 - dim)
    origin = [float(v) for v in reader.GetOrigin()][:3] + [0.0] * max(0, 3 - dim)
    d = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)
    direction = np.eye(3)
    k = min(dim, 3)
    direction[:k, :k] = d[:k, :k]
    return tuple(size), tuple(spacing), tuple(origin), tuple(float(v) for v in direction.ravel())


def _labels(series: list[SeriesInfo]) -> str:
    shown = "; ".join(s.label for s in series[:MAX_SERIES_IN_MESSAGE])
    return shown + (
        f"; ... ({len(series) - MAX_SERIES_IN_MESSAGE} more)" if len(series) > MAX_SERIES_IN_MESSAGE else ""
    )
