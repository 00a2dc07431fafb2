"""Label maps (masks): an integer array on a volume's grid, with a name, a colour and a visibility per label.

A :class:`LabelMap` holds ``array`` ``(slice, row, column)``, uint8 (values up to 255) or uint16 (up to
65535), 0 = background, together with the :class:`~sd_fsmis.core.geometry.Geometry` of the volume it
belongs to and a table of :class:`Label` s (value, name, RGB colour, visible).

On disk a label map is a NIfTI file (``.nii`` / ``.nii.gz``) written with SimpleITK, geometry included, and
a JSON sidecar beside it holding the label table::

    liver_pred.nii.gz
    liver_pred.labels.json   {"format": "sd-fsmis label map", "version": 1,
                              "labels": [{"value": 1, "name": "liver", "colour": [255, 0, 0],
                                          "visible": true}, ...]}

Why a sidecar rather than the NIfTI header: the header's only free text field (``descrip``) holds 80
characters, too few for a few names and colours, and other tools rewrite it. A sidecar is what ITK-SNAP
(label description files) and 3D Slicer (colour tables) do too; tools that ignore it still read the mask.
Both files are written atomically (temporary file + rename). A mask without a sidecar gets default names
("Label 3") and ITK-SNAP's default colour order, or the names a caller passes (e.g. :data:`CHAOS_MR_ORGANS`).

Masks made by other tools are accepted when they hold whole numbers 0..65535 in any pixel type (float
0.0/1.0 masks are common); a 2-D image is a one-slice mask, as it is a one-slice volume. Fractional,
negative, NaN/infinite or too-large values, 4-D and multi-component images are refused with
:class:`~sd_fsmis.core.errors.MaskError`, and so is a file that cannot be a label map although its values
are whole numbers: an intensity image (more than :data:`MAX_PLAUSIBLE_LABELS` different values, or values
that change from voxel to voxel like an image's; not asked of supervoxels, which a ``.supervoxels.json``
sidecar declares), or the very image it is meant to label (:func:`refuse_image_as_mask`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.errors import GeometryMismatchError, MaskError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io import nifti
from sd_fsmis.core.io.atomic import atomic_path
from sd_fsmis.core.io.destinations import output_error
from sd_fsmis.core.io.imagefile import check_readable_file, is_nifti, itk_reason, read_image

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

#: Largest label value a label map can hold (uint16).
MAX_LABEL = 65535

#: More different labels than this in one file: an intensity image, not a label map (an organ atlas has
#: about a hundred; a CT or MR image has hundreds to thousands of different values).
MAX_PLAUSIBLE_LABELS = 255

#: With more labels than this, a file whose neighbouring labelled voxels differ more often than
#: :data:`IMAGE_LIKE_CHANGE_FRACTION` is an image's intensities (label regions are mostly uniform inside:
#: a CHAOS label map changes between 2 % of its neighbouring voxels, its MR image between 90 %).
IMAGE_LIKE_MIN_VALUES = 32
IMAGE_LIKE_CHANGE_FRACTION = 0.5

SIDECAR_SUFFIX = ".labels.json"
#: a sidecar that says its file is a label map of many regions (``sd-fsmis supervoxels``): such a file is
#: never taken for an image's intensities, however many labels it holds
SUPERVOXELS_SIDECAR_SUFFIX = ".supervoxels.json"
SIDECAR_FORMAT = "sd-fsmis label map"
SIDECAR_VERSION = 1

#: ITK-SNAP's default label colours, in its order: label ``v`` gets entry ``(v - 1) % 130``
#: (ColorLabelTable.cxx). The first six are red, green, blue, yellow, cyan, magenta.
_ITKSNAP_COLOURS_HEX = (
    "FF0000 00FF00 0000FF FFFF00 00FFFF FF00FF FFEFD5 0000CD CD853F D2B48C 66CDAA 000080 008B8B 2E8B57 "
    "FFE4E1 6A5ACD DDA0DD E9967A A52A2A FFFAFA 9370DB DA70D6 4B0082 FFB6C1 3CB371 FFEBCD FFE4C4 DAA520 "
    "008080 BC8F8F FF69B4 FFDAB9 DEB887 7FFF00 8B4513 7CFC00 FFFFE0 4682B4 006400 EE82EE EEE8AA F0FFF0 "
    "F5DEB3 B8860B 20B2AA FF1493 191970 708090 228B22 F8F8FF F5FFFA FFA07A 90EE90 ADFF2F 4169E1 FF6347 "
    "FAF0E6 800000 32CD32 F4A460 FFFFF0 7B68EE FFA500 ADD8E6 FFC0CB 7FFFD4 FF8C00 8FBC8F DC143C FDF5E6 "
    "FFFAF0 00CED1 00FF7F 800080 FFFACD FA8072 9400D3 B22222 FF7F50 87CEEB 6495ED F0E68C FAEBD7 FFF5EE "
    "6B8E23 87CEFA 00008B 8B008B F5F5DC BA55D3 FFE4B5 FFDEAD 00BFFF D2691E FFF8DC 2F4F4F 483D8B AFEEEE "
    "808000 B0E0E6 FFF0F5 8B0000 F0FFFF FFD700 D8BFD8 778899 DB7093 48D1CC FF00FF C71585 9ACD32 BDB76B "
    "F0F8FF E6E6FA 00FA9A 556B2F 40E0D0 9932CC CD5C5C FAFAD2 5F9EA0 008000 FF4500 E0FFFF B0C4DE 8A2BE2 "
    "1E90FF F08080 98FB98 A0522D"
)
DEFAULT_COLOURS: tuple[RGB, ...] = tuple(
    (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in _ITKSNAP_COLOURS_HEX.split()
)

#: Abdominal organ colours of 3D Slicer's GenericAnatomyColors table (for callers that want anatomical
#: rather than maximally distinct colours; the vessels take the nearest entry, "vein").
ANATOMY_COLOURS: dict[str, RGB] = {
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "right kidney": (185, 102, 83),
    "left kidney": (185, 102, 83),
    "gallbladder": (139, 150, 98),
    "esophagus": (211, 171, 143),
    "stomach": (216, 132, 105),
    "duodenum": (255, 253, 229),
    "pancreas": (249, 180, 111),
    "aorta": (224, 97, 76),
    "inferior vena cava": (0, 151, 206),
    "portal vein and splenic vein": (0, 147, 202),
    "right adrenal gland": (249, 186, 150),
    "left adrenal gland": (249, 186, 150),
}

#: Label values of the CHAOS T2-SPIR MRI labels (Abd-MRI of the few-shot literature).
CHAOS_MR_ORGANS: dict[int, str] = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}

#: Label values of the Synapse / BTCV multi-organ CT labels (Abd-CT of the few-shot literature).
SYNAPSE_CT_ORGANS: dict[int, str] = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}


def default_colour(value: int) -> RGB:
    """ITK-SNAP's default colour for label ``value`` (black for the background)."""
    if value <= 0:
        return (0, 0, 0)
    return DEFAULT_COLOURS[(value - 1) % len(DEFAULT_COLOURS)]


