"""Study I/O: what a path holds (:func:`list_series`) and reading one series as a :class:`Volume`.

A path may be a DICOM folder (searched recursively), a DICOMDIR, a single DICOM file (2-D or multi-frame),
a NIfTI file (.nii, .nii.gz, NIfTI-1 or -2), or another single image SimpleITK reads (NRRD, MetaImage).
SimpleITK/GDCM reads pixels and geometry, pydicom headers: see :mod:`~sd_fsmis.core.dicom_series` (finding
and checking series), :mod:`~sd_fsmis.core.dicom_headers`, :mod:`~sd_fsmis.core.dicom_pixels`,
:mod:`~sd_fsmis.core.dicomdir` and :mod:`~sd_fsmis.core.nifti`.

Rules the loader keeps:

- Pixel values are in modality units (CT in HU): GDCM applies the rescale slope/intercept, exactly once.
- Never a wrong volume: images of different size or orientation in one series become separate series
  (uid ``<uid>.1``, ``<uid>.2``, ...); slices that share positions with nothing to tell them apart are
  refused. Missing slices, non-uniform spacing and shear are loaded with a warning.
- Colour images (RGB, YBR, palette: secondary captures, ultrasound) are converted to grey values (ITU-R
  BT.601 luminance, float32) with a warning: the segmentation works on one channel.
- A 4-D NIfTI is refused (unless its first volume is asked for); 2-D images become 1-slice volumes.
- Every problem with the input is a :class:`StudyReadError` (or another :class:`UserError`) with one line.
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

from sd_fsmis.core import dicom_headers, dicom_pixels, dicom_series, nifti
from sd_fsmis.core.dicom_series import DicomSeries
from sd_fsmis.core.errors import MultipleSeriesError, SeriesNotFoundError, StudyReadError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.imagefile import check_readable_file, is_nifti, itk_reason, read_image
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter
from sd_fsmis.core.quiet import quiet_libraries
from sd_fsmis.core.volume import Volume, VolumeMetadata

#: ITU-R BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
COLOUR_WARNING = "colour image: converted to grey values (luminance)"
#: Series listed in a one-line error message before "...".
MAX_SERIES_IN_MESSAGE = 12


@dataclass(frozen=True)
class _NiftiSource:
    path: str
    header: nifti.NiftiHeader


@dataclass(frozen=True)
class _ImageFileSource:
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
            "series_number": self.series_number,
            "study_description": self.study_description,
            "warnings": list(self.warnings),
            "error": self.error,
            "path": self.path,
            "format": self.format,
        }


# ------------------------------------------------------------------------------------------ public API


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
    with quiet_libraries(), _as_study_errors(p):
        _check_path(p)
        if p.is_dir():
            return _list_folder(p, progress, cancel)
        if is_nifti(p):
            return [_nifti_info(p, uid=p.name, root=p)]
        from sd_fsmis.core.dicomdir import is_dicomdir

        if is_dicomdir(p):
            return _list_dicomdir(p, progress, cancel)
        return [_single_file_info(p)]


def load_volume(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    first_volume_of_4d: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Volume:
    """Load one series of ``path`` as a :class:`Volume` (pixels in modality units, geometry, metadata).

    Without ``series_uid`` the path must hold exactly one series, else :class:`MultipleSeriesError` lists
    them. The uid of a series that was split may also be given: if it has one part, that part loads.
    A 4-D NIfTI loads only with ``first_volume_of_4d=True`` (its first volume).
    """
    p = Path(path)
    if series_uid is None and p.is_dir():
        with quiet_libraries(), _as_study_errors(p):
            _check_path(p)
            scan = dicom_series.find_series_files(p, cancel)
            volume = _load_plain_series_folder(p, scan, progress, cancel)
            if volume is not None:
                return volume
            series = _list_folder(p, progress, cancel, scan)
    else:
        series = list_series(path, progress=progress, cancel=cancel)
    return load_series(
        choose_series(series, series_uid, path),
        first_volume_of_4d=first_volume_of_4d,
        progress=progress,
        cancel=cancel,
    )


def _load_plain_series_folder(
    root: Path, scan: dicom_series.FolderScan, progress: ProgressCallback | None, cancel: CancelToken | None
) -> Volume | None:
    """The quick way for the commonest case: a folder that holds one plain DICOM series.

    GDCM parses every header while it reads the pixels anyway; with ``MetaDataDictionaryArrayUpdate`` the
    slice headers come from that pass instead of a second one with pydicom (only the first file's header
    is read with pydicom, for the metadata). The same checks then run on them as in :func:`list_series`;
    anything off the plain path (a second series, other files, colour, multi-frame, a split, a re-sorted
    order, a rescale that needs float) returns None, and the caller takes the careful path, so that the
    volume, its geometry and its warnings are the same either way.
    """
    if len(scan.dicom_groups) != 1 or scan.nifti_files or scan.skipped_dicom:
        return None
    files = scan.dicom_groups[0]
    try:
        first = dicom_headers.read_slice_header(files[0], force=True)
    except StudyReadError:
        return None
    if len(files) < 2 or not first.is_image or first.frames > 1 or first.is_colour:
        return None
    reporter = None
    if progress is not None or cancel is not None:
        reporter = ProgressReporter(len(files), progress, cancel)
        reporter.report("reading pixels")
    read = dicom_pixels.read_series_and_headers(files, reporter, cancel)
    if read is None:
        return None
    image, headers = read
    headers[0] = first
    parts = dicom_series.split_series(headers, presorted=True)
    series = parts[0]
    if len(parts) != 1 or series.error or series.files != files:
        return None
    if series.output_pixel_type() != sitk.sitkUnknown or image.GetNumberOfComponentsPerPixel() != 1:
        return None
    dicom_pixels.set_z_spacing(image, series)
    metadata = _dicom_metadata(series, "dicom")
    metadata.source_path = str(root)
    return _to_volume(image, metadata, list(series.warnings), root)


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
    parts = [s for s in series if s.uid.startswith(series_uid + ".") and _dicom_uid(s) == series_uid]
    if len(parts) == 1:
        return parts[0]
    if parts:
        raise MultipleSeriesError(
            f"series {series_uid} of {path} was split into {len(parts)} volumes; "
            f"choose one: {_labels(parts)}",
            parts,
        )
    raise SeriesNotFoundError(f"{path} holds no series {series_uid}; it holds: {_labels(series)}")


def load_series(
    info: SeriesInfo,
    *,
    first_volume_of_4d: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Volume:
    """Load a series that :func:`list_series` found (without searching the path again)."""
    p = Path(info.path)
    with quiet_libraries(), _as_study_errors(p):
        if info.error:
            raise StudyReadError(f"{info.path}: series {info.uid} cannot be loaded: {info.error}")
        source = info.source
        warnings = list(info.warnings)
        if isinstance(source, DicomSeries):
            reporter = None
            if progress is not None or cancel is not None:
                reporter = ProgressReporter(len(source.slices), progress, cancel)
                reporter.report("reading pixels")
            image, extra = dicom_pixels.read_pixels(source, reporter, cancel)
            warnings.extend(extra)
            metadata = _dicom_metadata(source, info.format)
        elif isinstance(source, _NiftiSource):
            image = nifti.read_image(source.path, source.header, first_volume_of_4d=first_volume_of_4d)
            if source.header.n_volumes > 1:
                warnings = [w for w in warnings if "4-D image" not in w]
                warnings.append(f"4-D image with {source.header.n_volumes} volumes: loaded its first volume")
            metadata = VolumeMetadata(series_description=info.description, source_format="nifti")
        elif isinstance(source, _ImageFileSource):
            image = read_image(source.path)
            metadata = VolumeMetadata(series_description=info.description, source_format=info.format)
        else:
            raise TypeError("a SeriesInfo from list_series is needed")
        metadata.source_path = info.path
        if cancel is not None:
            cancel.raise_if_cancelled()
        return _to_volume(image, metadata, warnings, p)


# ------------------------------------------------------------------------------------------ listing


def _check_path(p: Path) -> None:
    if not p.exists():
        raise StudyReadError(f"{p}: no such file or folder")
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise StudyReadError(f"{p}: permission denied")
    else:
        check_readable_file(p)


@contextlib.contextmanager
def _as_study_errors(path: Path) -> Iterator[None]:
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


def _list_folder(
    root: Path,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    scan: dicom_series.FolderScan | None = None,
) -> list[SeriesInfo]:
    scan = scan or dicom_series.find_series_files(root, cancel)
    reporter = ProgressReporter(sum(len(g) for g in scan.dicom_groups), progress, cancel)
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
    left_out = _sort_out_skipped(scan.skipped_dicom, by_uid, found)
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
    from sd_fsmis.core.dicomdir import read_dicomdir

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
        error=series.error,
        files=tuple(series.files),
        source=series,
    )


def _nifti_info(p: Path, uid: str, root: Path) -> SeriesInfo:
    header = nifti.read_header(p)
    nifti.check_complete(p, header)
    reader = nifti.image_information(p, header)
    size, spacing, origin, direction = _reader_geometry(reader)
    warnings: list[str] = []
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
        error=error,
        files=(str(p),),
        source=_NiftiSource(str(p), header),
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
        source=_ImageFileSource(str(p), io_name),
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


# ------------------------------------------------------------------------------------------ loading


def _to_volume(image: sitk.Image, metadata: VolumeMetadata, warnings: list[str], p: Path) -> Volume:
    """A 3-D scalar volume: 2-D images get one slice, colour becomes luminance, float64 becomes float32."""
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise StudyReadError(f"{p}: a {image.GetDimension()}-D image; only 3-D images open")
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        if image.GetPixelID() == sitk.sitkFloat64:
            image = sitk.Cast(image, sitk.sitkFloat32)
        return Volume(
            array=_array_sharing(image),
            geometry=Geometry.from_image(image),
            metadata=metadata,
            warnings=warnings,
        )
    if components not in (3, 4):
        raise StudyReadError(f"{p}: {components} values per voxel; only scalar images open")
    rgb = sitk.GetArrayViewFromImage(image)[..., :3]  # [z, y, x, 3]
    luminance = np.tensordot(rgb.astype(np.float32, copy=False), np.asarray(LUMA_WEIGHTS, np.float32), axes=1)
    if COLOUR_WARNING not in warnings:
        warnings.append(COLOUR_WARNING)
    metadata.window_center = metadata.window_width = None
    return Volume(
        array=luminance.astype(np.float32),
        geometry=Geometry.from_image(image),
        metadata=metadata,
        warnings=warnings,
    )


class _PixelBuffer:
    """Keeps a SimpleITK image alive for as long as a numpy array uses its pixel buffer."""

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        interface = dict(sitk.GetArrayViewFromImage(image).__array_interface__)
        # SimpleITK hands out a read-only view; the buffer is this image's own (GetArrayViewFromImage made
        # it unique), so the volume may write to it like to any array it owns
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def _array_sharing(image: sitk.Image) -> np.ndarray:
    """The image's pixels as a numpy array ``[z, y, x]`` on the image's own buffer, without a copy.

    ``sitk.GetArrayFromImage`` copies the whole volume (for a 300-slice CT as long as GDCM takes to read
    it, and twice the memory at the peak); the view ``GetArrayViewFromImage`` avoids the copy but must not
    outlive the image, which the array's ``base`` (a :class:`_PixelBuffer`) takes care of.
    """
    return np.asarray(_PixelBuffer(image))


def _dicom_metadata(series: DicomSeries, source_format: str) -> VolumeMetadata:
    ds = series.first.dataset
    get = dicom_headers.header_value

    def text(keyword: str) -> str:
        return str(get(ds, keyword, str, "")).strip()

    return VolumeMetadata(
        modality=text("Modality"),
        patient_id=text("PatientID"),
        patient_name=text("PatientName"),
        study_description=text("StudyDescription"),
        series_description=text("SeriesDescription"),
        study_instance_uid=text("StudyInstanceUID"),
        series_instance_uid=series.series_instance_uid,
        frame_of_reference_uid=text("FrameOfReferenceUID"),
        window_center=get(ds, "WindowCenter", dicom_headers.first_float),
        window_width=get(ds, "WindowWidth", dicom_headers.first_float),
        source_format=source_format,
        files=list(series.files),
    )


def _dicom_uid(info: SeriesInfo) -> str:
    return info.source.series_instance_uid if isinstance(info.source, DicomSeries) else ""


def _labels(series: list[SeriesInfo]) -> str:
    shown = "; ".join(s.label for s in series[:MAX_SERIES_IN_MESSAGE])
    return shown + (
        f"; ... ({len(series) - MAX_SERIES_IN_MESSAGE} more)" if len(series) > MAX_SERIES_IN_MESSAGE else ""
    )
