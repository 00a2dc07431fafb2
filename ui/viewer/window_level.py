"""Window/level: the presets clinicians know, automatic windows, and the mouse-drag arithmetic.

A window is ``(center, width)`` in modality units (HU for CT): values below ``center - width / 2`` show
black, above ``center + width / 2`` white. Presets are quoted as width/level, as radiologists say them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A display window in modality units."""

    center: float
    width: float

    def levels(self) -> tuple[float, float]:
        """``(low, high)`` display levels for an image item."""
        return (self.center - self.width / 2.0, self.center + self.width / 2.0)


#: CT presets (width/level): abdomen 400/40, soft tissue 350/40, lung 1500/-600, bone 1500/300, brain 80/40.
CT_PRESETS: dict[str, Window] = {
    "CT abdomen": Window(40.0, 400.0),
    "Soft tissue": Window(40.0, 350.0),
    "Lung": Window(-600.0, 1500.0),
    "Bone": Window(300.0, 1500.0),
    "Brain": Window(40.0, 80.0),
}
FROM_DICOM = "From DICOM tags"
AUTO = "Auto"
#: Fraction of the data range one pixel of mouse drag changes the width or the level by.
DRAG_FRACTION_PER_PIXEL = 1.0 / 1000.0
_SAMPLES = 1_000_000


def preset_names(modality: str = "", has_dicom_window: bool = False) -> list[str]:
    """Preset names to offer: CT presets for CT (or unknown modality), then DICOM tags, then auto."""
    names = [] if modality.upper() not in ("", "CT") else list(CT_PRESETS)
    if has_dicom_window:
        names.append(FROM_DICOM)
    names.append(AUTO)
    return names


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_preset(name: str) -> Window | None:
    """The CT preset called ``name`` (case, spaces, dashes ignored: "ct-abdomen", "lung"); None if unknown."""
    wanted = _key(name)
    for preset, window in CT_PRESETS.items():
        if _key(preset) == wanted or _key(preset.removeprefix("CT ")) == wanted:
            return window
    return None


def _sample(array: np.ndarray, max_samples: int = _SAMPLES) -> np.ndarray:
    """A regular sub-sample of ``array`` with at most about ``max_samples`` values (fast on 80 M voxels)."""
    step = max(1, int(np.ceil((array.size / max_samples) ** (1.0 / array.ndim))))
    sample = array[(slice(None, None, step),) * array.ndim]
    return np.asarray(sample, dtype=np.float64).ravel()


def auto_window(array: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> Window:
    """The window spanning the ``low_pct`` .. ``high_pct`` percentiles (robust to a few hot voxels; MR)."""
    sample = _sample(array)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return Window(0.5, 1.0)
    lo, hi = np.percentile(sample, [low_pct, high_pct])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return Window((lo + hi) / 2.0, hi - lo)


def data_range(array: np.ndarray) -> float:
    """``max - min`` of a sub-sample of ``array`` (1 for a constant volume): the scale of the W/L drag."""
    sample = _sample(array)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 1.0
    span = float(sample.max() - sample.min())
    return span if span > 0 else 1.0


def resolve_preset(name: str, array: np.ndarray | None = None, dicom: Window | None = None) -> Window:
    """The window of preset ``name``: a CT preset, :data:`FROM_DICOM` or :data:`AUTO`.

    Raises ``ValueError`` for an unknown name, or for "From DICOM tags" when the study has no window tags.
    """
    key = _key(name)
    if key in (_key(FROM_DICOM), "dicom", "fromdicom"):
        if dicom is None:
            raise ValueError("this study has no window centre/width tags")
        return dicom
    if key == _key(AUTO):
        if array is None:
            raise ValueError("the automatic window needs the volume")
        return auto_window(array)
    window = find_preset(name)
    if window is None:
        raise ValueError(
            f"unknown window preset {name!r}; known: {', '.join([*CT_PRESETS, FROM_DICOM, AUTO])}"
        )
    return window


def default_window(array: np.ndarray, modality: str = "", dicom: Window | None = None) -> Window:
    """The window a study opens with: its DICOM tags, else CT abdomen for CT, else automatic."""
    if dicom is not None and dicom.width > 0:
        return dicom
    if modality.upper() == "CT":
        return CT_PRESETS["CT abdomen"]
    return auto_window(array)


def drag_window(start: Window, dx: float, dy: float, value_range: float) -> Window:
    """The window after a right-drag of ``(dx, dy)`` screen pixels from ``start`` (ITK-SNAP / Slicer).

    Dragging right widens the window (less contrast), left narrows it; dragging up lowers the level
    (brighter image), down raises it. One pixel changes either by ``value_range / 1000``.
    """
    step = max(float(value_range), 1e-6) * DRAG_FRACTION_PER_PIXEL
    min_width = max(float(value_range), 1e-6) * 1e-4
    width = max(start.width + dx * step, min_width)
    return Window(start.center + dy * step, width)
