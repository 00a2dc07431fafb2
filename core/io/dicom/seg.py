"""Export a label map as DICOM-SEG (highdicom) for PACS: one binary segment per label, referencing the study.

The SEG references the source series' instances (read with pydicom from the volume's
``metadata.files``, in slice order), so viewers place it on the images. A painted mask is exported with
algorithm type MANUAL; a prediction with AUTOMATIC and the algorithm's name and version (our model). A study
opened from NIfTI has no DICOM instances to reference: exporting it raises a :class:`UserError`.
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
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.volume import Volume

log = logging.getLogger(__name__)

MANUFACTURER = "SD-FSMIS"
MODEL_NAME = "SD-FSMIS desktop"

#: SNOMED CT codes of the organs our label names use (lower-case name -> code keyword of codes.SCT).
_ORGAN_CODES = {
    "liver": "Liver",
    "spleen": "Spleen",
    "kidney": "Kidney",
    "right kidney": "Kidney",
    "left kidney": "Kidney",
    "gallbladder": "Gallbladder",
    "stomach": "Stomach",
    "pancreas": "Pancreas",
    "aorta": "Aorta",
}
_RIGHT = hd.sr.CodedConcept("24028007", "SCT", "Right")
_LEFT = hd.sr.CodedConcept("7771000", "SCT", "Left")


class DicomSegExportError(UserError):
    """A label map that cannot be exported as DICOM-SEG (a NIfTI study, no label, unreadable sources)."""


def _software_version() -> str:
    try:
        from sd_fsmis import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def source_datasets(volume: Volume) -> list[pydicom.Dataset]:
    """The volume's DICOM instances (headers only), in slice order; :class:`DicomSegExportError` if none."""
    meta = volume.metadata
    files = list(meta.files)
    if meta.source_format not in ("dicom", "dicomdir") or not files:
        fmt = {"nifti": "a NIfTI file", "": "this study"}.get(
            meta.source_format, f"a {meta.source_format} file"
        )
        raise DicomSegExportError(
            f"DICOM-SEG needs a study opened from DICOM: {fmt} has no DICOM instances to reference; "
            "save the mask as NIfTI instead"
        )
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise StudyReadError(
                f"{f}: the source image cannot be read for DICOM-SEG export ({exc})"
            ) from exc
    z = volume.shape[0]
    if len(datasets) == 1:
        frames = int(getattr(datasets[0], "NumberOfFrames", 1) or 1)
        if frames != z:
            raise DicomSegExportError(f"the source image has {frames} frames, the volume {z} slices")
    elif len(datasets) != z:
        raise DicomSegExportError(f"the study has {len(datasets)} DICOM files for {z} slices")
    return datasets


def _segment_description(
    number: int, name: str, colour: tuple[int, int, int], algorithm: hd.AlgorithmIdentificationSequence | None
) -> hd.seg.SegmentDescription:
    keyword = _ORGAN_CODES.get(name.strip().lower())
    if keyword is not None:
        category, prop = codes.SCT.AnatomicalStructure, getattr(codes.SCT, keyword)
    else:
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
    side = name.strip().lower().split(" ")[0]
    if keyword is not None and side in ("right", "left"):
        item = description.SegmentedPropertyTypeCodeSequence[0]
        item.SegmentedPropertyTypeModifierCodeSequence = [_RIGHT if side == "right" else _LEFT]
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
    pixel_array = lut[label_map.array]
    descriptions = [
        _segment_description(number, label_map.label_name(v), label_map.label(v).colour, algo)
        for number, v in enumerate(values, start=1)
    ]
    seg = hd.seg.Segmentation(
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
        content_creator_name=content_creator,
    )
    target = Path(path)
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    log.info("exported %d segment(s) as DICOM-SEG to %s", len(values), target)
    return target
