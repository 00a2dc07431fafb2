"""An opened study: plain objects with change events (napari's layer model, no Qt).

A :class:`Study` is an opened :class:`~sd_fsmis.core.volume.Volume` (with the path and series it came
from) and the :class:`~sd_fsmis.core.session.layers.LabelLayer` s drawn on it (painting, undo and display
live in :mod:`sd_fsmis.core.session.layers`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.labelmap import LabelMap, LabelSpec, make_labels
from sd_fsmis.core.jobs import CancelToken, ProgressCallback
from sd_fsmis.core.session import painting
from sd_fsmis.core.session.events import Events
from sd_fsmis.core.session.layers import LabelLayer, new_id
from sd_fsmis.core.volume import Volume

log = logging.getLogger(__name__)


class Study:
    """An opened volume and the label layers drawn on it.

    Events: ``layer_added(layer)``, ``layer_removed(layer)``, ``active_layer(layer | None)``,
    ``layer_changed(layer, event_name, *args)`` (any event of any of its layers), ``any``.
    """

    def __init__(
        self,
        volume: Volume,
        *,
        path: str | os.PathLike[str] = "",
        series_uid: str | None = None,
        study_id: str | None = None,
        name: str | None = None,
    ) -> None:
        self.id = study_id or new_id()
        self.volume = volume
        self.path = str(path or volume.metadata.source_path or "")
        self.series_uid = series_uid or (volume.metadata.series_instance_uid or None)
        self.name = name or _default_study_name(volume, self.path)
        self._layers: list[LabelLayer] = []
        self._active: LabelLayer | None = None
        self._forwarders: dict[str, Callable[..., None]] = {}
        self._window: tuple[float, float] | None = None
        self.events = Events("layer_added", "layer_removed", "active_layer", "layer_changed")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        series_uid: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> Study:
        """Open a DICOM folder / DICOMDIR / NIfTI file (one series of it) as a study (a job: run it in a
        worker, then hand the study to :meth:`Session.add_study` on the GUI thread)."""
        from sd_fsmis.core.io.loader import load_volume

        volume = load_volume(path, series_uid=series_uid, progress=progress, cancel=cancel)
        return cls(volume, path=path, series_uid=series_uid or volume.metadata.series_instance_uid or None)

    # ------------------------------------------------------------------------------------------- layers
    @property
    def geometry(self) -> Geometry:
        return self.volume.geometry

    @property
    def layers(self) -> tuple[LabelLayer, ...]:
        return tuple(self._layers)

    @property
    def active_layer(self) -> LabelLayer | None:
        return self._active

    def set_active_layer(self, layer: LabelLayer | None) -> None:
        if layer is not None and layer not in self._layers:
            raise ValueError(f"{layer!r} is not a layer of this study")
        if layer is not self._active:
            self._active = layer
            self.events.active_layer.emit(layer)

    def layer(self, key: str) -> LabelLayer:
        """The layer with id or name ``key``; raises KeyError."""
        for layer in self._layers:
            if layer.id == key:
                return layer
        for layer in self._layers:
            if layer.name == key:
                return layer
        raise KeyError(f"no layer {key!r} in study {self.name!r}")

    def unique_layer_name(self, name: str) -> str:
        """``name``, or ``name (2)``, ``name (3)``... when a layer already has it."""
        taken = {layer.name for layer in self._layers}
        if name not in taken:
            return name
        n = 2
        while f"{name} ({n})" in taken:
            n += 1
        return f"{name} ({n})"

    def add_layer(
        self,
        name: str = "mask",
        label_map: LabelMap | None = None,
        *,
        labels: LabelSpec = None,
        kind: str = "manual",
        activate: bool = True,
        layer: LabelLayer | None = None,
        **layer_options: object,
    ) -> LabelLayer:
        """Add a label layer (an empty one by default) on this study's grid; its name is made unique."""
        if layer is None:
            if label_map is None:
                label_map = LabelMap.empty(self.geometry, make_labels(labels))
            else:
                self.geometry.require_match(label_map.geometry, what=f"mask {name!r}", of="study")
            layer = LabelLayer(label_map, self.unique_layer_name(name), kind=kind, **layer_options)  # type: ignore[arg-type]
        else:
            self.geometry.require_match(layer.geometry, what=f"mask {layer.name!r}", of="study")
            layer._set_name(self.unique_layer_name(layer.name))
        if any(existing.id == layer.id for existing in self._layers):
            raise ValueError(f"a layer with id {layer.id} is already in the study")
        self._layers.append(layer)
        forward = partial(self._forward, layer)
        self._forwarders[layer.id] = forward
        layer.events.any.connect(forward)
        self.events.layer_added.emit(layer)
        if activate or self._active is None:
            self.set_active_layer(layer)
        return layer

    def load_layer(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        kind: str = "manual",
        resample: bool = False,
        labels: LabelSpec = None,
        activate: bool = True,
    ) -> LabelLayer:
        """Open a mask file (NIfTI...) as a new layer, on this study's grid (or ``resample`` onto it)."""
        label_map = LabelMap.load(
            path, like=self.geometry, resample=resample, labels=labels, like_name="study"
        )
        layer_name = name or _mask_name(Path(path))
        layer = LabelLayer(label_map, self.unique_layer_name(layer_name), kind=kind, source_path=str(path))
        return self.add_layer(layer=layer, activate=activate)

    def remove_layer(self, layer: LabelLayer) -> None:
        if layer not in self._layers:
            raise ValueError(f"{layer!r} is not a layer of this study")
        index = self._layers.index(layer)
        self._layers.remove(layer)
        forward = self._forwarders.pop(layer.id, None)
        if forward is not None:
            layer.events.any.disconnect(forward)
        self.events.layer_removed.emit(layer)
        if self._active is layer:
            self.set_active_layer(self._layers[min(index, len(self._layers) - 1)] if self._layers else None)

    def rename_layer(self, layer: LabelLayer, name: str) -> str:
        """Rename (made unique among the study's layers); returns the name given."""
        name = str(name).strip()
        if not name:
            raise UserError("a mask needs a name")
        if name == layer.name:
            return name
        others = {other.name for other in self._layers if other is not layer}
        final, n = name, 2
        while final in others:
            final = f"{name} ({n})"
            n += 1
        layer._set_name(final)
        return final

    def _forward(self, layer: LabelLayer, event_name: str, *args: object) -> None:
        self.events.layer_changed.emit(layer, event_name, *args)

    # ------------------------------------------------------------------------------------------- image
    def image_plane(self, axis: int, index: int) -> np.ndarray:
        """The image slice (a view) along ``axis`` (0 axial, 1 coronal, 2 sagittal)."""
        return painting.plane_view(self.volume.array, axis, index)

    def auto_window(self) -> tuple[float, float]:
        """A display range from the image's 0.5th..99.5th percentiles (cached; a sample of the voxels)."""
        if self._window is None:
            arr = self.volume.array
            step = max(1, arr.size // 2_000_000)
            sample = arr.reshape(-1)[::step].astype(np.float32)
            sample = sample[np.isfinite(sample)]
            if sample.size == 0:
                self._window = (0.0, 1.0)
            else:
                lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
                self._window = (lo, hi if hi > lo else lo + 1.0)
        return self._window

    def __repr__(self) -> str:
        return f"Study({self.name!r}, shape={self.volume.shape}, id={self.id!r}, layers={len(self._layers)})"


def _default_study_name(volume: Volume, path: str) -> str:
    meta = volume.metadata
    if meta.series_description:
        return meta.series_description
    if path:
        p = Path(path)
        name = p.name
        for suffix in (".nii.gz", ".nii"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name or str(p)
    return "study"


def _mask_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
