"""NIfTI files (.nii, .nii.gz): header checks, 4-D handling and NIfTI-2, with SimpleITK doing the reading.

SimpleITK reads NIfTI-1 pixels and geometry, but two things it does not do are done here:

- It reads a truncated file without complaint (the missing voxels come back as garbage), so every file is
  checked for completeness first: the file size for ``.nii``, the gzip trailer (or, where that is not
  conclusive, a streaming decompression) for ``.nii.gz``.
- Its NIfTI reader does not accept NIfTI-2. A NIfTI-2 file is rewritten as NIfTI-1 into a temporary file
  (same data bytes, same geometry fields) and read from there, so ITK's geometry rules apply unchanged.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.errors import StudyReadError
from sd_fsmis.core.io.imagefile import itk_reason

# The two header layouts (packed, no padding), as the NIfTI-1 and NIfTI-2 standards define them.
_NIFTI1_FIELDS = [
    ("sizeof_hdr", "i4"),
    ("data_type", "S10"),
    ("db_name", "S18"),
    ("extents", "i4"),
    ("session_error", "i2"),
    ("regular", "S1"),
    ("dim_info", "u1"),
    ("dim", "i2", (8,)),
    ("intent_p1", "f4"),
    ("intent_p2", "f4"),
    ("intent_p3", "f4"),
    ("intent_code", "i2"),
    ("datatype", "i2"),
    ("bitpix", "i2"),
    ("slice_start", "i2"),
    ("pixdim", "f4", (8,)),
    ("vox_offset", "f4"),
    ("scl_slope", "f4"),
    ("scl_inter", "f4"),
    ("slice_end", "i2"),
    ("slice_code", "u1"),
    ("xyzt_units", "u1"),
    ("cal_max", "f4"),
    ("cal_min", "f4"),
    ("slice_duration", "f4"),
    ("toffset", "f4"),
    ("glmax", "i4"),
    ("glmin", "i4"),
    ("descrip", "S80"),
    ("aux_file", "S24"),
    ("qform_code", "i2"),
    ("sform_code", "i2"),
    ("quatern_b", "f4"),
    ("quatern_c", "f4"),
    ("quatern_d", "f4"),
    ("qoffset_x", "f4"),
    ("qoffset_y", "f4"),
    ("qoffset_z", "f4"),
    ("srow_x", "f4", (4,)),
    ("srow_y", "f4", (4,)),
    ("srow_z", "f4", (4,)),
    ("intent_name", "S16"),
    ("magic", "S4"),
]
_NIFTI2_FIELDS = [
    ("sizeof_hdr", "i4"),
    ("magic", "S8"),
    ("datatype", "i2"),
    ("bitpix", "i2"),
    ("dim", "i8", (8,)),
    ("intent_p1", "f8"),
    ("intent_p2", "f8"),
    ("intent_p3", "f8"),
    ("pixdim", "f8", (8,)),
    ("vox_offset", "i8"),
    ("scl_slope", "f8"),
    ("scl_inter", "f8"),
    ("cal_max", "f8"),
    ("cal_min", "f8"),
    ("slice_duration", "f8"),
    ("toffset", "f8"),
    ("slice_start", "i8"),
    ("slice_end", "i8"),
    ("descrip", "S80"),
    ("aux_file", "S24"),
    ("qform_code", "i4"),
    ("sform_code", "i4"),
    ("quatern_b", "f8"),
    ("quatern_c", "f8"),
    ("quatern_d", "f8"),
    ("qoffset_x", "f8"),
    ("qoffset_y", "f8"),
    ("qoffset_z", "f8"),
    ("srow_x", "f8", (4,)),
    ("srow_y", "f8", (4,)),
    ("srow_z", "f8", (4,)),
    ("slice_code", "i4"),
    ("xyzt_units", "i4"),
    ("intent_code", "i4"),
    ("intent_name", "S16"),
    ("dim_info", "u1"),
    ("unused_str", "S15"),
]
NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
#: NIfTI datatype codes of colour voxels (RGB24, RGBA32).
COLOUR_DATATYPES = (128, 2304)


def _dtype(fields: list, endian: str) -> np.dtype:
    return np.dtype([(f[0], endian + f[1], *f[2:]) if f[1][0] != "S" else f for f in fields])


@dataclass(frozen=True)
class NiftiHeader:
    """What the loader needs from a NIfTI header: version, byte order, dimensions and data layout."""

    version: int  # 1 or 2
    endian: str  # "<" or ">"
    dim: tuple[int, ...]  # dim[0] = number of dimensions, then the sizes
    datatype: int
    bitpix: int
    vox_offset: int
    raw: np.ndarray  # the whole header as a structured scalar

    @property
    def ndim(self) -> int:
        return int(self.dim[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Sizes along each dimension, x first."""
        return tuple(int(d) for d in self.dim[1 : self.ndim + 1])

    @property
    def n_volumes(self) -> int:
        """Volumes along the 4th (time) dimension; 1 for a 3-D image."""
        return int(self.shape[3]) if self.ndim >= 4 else 1

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.bitpix // 8

    @property
    def is_colour(self) -> bool:
        return self.datatype in COLOUR_DATATYPES


