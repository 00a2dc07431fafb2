"""Export a label map as DICOM-SEG (highdicom) for PACS: one binary segment per label, referencing the study.

The SEG references the source series' instances (read with pydicom from the volume's
``metadata.files``, in slice order), so viewers place it on the images. A painted mask is exported with
algorithm type MANUAL; a prediction with AUTOMATIC and the algorithm's name and version (our model).

What cannot be exported is said before any work (:func:`export_problem`, which the GUI uses to disable the
action): a study opened from NIfTI has no DICOM instances to reference, and a series without a Frame of
Reference UID cannot carry a SEG (it must share its frame of reference). A series that was resampled to a
regular grid (missing slices, uneven spacing, tilt: :mod:`~sd_fsmis.core.io.dicom.regularize`) is exported
on its acquired images: the mask is resampled back onto each acquired slice, and what lies on grid planes
between acquired slices cannot be referenced (:func:`export_notes` says how much).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from sd_fsmis.core.errors import MaskError, StudyReadError, UserError
from sd_fsmis.core.io.atomic import atomic_path
from sd_fsmis.core.io.dicom.headers import one_line
from sd_fsmis.core.io.dicom.regularize import mask_on_acquired_slices, voxels_between_acquired_slices
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.structures import find_structure
from sd_fsmis.core.volume import Volume

log = logging.getLogger(__name__)

MANUFACTURER = "SD-FSMIS"
MODEL_NAME = "SD-FSMIS desktop"


class DicomSegExportError(UserError):
    """A label map that cannot be exported as DICOM-SEG (a NIfTI study, no label, unreadable sources)."""


def _software_version() -> str:
    try:
        from sd_fsmis import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def export_problem(volume: Volume) -> str:
    """Why the study's masks cannot be exported as DICOM-SEG, in one line ("" when they can)."""
    meta = volume.metadata
    if meta.source_format not in ("dicom", "dicomdir") or not meta.files:
        fmt = {"nifti": "a NIfTI file", "": "this study"}.get(
            meta.source_format, f"a {meta.source_format} file"
        )
        return (
            f"DICOM-SEG needs a study opened from DICOM: {fmt} has no DICOM instances to reference; "
            "save the mask as NIfTI instead"
        )
    if not meta.frame_of_reference_uid:
        return (
            "DICOM-SEG cannot be exported: the series has no Frame of Reference UID, which a "
            "segmentation must share with its images; save the mask as NIfTI instead"
        )
    return ""


def export_notes(label_map: LabelMap, volume: Volume) -> list[str]:
    """What an export leaves out, to tell the user: mask voxels between the acquired slices of a series
    that was resampled to a regular grid (a DICOM-SEG can reference acquired images only)."""
    plan = volume.metadata.regularization
    if plan is None:
        return []
    between = voxels_between_acquired_slices(label_map.array, plan)
    if not between:
        return []
    return [
        f"{between} mask voxel(s) lie on grid slices between the acquired images (the series was resampled "
        "to a regular grid) and are not in the DICOM-SEG, which can reference acquired images only; the "
        "NIfTI mask keeps them"
    ]


def source_datasets(volume: Volume) -> list[pydicom.Dataset]:
    """The volume's DICOM instances (headers only), in slice order; :class:`DicomSegExportError` if none."""
    problem = export_problem(volume)
    if problem:
        raise DicomSegExportError(problem)
    files = list(volume.metadata.files)
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise StudyReadError(
                f"{f}: the source image cannot be read for DICOM-SEG export ({exc})"
            ) from exc
    plan = volume.metadata.regularization
    z = len(plan.planes) if plan is not None else volume.shape[0]
    if len(datasets) == 1:
        frames = int(getattr(datasets[0], "NumberOfFrames", 1) or 1)
        if frames != z:
            raise DicomSegExportError(f"the source image has {frames} frames, the volume {z} slices")
    elif len(datasets) != z:
        raise DicomSegExportError(f"the study has {len(datasets)} DICOM files for {z} slices")
    return datasets


def uncoded_names(label_map: LabelMap, labels: Sequence[int] | None = None) -> list[str]:
    """The names of the labels (present ones by default) that have no standard code: they would be
    exported as "Tissue" (3D Slicer's generic term), so the GUI offers to name them first."""
    values = label_map.present_labels() if labels is None else labels
    return [label_map.label_name(v) for v in values if find_structure(label_map.label_name(v)) is None]


