"""DICOM headers: read with pydicom (header only, a fixed list of tags), or taken from GDCM's own parse.

A :class:`SliceHeader` holds what one file says that matters for building a volume (size, position,
orientation, rescale, ...). The values are decoded from the raw element bytes: pydicom's own value
conversion costs more than reading the file, and is not needed for numbers and uids.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import UID

from sd_fsmis.core.errors import StudyReadError
from sd_fsmis.core.jobs import ProgressReporter

#: The header elements read from every file (everything up to the pixel data is skipped over otherwise).
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyDescription",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "FrameOfReferenceUID",
    "InstanceNumber",
    "AcquisitionNumber",
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
]

_TAGS = {keyword: pydicom.datadict.tag_for_keyword(keyword) for keyword in HEADER_TAGS}
_TAG_NUMBERS = [pydicom.tag.Tag(t) for t in _TAGS.values()]
_GDCM_KEYS = {keyword: f"{tag >> 16:04x}|{tag & 0xFFFF:04x}" for keyword, tag in _TAGS.items()}

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def sop_class_name(uid: str) -> str:
    """``'RT Plan Storage'`` for an RT plan's SOP class uid; the uid itself when pydicom does not know it."""
    name = UID(uid).name if uid else ""
    return name if name and name != uid else (f"SOP class {uid}" if uid else "unknown object")


def is_image_sop_class(uid: str) -> bool:
    """True for the SOP classes of images (CT Image Storage, Enhanced MR Image Storage, ...)."""
    return "Image Storage" in sop_class_name(uid)


# --------------------------------------------------------------------------------------------- headers


def header_value(
    ds: Dataset | None, keyword: str, convert: Callable[[Any], Any] | None = None, default: Any = None
) -> Any:
    """One header value through pydicom, converted; ``default`` where absent, empty or malformed."""
    if ds is None:
        return default
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        return convert(value) if convert else value
    except Exception:  # malformed values (e.g. IS '1A') raise on access in pydicom
        return default


def _floats(value) -> tuple[float, ...]:
    seq = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return tuple(float(v) for v in seq)


def first_float(value) -> float:
    """The first value of a possibly multi-valued number (Window Center may hold several)."""
    return _floats(value)[0]


class _DatasetFields:
    """One file's header values from a pydicom dataset, decoded from the raw element bytes.

    pydicom's own value conversion (DSfloat objects, validation) costs more than reading the file, and is
    not needed for numbers and uids.
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def text(self, keyword: str) -> str | None:
        """A string-valued element (DS, IS, CS, UI) as text, backslash-separated; None if absent or empty."""
        elem = self.ds.get_item(_TAGS[keyword])
        value = None if elem is None else elem.value
        if value is None:
            return None
        if isinstance(value, bytes):
            text = value.decode("latin-1")
        elif isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        return text.strip(" \x00") or None

    def us(self, keyword: str) -> int | None:
        """An unsigned short (Rows, Bits Allocated, ...), binary in the file in the dataset's byte order."""
        elem = self.ds.get_item(_TAGS[keyword])
        value = None if elem is None else elem.value
        if isinstance(value, bytes):
            if len(value) < 2:
                return None
            little = self.ds.original_encoding[1] is not False
            return int.from_bytes(value[:2], "little" if little else "big")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None


class _GdcmFields:
    """One slice's header values from the dictionary GDCM filled while reading the series' pixels."""

    def __init__(self, reader: sitk.ImageSeriesReader, index: int) -> None:
        self.reader = reader
        self.index = index
        self.keys = set(reader.GetMetaDataKeys(index))

    def text(self, keyword: str) -> str | None:
        key = _GDCM_KEYS[keyword]
        if key not in self.keys:
            return None
        return self.reader.GetMetaData(self.index, key).strip(" \x00") or None

    def us(self, keyword: str) -> int | None:
        text = self.text(keyword)
        return int(text) if text and text.isdigit() else None


def _numbers(fields, keyword: str) -> tuple[float, ...] | None:
    text = fields.text(keyword)
    try:
        return tuple(float(v) for v in text.split("\\")) if text else None
    except ValueError:
        return None


def _number(fields, keyword: str) -> float | None:
    values = _numbers(fields, keyword)
    return values[0] if values else None


def _integer(fields, keyword: str) -> int | None:
    value = _number(fields, keyword)
    return int(value) if value is not None and float(value).is_integer() else None