#: The two bytes every gzip file starts with.
GZIP_MAGIC = b"\x1f\x8b"

#: NIfTI datatype codes of floating-point voxels (FLOAT32, FLOAT64) and their numpy types.
FLOAT_DATATYPES = {16: "f4", 64: "f8"}


def is_gzipped(path: str | os.PathLike[str]) -> bool:
    """True when the file is gzip-compressed, whatever its name says (by its first two bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == GZIP_MAGIC
    except OSError:
        return str(path).lower().endswith(".gz")


def name_warning(path: str | os.PathLike[str]) -> str:
    """A warning when the name says .gz and the content is not compressed (or the other way round)."""
    named_gz = str(path).lower().endswith(".gz")
    compressed = is_gzipped(path)
    if named_gz and not compressed:
        return "named .nii.gz but not compressed: read as an uncompressed .nii file"
    if compressed and not named_gz:
        return "named .nii but gzip-compressed: read as a .nii.gz file"
    return ""


def count_non_finite(path: str | os.PathLike[str], header: NiftiHeader) -> dict[str, int]:
    """``{"NaN": n, "+inf": n, "-inf": n}`` over the voxels of a floating-point NIfTI file (empty otherwise).

    ITK's NIfTI reader turns such voxels into 0 without a word, so they are counted in the file itself,
    streaming (a scaled integer file cannot hold them).
    """
    code = FLOAT_DATATYPES.get(header.datatype)
    if code is None:
        return {}
    dtype = np.dtype(header.endian + code)
    counts = {"NaN": 0, "+inf": 0, "-inf": 0}
    remaining = header.data_bytes
    block = dtype.itemsize * (1 << 20)
    with _open(Path(path)) as f:
        _skip(f, header.vox_offset)
        while remaining > 0:
            data = f.read(min(block, remaining))
            if not data:
                break
            data = data[: len(data) - len(data) % dtype.itemsize]
            values = np.frombuffer(data, dtype=dtype)
            bad = ~np.isfinite(values)
            if bad.any():
                odd = values[bad]
                counts["NaN"] += int(np.isnan(odd).sum())
                counts["+inf"] += int((odd == np.inf).sum())
                counts["-inf"] += int((odd == -np.inf).sum())
            remaining -= len(data)
    return {k: v for k, v in counts.items() if v}


def non_finite_warning(counts: dict[str, int]) -> str:
    """The load warning for :func:`count_non_finite`'s counts ("" when there are none)."""
    total = sum(counts.values())
    if not total:
        return ""
    parts = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    return f"{total} voxel(s) hold no number ({parts}); they are shown and used as 0"


@contextlib.contextmanager
def _open(path: Path) -> Iterator:
    """The file's bytes, decompressed when it is gzipped; errors of gzip become StudyReadError."""
    with contextlib.ExitStack() as stack:
        if is_gzipped(path):
            yield stack.enter_context(gzip.open(path, "rb"))
        else:
            yield stack.enter_context(open(path, "rb"))