def default_name(value: int) -> str:
    return "background" if value == 0 else f"Label {value}"


@dataclass(frozen=True)
class Label:
    """One label of a label map: its voxel value, the name a clinician sees, its overlay colour."""

    value: int
    name: str = ""
    colour: RGB = (0, 0, 0)
    visible: bool = True

    def __post_init__(self) -> None:
        value = int(self.value)
        if not 1 <= value <= MAX_LABEL:
            raise MaskError(f"label value {self.value} is outside 1..{MAX_LABEL} (0 is the background)")
        colour = tuple(int(c) for c in self.colour)
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise MaskError(f"label {value}: colour {self.colour!r} is not three values 0..255")
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "name", str(self.name) or default_name(value))
        object.__setattr__(self, "colour", colour)
        object.__setattr__(self, "visible", bool(self.visible))

    @classmethod
    def default(cls, value: int, name: str = "") -> Label:
        """A label with ITK-SNAP's default colour for its value (and "Label N" unless named)."""
        return cls(value=value, name=name or default_name(value), colour=default_colour(value))

    def to_dict(self) -> dict:
        return {"value": self.value, "name": self.name, "colour": list(self.colour), "visible": self.visible}

    @classmethod
    def from_dict(cls, d: Mapping) -> Label:
        value = int(d["value"])
        return cls(
            value=value,
            name=str(d.get("name") or default_name(value)),
            colour=tuple(d.get("colour") or default_colour(value)),
            visible=bool(d.get("visible", True)),
        )