@dataclass
class SliceHeader:
    """What one DICOM file's header says that matters for building a volume."""

    path: str
    dataset: Dataset | None = field(repr=False)  # the pydicom header (None when GDCM gave the values)
    series_uid: str = ""
    sop_class_uid: str = ""
    rows: int | None = None
    columns: int | None = None
    frames: int = 1
    samples_per_pixel: int = 1
    photometric: str = ""
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None  # 6 cosines: row direction, column direction
    pixel_spacing: tuple[float, float] | None = None  # (between rows, between columns), mm
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    echo_number: int | None = None
    temporal_position: int | None = None
    slope: float = 1.0
    intercept: float = 0.0
    bits_allocated: int | None = None
    bits_stored: int | None = None
    pixel_representation: int | None = None
    pixel_data_offset: int | None = None  # where the Pixel Data element starts in the file
    file_size: int = 0

    @classmethod
    def from_dataset(cls, path: str, ds: Dataset) -> SliceHeader:
        """From a header pydicom read."""
        return cls.from_fields(path, _DatasetFields(ds), ds)

    @classmethod
    def from_gdcm(cls, path: str, reader: sitk.ImageSeriesReader, index: int) -> SliceHeader:
        """From the tags GDCM read with the pixels (``MetaDataDictionaryArrayUpdateOn``); no dataset."""
        return cls.from_fields(path, _GdcmFields(reader, index), None)

    @classmethod
    def from_fields(cls, path: str, fields, ds: Dataset | None) -> SliceHeader:
        orientation = _numbers(fields, "ImageOrientationPatient")
        position = _numbers(fields, "ImagePositionPatient")
        spacing = _numbers(fields, "PixelSpacing") or _numbers(fields, "ImagerPixelSpacing")
        return cls(
            path=path,
            dataset=ds,
            series_uid=fields.text("SeriesInstanceUID") or "",
            sop_class_uid=fields.text("SOPClassUID") or "",
            rows=fields.us("Rows"),
            columns=fields.us("Columns"),
            frames=max(1, _integer(fields, "NumberOfFrames") or 1),
            samples_per_pixel=fields.us("SamplesPerPixel") or 1,
            photometric=(fields.text("PhotometricInterpretation") or "").upper(),
            position=position if position and len(position) == 3 else None,
            orientation=orientation if orientation and len(orientation) == 6 else None,
            pixel_spacing=spacing[:2] if spacing and len(spacing) >= 2 and min(spacing[:2]) > 0 else None,
            slice_thickness=_number(fields, "SliceThickness"),
            spacing_between_slices=_number(fields, "SpacingBetweenSlices"),
            instance_number=_integer(fields, "InstanceNumber"),
            acquisition_number=_integer(fields, "AcquisitionNumber"),
            echo_number=_integer(fields, "EchoNumbers"),
            temporal_position=_integer(fields, "TemporalPositionIdentifier"),
            slope=_number(fields, "RescaleSlope") or 1.0,
            intercept=_number(fields, "RescaleIntercept") or 0.0,
            bits_allocated=fields.us("BitsAllocated"),
            bits_stored=fields.us("BitsStored"),
            pixel_representation=fields.us("PixelRepresentation"),
        )

    @property
    def is_image(self) -> bool:
        return bool(self.rows) and bool(self.columns)

    @property
    def is_colour(self) -> bool:
        return self.samples_per_pixel > 1 or self.photometric == "PALETTE COLOR"

    @property
    def normal(self) -> np.ndarray | None:
        """The slice normal (row direction x column direction), unit length; None without orientation."""
        if self.orientation is None:
            return None
        n = np.cross(self.orientation[:3], self.orientation[3:])
        norm = float(np.linalg.norm(n))
        return n / norm if norm > 1e-6 else None

    def expected_pixel_bytes(self) -> int | None:
        """Bytes of uncompressed pixel data this header announces (None where unknown)."""
        if not (self.rows and self.columns and self.bits_allocated):
            return None
        return self.rows * self.columns * self.frames * self.samples_per_pixel * self.bits_allocated // 8


def has_dicm_prefix(path: str | os.PathLike[str]) -> bool:
    """True when the file has the DICOM preamble and ``DICM`` marker of a DICOM Part 10 file."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dataset(
    source: str | os.PathLike[str] | BinaryIO, *, header_only: bool = True, force: bool = False
) -> Dataset:
    """Read a DICOM file (a path or an open binary file) with pydicom, by default only its header.

    Every failure is a :class:`StudyReadError`.
    """
    name = getattr(source, "name", source)
    if isinstance(source, os.PathLike):
        source = str(source)
    try:
        if header_only:
            return pydicom.dcmread(source, stop_before_pixels=True, specific_tags=_TAG_NUMBERS, force=force)
        return pydicom.dcmread(source, force=force)
    except pydicom.errors.InvalidDicomError as exc:
        raise StudyReadError(f"{name}: not a DICOM file ({one_line(exc)})") from exc
    except (OSError, EOFError) as exc:
        raise StudyReadError(f"{name}: cannot be read ({one_line(exc)})") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged bytes (struct.error, ValueError, ...)
        reason = f"{type(exc).__name__}: {one_line(exc)}"
        raise StudyReadError(f"{name}: a damaged DICOM file ({reason})") from exc


def read_slice_header(path: str | os.PathLike[str], *, force: bool = False) -> SliceHeader:
    """The header of one file as a :class:`SliceHeader`, with where its pixel data starts."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the position is known
    except OSError as exc:
        raise StudyReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    with f:
        ds = read_dataset(f, force=force)
        offset = f.tell()  # pydicom stops at the start of the Pixel Data element
        size = os.fstat(f.fileno()).st_size
    header = SliceHeader.from_dataset(str(path), ds)
    header.pixel_data_offset = offset if offset < size else None
    header.file_size = size
    return header


@dataclass
class HeaderScan:
    """The headers of a list of files, with the files that were not images or could not be read."""

    images: list[SliceHeader] = field(default_factory=list)
    non_images: list[SliceHeader] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def read_headers(
    files: Sequence[str], reporter: ProgressReporter | None = None, *, force: bool = True
) -> HeaderScan:
    """Read the header of every file, keeping GDCM's order; sort out non-images and unreadable files."""
    scan = HeaderScan()
    for i, path in enumerate(files):
        try:
            header = read_slice_header(path, force=force)
        except StudyReadError as exc:
            scan.unreadable.append((path, str(exc)))
        else:
            (scan.images if header.is_image else scan.non_images).append(header)
        if reporter is not None and (i % 32 == 31 or i == len(files) - 1):
            reporter.advance(min(32, i % 32 + 1), "reading DICOM headers")
    return scan


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)
