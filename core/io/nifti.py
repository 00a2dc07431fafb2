"""NIfTI files (.nii, .nii.gz): header checks, 4-D handling and NIfTI-2, with SimpleITK doing the reading.

SimpleITK reads NIfTI-1 pixels and geometry, but two things it does not do are done here:

- It reads a truncated file without complaint (the missing voxels come back as garbage), so every file is
  checked for completeness first: the file size for ``.nii``, the gzip trailer (or, where that is not
  conclusive, a streaming decompression) for ``.nii.gz``.
- Its NIfTI reader does not accept NIfTI-2. A NIfTI-2 file is rewritten as NIfTI-1 into a temporary file
  (same data bytes, same geometry fields) and read from there, so ITK's geometry rules apply unchanged.
- It turns NaN and infinite voxels into 0 without a word: :func:`count_non_finite` counts them in the file.
- The header holds two transforms, qform and sform; ITK uses one (:func:`transform_in_use`) and says
  nothing when they disagree: :func:`transform_warning` names both. A 2-D image loses its place and its
  rotation in ITK's 2-D geometry: :func:`header_geometry` gives it the 3-D geometry of its header.
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


#: qform and sform further apart than this (mm, at any corner of the image) are said to disagree.
TRANSFORMS_DISAGREE_MM = 0.5
#: NIfTI's code for a transform in the scanner's anatomical coordinates (the one ITK prefers as sform).
XFORM_SCANNER_ANAT = 1
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


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


def qform_affine(header: NiftiHeader) -> np.ndarray | None:
    """The qform as a 4 x 4 affine (voxel index -> RAS mm), None when its code is 0 (NIfTI-1 standard)."""
    raw = header.raw
    if int(raw["qform_code"]) <= 0:
        return None
    b, c, d = (float(raw[k]) for k in ("quatern_b", "quatern_c", "quatern_d"))
    a2 = 1.0 - (b * b + c * c + d * d)
    if a2 < 1e-7:  # a 180 degree rotation: renormalise (b, c, d) and take a = 0, as nifti1_io does
        norm = np.sqrt(b * b + c * c + d * d) or 1.0
        a, b, c, d = 0.0, b / norm, c / norm, d / norm
    else:
        a = float(np.sqrt(a2))
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    pixdim = [float(v) for v in raw["pixdim"]]
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    scale = [abs(pixdim[1]) or 1.0, abs(pixdim[2]) or 1.0, (abs(pixdim[3]) or 1.0) * qfac]
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(scale)
    affine[:3, 3] = [float(raw[k]) for k in ("qoffset_x", "qoffset_y", "qoffset_z")]
    return affine


def sform_affine(header: NiftiHeader) -> np.ndarray | None:
    """The sform as a 4 x 4 affine (voxel index -> RAS mm), None when its code is 0."""
    raw = header.raw
    if int(raw["sform_code"]) <= 0:
        return None
    affine = np.eye(4)
    affine[:3] = np.array([raw["srow_x"], raw["srow_y"], raw["srow_z"]], dtype=float)
    return affine


def _rigid_and_scaled(affine: np.ndarray) -> bool:
    """True when the columns are orthogonal (a rotation with scales, no shear)."""
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms < 1e-12):
        return False
    unit = m / norms
    return bool(np.allclose(unit.T @ unit, np.eye(3), atol=1e-4))


def transform_in_use(header: NiftiHeader) -> str:
    """Which transform ITK places the image with: "sform", "qform" or "pixdim" (neither is set).

    ITK takes the sform when its code is 'scanner anatomical' (1) and it has no shear, else the qform when
    set, else the sform when set and without shear (checked against ITK's reading in the tests).
    """
    sform, qform = sform_affine(header), qform_affine(header)
    sform_ok = sform is not None and _rigid_and_scaled(sform)
    if sform_ok and int(header.raw["sform_code"]) == XFORM_SCANNER_ANAT:
        return "sform"
    if qform is not None:
        return "qform"
    return "sform" if sform_ok else "pixdim"


def _lps(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin, spacing and direction (3 x 3, LPS) of an index -> RAS affine."""
    m = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    spacing[spacing < 1e-12] = 1.0
    return _RAS_TO_LPS @ affine[:3, 3], spacing, m / spacing


def header_geometry(
    header: NiftiHeader,
) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    """Origin, spacing and direction (LPS, 9 values) of the header's transform in use, in 3-D: what a
    2-D image (one slice) is given, since ITK's 2-D reading keeps neither its place nor its rotation."""
    chosen = transform_in_use(header)
    affine = sform_affine(header) if chosen == "sform" else qform_affine(header)
    if affine is None:
        pixdim = [abs(float(v)) or 1.0 for v in header.raw["pixdim"][1:4]]
        affine = np.diag([*pixdim, 1.0])
    origin, spacing, direction = _lps(affine)
    if np.linalg.det(direction) == 0 or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        q, r = np.linalg.qr(direction)  # the nearest orthonormal frame, keeping the axes' signs
        direction = q * np.sign(np.diag(r))
    return (
        tuple(float(v) for v in origin),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.ravel()),
    )


def transform_warning(header: NiftiHeader) -> str:
    """A warning naming both transforms when qform and sform place the image differently ("" otherwise)."""
    qform, sform = qform_affine(header), sform_affine(header)
    if qform is None or sform is None:
        return ""
    shape = list(header.shape[:3]) + [1] * max(0, 3 - header.ndim)
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    ).T
    apart = float(np.max(np.linalg.norm((qform @ corners - sform @ corners)[:3], axis=0)))
    if apart <= TRANSFORMS_DISAGREE_MM:
        return ""

    def origin(affine: np.ndarray) -> str:
        return "(" + ", ".join(f"{v:.1f}" for v in _RAS_TO_LPS @ affine[:3, 3]) + ")"

    used = transform_in_use(header)
    qcode, scode = int(header.raw["qform_code"]), int(header.raw["sform_code"])
    return (
        f"the header's two transforms disagree by up to {apart:.1f} mm: qform (code {qcode}) "
        f"puts the first voxel at {origin(qform)}, sform (code {scode}) at {origin(sform)} "
        f"(LPS mm); the {used} is used, as ITK does; check which one the file's maker meant"
    )


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