LabelSpec = Mapping[int, "str | Label"] | Iterable[Label] | None


def make_labels(labels: LabelSpec = None, *, anatomy_colours: bool = False) -> dict[int, Label]:
    """A label table ``{value: Label}`` from Labels or from ``{value: name}`` (e.g. :data:`CHAOS_MR_ORGANS`).

    Named values get ITK-SNAP's default colour for their value, or with ``anatomy_colours`` the colour of
    :data:`ANATOMY_COLOURS` where the name is an organ listed there.
    """
    table: dict[int, Label] = {}
    if labels is None:
        return table
    items: Iterable = labels.items() if isinstance(labels, Mapping) else ((lb.value, lb) for lb in labels)
    for value, item in items:
        if isinstance(item, Label):
            label = item if item.value == int(value) else replace(item, value=int(value))
        else:
            label = Label.default(int(value), str(item))
            if anatomy_colours and label.name.lower() in ANATOMY_COLOURS:
                label = replace(label, colour=ANATOMY_COLOURS[label.name.lower()])
        table[label.value] = label
    return dict(sorted(table.items()))


def labels_sidecar_path(path: str | os.PathLike[str], suffix: str = SIDECAR_SUFFIX) -> Path:
    """The JSON sidecar of a mask file: ``liver.nii.gz`` -> ``liver.labels.json`` (or ``suffix``)."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    else:
        name = p.stem
    return p.with_name(name + suffix)


def is_supervoxel_file(path: str | os.PathLike[str]) -> bool:
    """Whether a mask file is declared supervoxels by its ``.supervoxels.json`` sidecar: numbered regions,
    however many, rather than structures (or an image's intensities)."""
    return labels_sidecar_path(path, SUPERVOXELS_SIDECAR_SUFFIX).is_file()


@dataclass(eq=False)  # arrays: compare .array explicitly
class LabelMap:
    """A mask on a volume's grid: ``array`` ``(slice, row, column)`` uint8/uint16, 0 = background.

    ``labels`` describes the values (name, colour, visibility); values painted without an entry are shown
    with :meth:`label`'s defaults. ``warnings`` says what loading changed (e.g. a resampling).
    """

    array: np.ndarray
    geometry: Geometry
    labels: dict[int, Label] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.dtype not in (np.uint8, np.uint16):
            raise MaskError(f"a label map array must be uint8 or uint16, got {self.array.dtype}")
        if self.array.ndim != 3:
            raise MaskError(f"a label map must be 3-D (slice, row, column), got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape:
            raise GeometryMismatchError(
                f"the mask's shape {_fmt_shape(self.array.shape)} does not match the grid "
                f"{_fmt_shape(self.geometry.shape)} (slices x rows x columns)"
            )
        self.labels = make_labels(self.labels)

    # ----------------------------------------------------------------------------------------- creation
    @classmethod
    def empty(cls, geometry: Geometry, labels: LabelSpec = None, dtype: type = np.uint8) -> LabelMap:
        """An all-background label map on ``geometry``."""
        return cls(np.zeros(geometry.shape, dtype=dtype), geometry, make_labels(labels))

    @classmethod
    def from_array(cls, array: np.ndarray, geometry: Geometry, labels: LabelSpec = None) -> LabelMap:
        """A label map from any array of whole numbers 0..65535 (bool, integer, or float holding integers).

        The result is uint8 when the largest value is at most 255, else uint16 (an array already of that
        type is used without a copy). Every value present gets a :class:`Label` (the given one, or a
        default). Raises :class:`MaskError` for negative, fractional, non-finite or too-large values and
        :class:`GeometryMismatchError` when the shape is not the grid's.
        """
        arr = np.asarray(array)
        if arr.ndim != 3:
            raise MaskError(f"a mask must be 3-D (slice, row, column), got shape {arr.shape}")
        if tuple(arr.shape) != geometry.shape:
            raise GeometryMismatchError(
                f"a mask of another size: {_fmt_shape(arr.shape)} instead of "
                f"{_fmt_shape(geometry.shape)} (slices x rows x columns)"
            )
        arr = _to_label_dtype(arr)
        table = make_labels(labels)
        for value in _present_values(arr):
            table.setdefault(value, Label.default(value))
        return cls(arr, geometry, dict(sorted(table.items())))

    # ------------------------------------------------------------------------------------------ queries
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    def label(self, value: int) -> Label:
        """The label of ``value``: its table entry, or a default one."""
        return self.labels.get(int(value)) or Label.default(int(value))

    def label_name(self, value: int) -> str:
        return self.label(value).name

    def binary(self, label: int) -> np.ndarray:
        """``array == label`` as a bool array ``(slice, row, column)``."""
        return self.array == label

    def voxel_counts(self) -> dict[int, int]:
        """``{value: voxels}`` for every non-zero value present."""
        counts = _value_counts(self.array)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts) if v != 0}

    def present_labels(self) -> list[int]:
        """The non-zero values present, ascending."""
        return _present_values(self.array)

    def slices_with(self, label: int) -> list[int]:
        """Indices (first axis) of the slices that contain ``label``."""
        return [int(z) for z in np.flatnonzero((self.array == label).any(axis=(1, 2)))]

    def set_label(self, label: Label) -> None:
        """Add or replace the table entry of ``label.value``."""
        self.labels[label.value] = label
        self.labels = dict(sorted(self.labels.items()))

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the values and the geometry."""
        return self.geometry.image_from_array(self.array)

    def copy(self) -> LabelMap:
        return LabelMap(self.array.copy(), self.geometry, dict(self.labels), list(self.warnings))

    def resampled(self, like: Geometry) -> LabelMap:
        """This label map resampled onto the grid ``like`` (nearest neighbour; outside = background)."""
        f = sitk.ResampleImageFilter()
        f.SetSize([int(s) for s in like.size])
        f.SetOutputSpacing(like.spacing)
        f.SetOutputOrigin(like.origin)
        f.SetOutputDirection(like.direction)
        f.SetTransform(sitk.Transform())
        f.SetInterpolator(sitk.sitkNearestNeighbor)
        f.SetDefaultPixelValue(0)
        image = self.to_sitk()
        f.SetOutputPixelType(image.GetPixelID())
        out = sitk.GetArrayFromImage(f.Execute(image))
        note = "resampled (nearest neighbour) onto the volume's grid: " + "; ".join(
            self.geometry.differences(like)
        )
        return LabelMap(out, like, dict(self.labels), [*self.warnings, note])

    # ----------------------------------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the mask as NIfTI with its geometry, and the label table as ``<name>.labels.json``.

        Both files are written to temporary files and renamed into place: a failure leaves the old files.
        Returns the path of the NIfTI file.
        """
        target = Path(path)
        if not is_nifti(target):
            raise MaskError(f"{target.name}: masks are saved as NIfTI; the name must end in .nii or .nii.gz")
        image = self.to_sitk()
        sidecar = labels_sidecar_path(target)
        document = {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "image": target.name,
            "labels": [lb.to_dict() for lb in self.labels.values()],
        }
        with atomic_path(target) as tmp_image, atomic_path(sidecar) as tmp_sidecar:
            try:
                sitk.WriteImage(image, str(tmp_image), useCompression=target.name.lower().endswith(".gz"))
            except RuntimeError as exc:
                # ITK's message names the temporary file and gives no errno: name the user's file, and
                # say when the disk is full
                reason = itk_reason(exc).replace(str(tmp_image), target.name)
                raise output_error(target, OSError(_itk_write_errno(target), reason)) from exc
            tmp_sidecar.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
        log.info("saved label map %s (%s labels)", target, len(self.labels))
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        like: Geometry | None = None,
        *,
        resample: bool = False,
        labels: LabelSpec = None,
        like_name: str = "volume",
    ) -> LabelMap:
        """Read a mask file (NIfTI, or any 3-D image SimpleITK reads) with its label table.

        ``like``: the grid the mask must lie on (the volume's). A mask on another grid raises
        :class:`GeometryMismatchError` naming every difference, unless ``resample`` is true: then it is
        resampled onto ``like`` by nearest neighbour and a note is added to ``warnings``. ``labels``: names
        for values the sidecar does not describe (e.g. :data:`CHAOS_MR_ORGANS`); the sidecar wins.
        """
        p = check_readable_file(path)
        if is_nifti(p):
            # the study loader's NIfTI reader: refuses truncated files (SimpleITK reads them silently) and
            # reads NIfTI-2; images of more than 3 dimensions go to SimpleITK so that _as_3d_scalar says why
            header = nifti.read_header(p)
            nifti.check_complete(p, header)
            # ITK turns NaN and infinite voxels into 0 without a word: count them in the file itself
            non_finite = sum(nifti.count_non_finite(p, header).values())
            image = nifti.read_image(p, header) if header.ndim <= 3 else read_image(p)
        else:
            image = read_image(p)
            non_finite = 0
        image = _as_3d_scalar(image, p)
        if image.GetSize()[2] == 1 and is_nifti(p) and header.ndim == 2:
            # a 2-D mask: one slice, placed and turned as its header says (as the study loader does)
            origin, spacing, direction = nifti.header_geometry(header)
            image.SetOrigin(origin)
            image.SetSpacing(spacing)
            image.SetDirection(direction)
        geometry = Geometry.from_image(image)
        warnings: list[str] = []
        table = make_labels(labels)
        sidecar = labels_sidecar_path(p)
        if sidecar.is_file():
            try:
                table.update(_read_sidecar(sidecar))
            except (ValueError, KeyError, TypeError, MaskError, OSError) as exc:
                warnings.append(f"{sidecar.name}: label names not read ({exc}); default names used")
                log.warning("%s", warnings[-1])
        if non_finite:
            raise MaskError(
                f"{p}: {non_finite} voxel(s) are NaN or infinite; "
                f"a label map holds whole numbers 0..{MAX_LABEL}"
            )
        try:
            label_map = cls.from_array(sitk.GetArrayFromImage(image), geometry, table)
        except MaskError as exc:
            raise MaskError(f"{p}: {exc}") from None
        if not is_supervoxel_file(p):
            _refuse_intensity_image(label_map, p)
        label_map.warnings.extend(warnings)
        if like is not None and not geometry.matches(like):
            if not resample:
                geometry.require_match(like, what=f"mask {p.name}", of=like_name)
            label_map = label_map.resampled(like)
            log.info("%s: %s", p, label_map.warnings[-1])
        return label_map