def read_header(path: str | os.PathLike[str]) -> NiftiHeader:
    """Parse and sanity-check the header; raise :class:`StudyReadError` for anything that is not NIfTI."""
    p = Path(path)
    try:
        with _open(p) as f:
            data = f.read(NIFTI2_HEADER_SIZE)
    except (OSError, EOFError, zlib.error) as exc:
        what = "not gzip-compressed data or a damaged gzip file" if is_gzipped(p) else str(exc)
        raise StudyReadError(f"{p}: not a readable NIfTI file ({what})") from exc
    if len(data) < NIFTI1_HEADER_SIZE:
        raise StudyReadError(f"{p}: not a NIfTI file (only {len(data)} bytes, shorter than a NIfTI header)")
    version = endian = None
    for e in ("<", ">"):
        size = struct.unpack(e + "i", data[:4])[0]
        if size in (NIFTI1_HEADER_SIZE, NIFTI2_HEADER_SIZE):
            version, endian = (1 if size == NIFTI1_HEADER_SIZE else 2), e
            break
    if version is None:
        raise StudyReadError(f"{p}: not a NIfTI file (no NIfTI header)")
    if version == 2 and len(data) < NIFTI2_HEADER_SIZE:
        raise StudyReadError(f"{p}: truncated NIfTI-2 header")
    fields = _NIFTI1_FIELDS if version == 1 else _NIFTI2_FIELDS
    raw = np.frombuffer(data, dtype=_dtype(fields, endian), count=1)[0]
    magic = bytes(raw["magic"])
    if (version == 1 and magic[:3] not in (b"n+1", b"ni1")) or (version == 2 and magic[:3] != b"n+2"):
        raise StudyReadError(f"{p}: not a NIfTI file (bad magic string {magic[:4]!r})")
    if magic[:3] == b"ni1":
        raise StudyReadError(f"{p}: a NIfTI header without its data (a .hdr/.img pair); open the .img pair")
    dim = tuple(int(d) for d in raw["dim"])
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1 : ndim + 1]):
        raise StudyReadError(f"{p}: corrupt NIfTI header (dimensions {list(dim)})")
    bitpix = int(raw["bitpix"])
    if bitpix <= 0 or bitpix % 8:
        raise StudyReadError(f"{p}: corrupt NIfTI header ({bitpix} bits per voxel)")
    header = NiftiHeader(
        version=version,
        endian=endian,
        dim=dim,
        datatype=int(raw["datatype"]),
        bitpix=bitpix,
        vox_offset=int(raw["vox_offset"]),
        raw=raw,
    )
    if header.vox_offset < (NIFTI1_HEADER_SIZE if version == 1 else NIFTI2_HEADER_SIZE):
        raise StudyReadError(f"{p}: corrupt NIfTI header (data offset {header.vox_offset})")
    return header


