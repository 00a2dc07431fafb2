"""DICOM pixels: GDCM reads them (every compressed transfer syntax, rescale applied exactly once);
pydicom with the pylibjpeg plugins decodes what GDCM cannot.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from sd_fsmis.core.errors import JobCancelled, StudyReadError
from sd_fsmis.core.io.dicom.headers import SliceHeader, one_line, read_dataset
from sd_fsmis.core.io.dicom.series import DicomSeries, header_geometry
from sd_fsmis.core.io.imagefile import itk_reason
from sd_fsmis.core.jobs import CancelToken, ProgressReporter

log = logging.getLogger(__name__)

#: Uncompressed transfer syntaxes, whose pixel data size the header predicts.
NATIVE_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def check_pixel_data_sizes(series: DicomSeries) -> None:
    """Refuse files too short for the uncompressed pixels they announce (a truncation check, no reading).

    The element header before the pixel data takes at least 8 bytes (12 in explicit VR).
    """
    for s in series.slices:
        if s.pixel_data_offset is None:
            raise StudyReadError(f"{s.path}: a DICOM image header without pixel data")
    meta = getattr(series.first.dataset, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in NATIVE_TRANSFER_SYNTAXES:
        return
    for s in series.slices:
        need = s.expected_pixel_bytes()
        if need is None or s.photometric.endswith(("_422", "_420")):  # chroma subsampled: fewer bytes
            continue
        have = s.file_size - s.pixel_data_offset - 8
        if have < need:
            have = max(have, 0)
            raise StudyReadError(f"{s.path}: truncated DICOM file (pixel data: {have} of {need} bytes)")


def read_pixels(
    series: DicomSeries, reporter: ProgressReporter | None = None, cancel: CancelToken | None = None
) -> tuple[sitk.Image, list[str]]:
    """Read a series' pixels in modality units with GDCM; files GDCM cannot decode go through pydicom.

    Returns the image (3-D, possibly with vector pixels for colour) and extra warnings.
    """
    files = series.files
    if len(files) == 1:
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.SetImageIO("GDCMImageIO")
    else:
        reader = _series_reader(files)
    reader.SetOutputPixelType(series.output_pixel_type())
    try:
        image = _execute(reader, len(files), reporter, cancel)
    except RuntimeError as exc:
        gdcm_reason = itk_reason(exc)
        log.info("GDCM cannot read %s (%s); trying pydicom", files[0], gdcm_reason)
        image = _read_with_pydicom(series, gdcm_reason, cancel)
        return image, [f"pixels decoded by pydicom (GDCM could not: {gdcm_reason})"]
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    set_z_spacing(image, series)
    return image, []


def read_series_and_headers(
    files: list[str], reporter: ProgressReporter | None = None, cancel: CancelToken | None = None
) -> tuple[sitk.Image, list[SliceHeader]] | None:
    """Read a series' pixels and, from the same pass, each slice's header as GDCM parsed it.

    This spares the separate pydicom pass over the headers when a folder holds one plain series (see
    :func:`sd_fsmis.core.io.loader.load_volume`). Returns None where GDCM cannot read the files as one
    image (different sizes, damaged files): the caller then takes the careful path.
    """
    reader = _series_reader(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = _execute(reader, len(files), reporter, cancel)
    except RuntimeError:
        return None
    return image, [SliceHeader.from_gdcm(path, reader, i) for i, path in enumerate(files)]


def set_z_spacing(image: sitk.Image, series: DicomSeries) -> None:
    """Give the image the slice step :func:`check_spacing` found (ITK takes the first two slices')."""
    if series.z_spacing is not None and image.GetSize()[2] == len(series.slices) and not series.is_multiframe:
        spacing = list(image.GetSpacing())
        spacing[2] = float(series.z_spacing)
        image.SetSpacing(spacing)


def _series_reader(files: list[str]) -> sitk.ImageSeriesReader:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetImageIO("GDCMImageIO")
    reader.SetSpacingWarningRelThreshold(1e9)  # spacing is checked (and reported) by check_spacing
    return reader


def _execute(
    reader, n_files: int, reporter: ProgressReporter | None, cancel: CancelToken | None
) -> sitk.Image:
    """Run a reader, with progress and cancellation when asked; ITK's errors stay RuntimeError."""
    if reporter is not None or cancel is not None:
        _watch(reader, n_files, reporter, cancel)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        if cancel is not None and cancel.cancelled:
            raise JobCancelled("cancelled by the user") from exc
        raise


def _watch(reader, n_files: int, reporter: ProgressReporter | None, cancel: CancelToken | None) -> None:
    """Report ITK's progress, and abort the read when the job is cancelled (ITK then raises)."""
    done = [0]

    def on_progress() -> None:
        if cancel is not None and cancel.cancelled:
            reader.Abort()
            return
        if reporter is not None:
            now = int(reader.GetProgress() * n_files)
            if now > done[0]:
                reporter.done += now - done[0]
                done[0] = now
                reporter.report("reading pixels")

    reader.AddCommand(sitk.sitkProgressEvent, on_progress)


def _read_with_pydicom(series: DicomSeries, gdcm_reason: str, cancel: CancelToken | None) -> sitk.Image:
    """Decode each file with pydicom and stack the frames, with the geometry the headers give."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    arrays = []
    for s in series.slices:
        if cancel is not None:
            cancel.raise_if_cancelled()
        ds = read_dataset(s.path, header_only=False, force=True)
        _ensure_transfer_syntax(ds)
        try:
            arr = ds.pixel_array
            if s.photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
            elif s.samples_per_pixel == 1:
                arr = apply_modality_lut(arr, ds)
        except Exception as exc:
            raise StudyReadError(
                f"{s.path}: the pixel data cannot be decoded ({one_line(exc)}; GDCM: {gdcm_reason})"
            ) from exc
        arr = np.asarray(arr)
        # [rows, columns(, 3)] or [frames, rows, columns(, 3)] -> [frames, rows, columns(, 3)]
        arrays.append(
            arr.reshape((-1, *arr.shape[-3:])) if s.is_colour else arr.reshape((-1, *arr.shape[-2:]))
        )
    stack = np.concatenate(arrays, axis=0)
    if not series.first.is_colour:
        stack = stack.astype(
            np.float32 if series.output_pixel_type() == sitk.sitkFloat32 else _int_type(stack)
        )
    image = sitk.GetImageFromArray(stack, isVector=series.first.is_colour)
    origin, spacing, direction = header_geometry(series)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _int_type(arr: np.ndarray) -> type:
    """Keep integer data integer (smallest safe type), floats as float32."""
    if np.issubdtype(arr.dtype, np.floating):
        if np.all(np.mod(arr, 1) == 0) and arr.size and arr.min() >= -(2**31) and arr.max() < 2**31:
            return np.int32
        return np.float32
    return arr.dtype.type


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a file without meta information the transfer syntax pydicom read it with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