def refuse_image_as_mask(
    mask: str | os.PathLike[str] | LabelMap, images: Iterable[object], option: str = "the mask"
) -> None:
    """Raise :class:`MaskError` when a mask given for an image is that image itself.

    ``mask`` is a path (compared with the image paths: the same file, links included) or a loaded
    :class:`LabelMap` (compared with the images' voxels, ``Volume`` objects: the same values).
    """
    for image in images:
        if image is None:
            continue
        if isinstance(mask, LabelMap):
            array = getattr(image, "array", None)
            if (
                array is not None
                and array.shape == mask.array.shape
                and len(mask.present_labels()) > 2
                and np.array_equal(array, mask.array)
            ):
                raise MaskError(
                    f"{option}: the label map holds the image's own voxel values: it is the image, not a mask"
                )
            continue
        try:
            same = Path(image).is_file() and os.path.samefile(mask, image)  # type: ignore[arg-type]
        except (OSError, TypeError):
            same = False
        if same:
            raise MaskError(f"{option} {mask} is the image itself, not a label map painted on it")


def _refuse_intensity_image(label_map: LabelMap, path: Path) -> None:
    """Refuse a file of whole numbers that is an image's intensities rather than a label map."""
    values = label_map.present_labels()
    n = len(values)
    if n > MAX_PLAUSIBLE_LABELS:
        raise MaskError(
            f"{path}: not a label map: it holds {n} different values ({values[0]} to {values[-1]}), like an "
            f"image's intensities; a label map holds a few labels (at most {MAX_PLAUSIBLE_LABELS})"
        )
    if n > IMAGE_LIKE_MIN_VALUES:
        arr = label_map.array
        labelled = arr[..., :-1] != 0
        changes = (arr[..., 1:] != arr[..., :-1]) & labelled
        fraction = float(changes.sum()) / max(1, int(labelled.sum()))
        if fraction > IMAGE_LIKE_CHANGE_FRACTION:
            raise MaskError(
                f"{path}: not a label map: its {n} values change from one voxel to the next in "
                f"{100 * fraction:.0f} % of places, like an image's intensities; a label map holds regions "
                "of one label each"
            )


