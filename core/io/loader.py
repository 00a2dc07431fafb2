"""Reading one series of a path as a :class:`Volume` (what a path holds: :mod:`sd_fsmis.core.io.listing`).

A path may be a DICOM folder (searched recursively), a DICOMDIR, a single DICOM file (2-D or multi-frame),
a NIfTI file (.nii, .nii.gz, NIfTI-1 or -2), or another single image SimpleITK reads (NRRD, MetaImage).
SimpleITK/GDCM reads pixels and geometry, pydicom headers: see :mod:`~sd_fsmis.core.io.dicom.series` (finding
and checking series), :mod:`~sd_fsmis.core.io.dicom.headers`, :mod:`~sd_fsmis.core.io.dicom.pixels`,
:mod:`~sd_fsmis.core.io.dicom.dicomdir` and :mod:`~sd_fsmis.core.io.nifti`.

Rules the loader keeps:

- Pixel values are in modality units (CT in HU): GDCM applies the rescale slope/intercept, exactly once.
- Never a wrong volume: images of different size or orientation in one series become separate series
  (uid ``<uid>.1``, ``<uid>.2``, ...); slices that share positions with nothing to tell them apart are
  refused. A series with missing slices, non-uniform spacing or a gantry tilt is resampled to a regular
  grid on which every acquired slice lies at its true position (:mod:`~sd_fsmis.core.io.dicom.regularize`,
  as 3D Slicer does), with a warning saying so; ``regularize=False`` keeps the slices as stacked.
- Colour images (RGB, YBR, palette: secondary captures, ultrasound) are converted to grey values (ITU-R
  BT.601 luminance, float32) with a warning: the segmentation works on one channel.
- A 4-D NIfTI is refused (unless its first volume is asked for); 2-D images become 1-slice volumes.
- Every problem with the input is a :class:`StudyReadError` (or another :class:`UserError`) with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.errors import StudyReadError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io import nifti
from sd_fsmis.core.io.dicom import headers as dicom_headers
from sd_fsmis.core.io.dicom import pixels as dicom_pixels
from sd_fsmis.core.io.dicom import series as dicom_series
from sd_fsmis.core.io.dicom.regularize import regularize as regularize_series
from sd_fsmis.core.io.dicom.series import DicomSeries
from sd_fsmis.core.io.imagefile import read_image
from sd_fsmis.core.io.listing import (
    COLOUR_WARNING,
    ImageFileSource,
    NiftiSource,
    SeriesInfo,
    check_path,
    choose_series,
    list_folder,
    list_series,
    study_errors,
)
from sd_fsmis.core.jobs import CancelToken, ProgressCallback, ProgressReporter
from sd_fsmis.core.quiet import quiet_libraries
from sd_fsmis.core.volume import Volume, VolumeMetadata

#: ITU-R BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


# ------------------------------------------------------------------------------------------ public API


def load_volume(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    first_volume_of_4d: bool = False,
    regularize: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Volume:
    """Load one series of ``path`` as a :class:`Volume` (pixels in modality units, geometry, metadata).

    Without ``series_uid`` the path must hold exactly one series, else :class:`MultipleSeriesError` lists
    them. The uid of a series that was split may also be given: if it has one part, that part loads.
    A 4-D NIfTI loads only with ``first_volume_of_4d=True`` (its first volume). An irregular DICOM series
    is resampled to a regular grid unless ``regularize`` is false.
    """
    p = Path(path)
    if series_uid is None and p.is_dir():
        with quiet_libraries(), study_errors(p):
            check_path(p)
            scan = dicom_series.find_series_files(p, cancel)
            volume = _load_plain_series_folder(p, scan, progress, cancel, regularize)
            if volume is not None:
                return volume
            series = list_folder(p, progress, cancel, scan)
    else:
        series = list_series(path, progress=progress, cancel=cancel)
    return load_series(
        choose_series(series, series_uid, path),
        first_volume_of_4d=first_volume_of_4d,
        regularize=regularize,
        progress=progress,
        cancel=cancel,
    )


def _load_plain_series_folder(
    root: Path,
    scan: dicom_series.FolderScan,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    regularize: bool = True,
) -> Volume | None:
    """The quick way for the commonest case: a folder that holds one plain DICOM series.

    GDCM parses every header while it reads the pixels anyway; with ``MetaDataDictionaryArrayUpdate`` the
    slice headers come from that pass instead of a second one with pydicom (only the first file's header
    is read with pydicom, for the metadata). The same checks then run on them as in :func:`list_series`;
    anything off the plain path (a second series, other files, colour, multi-frame, a split, a re-sorted
    order, a rescale that needs float) returns None, and the caller takes the careful path, so that the
    volume, its geometry and its warnings are the same either way.
    """
    if len(scan.dicom_groups) != 1 or scan.nifti_files or scan.skipped_dicom or scan.unscanned_dicom:
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
    warnings = list(series.warnings)
    image = _regularized(image, series, metadata, warnings, regularize)
    return _to_volume(image, metadata, warnings, root)


def load_series(
    info: SeriesInfo,
    *,
    first_volume_of_4d: bool = False,
    regularize: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Volume:
    """Load a series that :func:`list_series` found (without searching the path again)."""
    p = Path(info.path)
    with quiet_libraries(), study_errors(p):
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
            image = _regularized(image, source, metadata, warnings, regularize)
        elif isinstance(source, NiftiSource):
            image = nifti.read_image(source.path, source.header, first_volume_of_4d=first_volume_of_4d)
            if image.GetDimension() == 2:  # one slice, placed and turned as its header says
                image = sitk.JoinSeries(image)
                origin, spacing, direction = nifti.header_geometry(source.header)
                image.SetOrigin(origin)
                image.SetSpacing(spacing)
                image.SetDirection(direction)
            # ITK has already turned NaN and infinite voxels into 0: count them in the file
            non_finite = nifti.non_finite_warning(nifti.count_non_finite(source.path, source.header))
            if non_finite:
                warnings.append(non_finite)
            if source.header.n_volumes > 1:
                warnings = [w for w in warnings if "4-D image" not in w]
                warnings.append(f"4-D image with {source.header.n_volumes} volumes: loaded its first volume")
            metadata = VolumeMetadata(
                series_description=info.description, source_format="nifti", oriented=info.oriented
            )
        elif isinstance(source, ImageFileSource):
            image = read_image(source.path)
            metadata = VolumeMetadata(
                series_description=info.description, source_format=info.format, oriented=info.oriented
            )
        else:
            raise TypeError("a SeriesInfo from list_series is needed")
        metadata.source_path = info.path
        if cancel is not None:
            cancel.raise_if_cancelled()
        return _to_volume(image, metadata, warnings, p)


# ------------------------------------------------------------------------------------------ loading


def _regularized(
    image: sitk.Image, series: DicomSeries, metadata: VolumeMetadata, warnings: list[str], regularize: bool
) -> sitk.Image:
    """The series on its regular grid when its slices are irregular (see ``regularize``), else as read."""
    plan = series.regularization
    if plan is None or image.GetDimension() != 3 or image.GetSize()[2] != len(plan.planes):
        return image
    if not regularize:
        warnings[:] = [w for w in warnings if w != plan.note]
        warnings.append(
            "not resampled to a regular grid (regularize=False): the slices are stacked "
            f"{image.GetSpacing()[2]:.4g} mm apart, so positions away from the first slice are approximate"
        )
        return image
    metadata.regularization = plan
    return regularize_series(image, plan)


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
        array = _array_sharing(image)
        _zero_non_finite(array, warnings)
        return Volume(
            array=array,
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


def _zero_non_finite(array: np.ndarray, warnings: list[str]) -> None:
    """Set NaN and infinite voxels of float data to 0 (in place), saying how many there were."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    counts = {"NaN": int(np.isnan(array).sum()), "+inf": int(np.isposinf(array).sum())}
    counts["-inf"] = int(np.isneginf(array).sum())
    array[bad] = 0
    warnings.append(nifti.non_finite_warning({k: v for k, v in counts.items() if v}))


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
        oriented=series.first.orientation is not None,
    )