def check_complete(path: str | os.PathLike[str], header: NiftiHeader) -> None:
    """Raise :class:`StudyReadError` if the file holds fewer voxel bytes than its header announces.

    ITK would read such a file and fill the missing voxels with whatever is in memory. For ``.nii.gz``
    the gzip trailer holds the uncompressed size (mod 2**32): when it equals the expected size the file is
    complete (a truncated file ends in arbitrary bytes); otherwise (several gzip members, trailing data,
    or truncation) the file is decompressed, stopping as soon as the expected bytes have come.
    """
    p = Path(path)
    need = header.vox_offset + header.data_bytes
    if not is_gzipped(p):
        have = p.stat().st_size
        if have < need:
            raise StudyReadError(f"{p}: truncated NIfTI file ({have} of {need} bytes)")
        return
    with open(p, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", f.read(4))[0]
    if isize == need % 2**32:
        return
    have = _decompressed_size(p, stop_at=need)
    if have < need:
        raise StudyReadError(f"{p}: truncated NIfTI file ({have} of {need} bytes after decompression)")


def _decompressed_size(path: Path, stop_at: int, chunk: int = 1 << 20) -> int:
    """Bytes that decompress from a (possibly multi-member) gzip file, counting up to ``stop_at``.

    The output is counted and dropped in pieces of at most 16 MiB (a block of zeros inflates a thousandfold).
    """
    piece = 1 << 24
    total = 0
    decomp = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while total < stop_at:
            data = f.read(chunk)
            if not data:
                break
            while total < stop_at:
                try:
                    out = decomp.decompress(data, piece)
                except zlib.error as exc:
                    raise StudyReadError(f"{path}: damaged gzip data ({exc})") from exc
                total += len(out)
                if decomp.eof:  # the next gzip member, if any, starts in the unused data
                    data = decomp.unused_data
                    decomp = zlib.decompressobj(wbits=31)
                    if not data:
                        break
                elif decomp.unconsumed_tail or len(out) == piece:
                    data = decomp.unconsumed_tail
                else:
                    break  # this chunk is used up: read the next one
    return total


def _as_nifti1_header(header: NiftiHeader, path: Path) -> bytes:
    """A NIfTI-1 header (plus the 4-byte extension flag) with a NIfTI-2 header's fields."""
    if any(d > 32767 for d in header.dim):
        raise StudyReadError(f"{path}: a NIfTI-2 image too large to be read (dimensions {list(header.dim)})")
    src = header.raw
    out = np.zeros((), dtype=_dtype(_NIFTI1_FIELDS, header.endian))
    for name in out.dtype.names:
        if name in src.dtype.names and name not in ("sizeof_hdr", "magic", "vox_offset"):
            out[name] = src[name]
    out["sizeof_hdr"] = NIFTI1_HEADER_SIZE
    out["magic"] = b"n+1\x00"
    out["regular"] = b"r"
    out["vox_offset"] = NIFTI1_HEADER_SIZE + 4
    return out.tobytes() + b"\x00\x00\x00\x00"


@contextlib.contextmanager
def itk_readable(
    path: str | os.PathLike[str], header: NiftiHeader, *, with_data: bool = True
) -> Iterator[Path]:
    """A path ITK can read: the file itself (NIfTI-1), or a temporary NIfTI-1 copy of a NIfTI-2 file.

    ``with_data=False`` writes only the header, enough for ``ReadImageInformation``.
    """
    p = Path(path)
    if header.version == 1:
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="sd-fsmis-nifti2-") as tmp:
        out = Path(tmp) / "image.nii"
        with open(out, "wb") as dst:
            dst.write(_as_nifti1_header(header, p))
            if with_data:
                with _open(p) as src:
                    _skip(src, header.vox_offset)
                    _copy_exactly(src, dst, header.data_bytes, p)
        yield out


def _skip(f, n: int) -> None:
    remaining = n
    while remaining > 0:
        block = f.read(min(remaining, 1 << 20))
        if not block:
            break
        remaining -= len(block)


def _copy_exactly(src, dst, n: int, path: Path) -> None:
    copied = 0
    while copied < n:
        block = src.read(min(n - copied, 1 << 22))
        if not block:
            raise StudyReadError(f"{path}: truncated NIfTI file ({copied} of {n} voxel bytes)")
        dst.write(block)
        copied += len(block)


def image_information(path: str | os.PathLike[str], header: NiftiHeader) -> sitk.ImageFileReader:
    """An ``ImageFileReader`` after ``ReadImageInformation``: size, spacing, ... without the pixels."""
    with itk_readable(path, header, with_data=False) as readable:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(readable))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise StudyReadError(f"{path}: cannot read the NIfTI header ({itk_reason(exc)})") from exc
    return reader


def read_image(
    path: str | os.PathLike[str], header: NiftiHeader, *, first_volume_of_4d: bool = False
) -> sitk.Image:
    """Read a NIfTI file as a 2-D or 3-D SimpleITK image (a 4-D one only with ``first_volume_of_4d``).

    The caller has checked the header and completeness. A 4-D image with one volume is read as 3-D.
    """
    p = Path(path)
    if header.ndim > 4:
        raise StudyReadError(
            f"{p}: a {header.ndim}-D NIfTI image (sizes {list(header.shape)}); only 3-D images open"
        )
    if header.ndim == 4 and header.n_volumes > 1 and not first_volume_of_4d:
        raise StudyReadError(
            f"{p}: a 4-D image with {header.n_volumes} volumes, not a 3-D volume; "
            "open its first volume instead, or split it into 3-D files"
        )
    with itk_readable(p, header) as readable:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(readable))
        try:
            if header.ndim == 4:
                reader.ReadImageInformation()
                size = list(reader.GetSize())
                reader.SetExtractIndex([0, 0, 0, 0])
                reader.SetExtractSize([*size[:3], 0])
            return reader.Execute()
        except RuntimeError as exc:
            raise StudyReadError(f"{p}: cannot be read as a NIfTI image ({itk_reason(exc)})") from exc