def _itk_write_errno(target: Path) -> int | None:
    """ENOSPC when the target's disk is (nearly) full: why ITK could not write, as far as one can tell."""
    import errno
    import shutil

    try:
        return errno.ENOSPC if shutil.disk_usage(target.parent).free < 2**20 else None
    except OSError:
        return None


# --------------------------------------------------------------------------------------------- helpers
def _fmt_shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def _to_label_dtype(arr: np.ndarray) -> np.ndarray:
    """``arr`` as uint8 (max <= 255) or uint16, refusing values that are not whole numbers 0..65535."""
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if arr.size == 0:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise MaskError("the mask holds NaN or infinite values; a mask holds whole numbers 0..65535")
        if not np.array_equal(arr, np.rint(arr)):
            raise MaskError(
                "the mask holds fractional values (a probability map or a resampled image?); "
                "a mask holds whole numbers 0..65535"
            )
    elif not np.issubdtype(arr.dtype, np.integer):
        raise MaskError(f"a mask holds whole numbers 0..65535, not {arr.dtype} values")
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise MaskError(f"the mask holds negative values (down to {lo:g}); labels are 0..{MAX_LABEL}")
    if hi > MAX_LABEL:
        raise MaskError(f"the mask holds values up to {hi:g}; labels are 0..{MAX_LABEL}")
    dtype = np.uint8 if hi <= 255 else np.uint16
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _value_counts(arr: np.ndarray) -> np.ndarray:
    """Voxel count of every value 0..max, one slice at a time (bincount casts to intp: keep it small)."""
    size = int(arr.max()) + 1 if arr.size else 1
    counts = np.zeros(size, dtype=np.int64)
    for plane in arr:
        counts += np.bincount(plane.ravel(), minlength=size)
    return counts