def _segment_description(
    number: int, name: str, colour: tuple[int, int, int], algorithm: hd.AlgorithmIdentificationSequence | None
) -> hd.seg.SegmentDescription:
    structure = find_structure(name)
    if structure is not None:  # SNOMED CT: category (CID 7150), type (CID 7151), laterality (CID 244)
        category, prop = structure.category, structure.type
    else:  # a name without a standard code: 3D Slicer's generic "Tissue"; the label keeps the name
        category, prop = codes.SCT.Tissue, codes.SCT.Tissue
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=category,
        segmented_property_type=prop,
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            if algorithm is not None
            else hd.seg.SegmentAlgorithmTypeValues.MANUAL
        ),
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=name[:64],
        display_color=hd.color.CIELabColor.from_rgb(*(int(c) for c in colour)),
    )
    modifier = structure.modifier if structure is not None else None
    if modifier is not None:  # one of a pair: Kidney + Right, as dcmqi and TotalSegmentator code it
        item = description.SegmentedPropertyTypeCodeSequence[0]
        item.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(modifier)]
    return description


def export_dicom_seg(
    label_map: LabelMap,
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    labels: Sequence[int] | None = None,
    algorithm: tuple[str, str] | None = None,
    series_description: str = "Segmentation",
    series_number: int = 300,
    content_creator: str | None = None,
) -> Path:
    """Write ``label_map`` (on ``volume``'s grid) as a BINARY DICOM-SEG at ``path`` (atomically).

    ``labels``: the values to export (default: every label present), one segment each, named after the
    label. ``algorithm``: ``(name, version)`` of the model for a prediction (AUTOMATIC); None for a mask
    painted by hand (MANUAL). Returns the written path.
    """
    volume.geometry.require_match(label_map.geometry, what="mask", of="study")
    sources = source_datasets(volume)
    present = label_map.present_labels()
    values = [int(v) for v in (present if labels is None else labels)]
    if not values:
        raise MaskError("the mask is empty: there is no segment to export")
    missing = [v for v in values if v not in present]
    if missing:
        names = ", ".join(label_map.label_name(v) for v in missing)
        raise MaskError(f"nothing is painted for {names}: there is no segment to export")
    algo = None
    if algorithm is not None:
        name, version = algorithm
        algo = hd.AlgorithmIdentificationSequence(
            name=str(name)[:64] or "SD-FSMIS",
            family=codes.cid7162.ArtificialIntelligence,
            version=str(version)[:64] or "unknown",
        )
    # label-map style array: segment numbers 1..n in the order of ``values``
    lut = np.zeros(int(label_map.array.max()) + 1, dtype=np.uint16 if len(values) > 255 else np.uint8)
    for number, value in enumerate(values, start=1):
        lut[value] = number
    pixel_array = lut[label_map.array]  # [z, y, x] on the volume's grid
    plan = volume.metadata.regularization
    if plan is not None:  # back onto the acquired images: [acquired slices, rows, columns]
        on_grid = label_map.geometry.image_from_array(pixel_array)
        pixel_array = mask_on_acquired_slices(on_grid, plan)
        kept = set(np.unique(pixel_array).tolist())
        lost = [label_map.label_name(v) for number, v in enumerate(values, start=1) if number not in kept]
        if lost:
            raise MaskError(
                f"{', '.join(lost)} lies only between the acquired images of this resampled series: a "
                "DICOM-SEG can reference acquired images only; save the mask as NIfTI instead"
            )
    descriptions = [
        _segment_description(number, label_map.label_name(v), label_map.label(v).colour, algo)
        for number, v in enumerate(values, start=1)
    ]
    _fill_slice_thickness(sources, volume)
    try:
        seg = _segmentation(
            sources, pixel_array, descriptions, series_description, series_number, algo, content_creator
        )
    except (ValueError, AttributeError, TypeError) as exc:  # what the source images lack, in one line
        log.info("highdicom could not build the DICOM-SEG", exc_info=True)
        raise DicomSegExportError(
            f"DICOM-SEG cannot be built from these images ({one_line(exc)}); save the mask as NIfTI instead"
        ) from exc
    target = Path(path)
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    log.info("exported %d segment(s) as DICOM-SEG to %s", len(values), target)
    return target


def _fill_slice_thickness(sources: list[pydicom.Dataset], volume: Volume) -> None:
    """highdicom takes the SEG's slice thickness from the images: where they lack it (in memory only),
    the volume's slice step stands in."""
    for ds in sources:
        if getattr(ds, "SliceThickness", None) in (None, ""):
            ds.SliceThickness = float(volume.geometry.spacing[2])


def _segmentation(sources, pixel_array, descriptions, series_description, series_number, algo, creator):
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=_software_version(),
        device_serial_number="0",
        series_description=series_description[:64],
        content_label="SEGMENTATION",
        content_description=("automatic" if algo is not None else "manual") + " segmentation",
        content_creator_name=creator,
    )
