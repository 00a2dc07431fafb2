"""A volume: voxel array in modality units, its geometry, its metadata and load warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.slice_numbering import SliceNumbering, slice_numbering

if TYPE_CHECKING:
    from sd_fsmis.core.io.dicom.regularize import Regularization


@dataclass
class VolumeMetadata:
    """What the study says about itself (DICOM tags where present; mostly empty for NIfTI)."""

    modality: str = ""
    patient_id: str = ""
    patient_name: str = ""
    study_description: str = ""
    series_description: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    window_center: float | None = None
    window_width: float | None = None
    source_path: str = ""
    source_format: str = ""  # "dicom", "dicomdir", "nifti", ...
    files: list[str] = field(default_factory=list)  # DICOM files in slice order
    #: set when the series' slices were irregular (missing, uneven, tilted) and the volume was resampled to
    #: a regular grid: where each file's slice lies on it (``files[i]`` is acquired slice ``i``)
    regularization: Regularization | None = None
    #: False when the file gives no patient orientation (a DICOM image without Image Orientation (Patient),
    #: such as a planar NM or X-ray; a picture; a NIfTI without qform and sform): its direction is then a
    #: stand-in, and no anatomical labels (axial, R/L, A/P) may be shown for it
    oriented: bool = True

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("files")
        d["regularization"] = self.regularization.note if self.regularization is not None else None
        return d


@dataclass
class Volume:
    """A 3-D image: ``array`` is ``(slice, row, column)`` in modality units (CT in HU)."""

    array: np.ndarray
    geometry: Geometry
    metadata: VolumeMetadata = field(default_factory=VolumeMetadata)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume array must be 3-D (slice, row, column), got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"array shape {self.array.shape} does not match geometry {self.geometry.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @classmethod
    def from_sitk(
        cls, image: sitk.Image, metadata: VolumeMetadata | None = None, warnings: list[str] | None = None
    ) -> Volume:
        """Wrap a 3-D SimpleITK image (its pixels are copied into a numpy array)."""
        return cls(
            array=sitk.GetArrayFromImage(image),
            geometry=Geometry.from_image(image),
            metadata=metadata or VolumeMetadata(),
            warnings=list(warnings or []),
        )

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with this volume's pixels and geometry."""
        return self.geometry.image_from_array(self.array)

    def slice_numbering(self, axis: int = 0) -> SliceNumbering:
        """How the slices along numpy ``axis`` are numbered and placed for the person (one convention for
        every file format: :mod:`sd_fsmis.core.slice_numbering`)."""
        return slice_numbering(self.geometry, axis, self.metadata.oriented)

    def slice(self, index: int) -> np.ndarray:
        """One axial slice ``(row, column)``."""
        return self.array[index]