def _present_values(arr: np.ndarray) -> list[int]:
    return [int(v) for v in np.flatnonzero(_value_counts(arr)) if v != 0]


def _as_3d_scalar(image: sitk.Image, path: Path) -> sitk.Image:
    """The image as a 3-D scalar image (2-D: one slice); 4-D (several volumes) and vector images are
    refused."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MaskError(
            f"{path}: a mask has one value per voxel; this image has "
            f"{image.GetNumberOfComponentsPerPixel()} (a colour or vector image?)"
        )
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        size = [*image.GetSize()[:3], 0]
        return sitk.Extract(image, size, [0, 0, 0, 0])
    if dim == 4:
        raise MaskError(f"{path}: a 4-D image ({image.GetSize()[3]} volumes) cannot be used as a mask")
    if dim == 2:  # a one-slice mask, as a 2-D image is a one-slice volume
        return sitk.JoinSeries(image)
    if dim != 3:
        raise MaskError(f"{path}: a mask must be a 3-D image, this one is {dim}-D")
    return image


def _read_sidecar(path: Path) -> dict[int, Label]:
    doc = json.loads(path.read_text("utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        raise ValueError("not an sd-fsmis label table")
    if int(doc.get("version", 0)) > SIDECAR_VERSION:
        raise ValueError(f"written by a newer version (format {doc.get('version')})")
    return make_labels([Label.from_dict(d) for d in doc["labels"]])
