"""A label layer: a :class:`~sd_fsmis.core.io.labelmap.LabelMap` being edited, with its display
properties (name, opacity, visibility), the label being painted, and its undo
:class:`~sd_fsmis.core.session.history.History`.

Painting goes through the layer, so that every edit is undoable and announced::

    stroke = layer.begin_stroke(axis=0, index=12, radius=6)   # mouse press
    stroke.add_point((100, 120)); stroke.add_point((104, 131))  # mouse moves
    stroke.finish()                                            # release: one undo step
    layer.undo()

``layer.events.data`` fires with the changed region ``(z, y, x)`` slices (None: all of it) after each dab,
fill, undo or redo; the view redraws only that region.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from sd_fsmis.core.errors import MaskError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.labelmap import MAX_LABEL, Label, LabelMap
from sd_fsmis.core.session import painting
from sd_fsmis.core.session.events import Events
from sd_fsmis.core.session.history import DEFAULT_MAX_STEPS, History, Region, normalize_region
from sd_fsmis.core.session.painting import Box, Point

#: What a layer holds: painted by the user, predicted by a model, or a reference (ground truth).
LAYER_KINDS = ("manual", "prediction", "reference")


TOOLS = ("brush", "eraser")


def new_id() -> str:
    """A short random id for studies, layers, support entries and runs (unique within a session)."""
    return uuid.uuid4().hex[:12]


class Stroke:
    """One brush or eraser stroke (mouse press ... release) on one plane of a layer: one undo step.

    The plane is copied once at the press; each :meth:`add_point` paints the segment from the previous
    point and announces the touched region; :meth:`finish` records the union of the touched boxes, before
    and after, as one history step.
    """

    def __init__(
        self,
        layer: LabelLayer,
        axis: int,
        index: int,
        *,
        tool: str = "brush",
        label: int | None = None,
        radius: float = 5.0,
        overwrite: bool = True,
        only_label: int | None = None,
        spacing: tuple[float, float] | None = None,
    ) -> None:
        if tool not in TOOLS:
            raise ValueError(f"tool must be one of {TOOLS}, got {tool!r}")
        self.layer = layer
        self.axis = int(axis)
        self.index = int(index)
        self.tool = tool
        self.label = int(layer.selected_label if label is None else label)
        if tool == "brush":
            layer.ensure_label_fits(self.label)
        self.radius = float(radius)
        self.overwrite = bool(overwrite)
        self.only_label = only_label
        self.spacing = spacing or painting.plane_spacing(layer.geometry.spacing, self.axis)
        self._plane = painting.plane_view(layer.array, self.axis, self.index)
        self._before = self._plane.copy()
        self._box: Box | None = None
        self._last: Point | None = None
        self.finished = False

    @property
    def box(self) -> Box | None:
        """The union of the boxes touched so far (plane coordinates)."""
        return self._box

    def add_point(self, point: Point) -> Region | None:
        """Paint (or erase) from the previous point to ``point`` (a dab for the first point)."""
        if self.finished:
            raise RuntimeError("the stroke is finished")
        start = self._last if self._last is not None else point
        self._last = point
        if self.tool == "brush":
            box = painting.paint_stroke(
                self._plane,
                start,
                point,
                self.radius,
                self.label,
                spacing=self.spacing,
                overwrite=self.overwrite,
            )
        else:
            box = painting.erase_stroke(
                self._plane, start, point, self.radius, only_label=self.only_label, spacing=self.spacing
            )
        if box is None:
            return None
        self._box = box.union(self._box)
        region = painting.box_to_region(self.axis, self.index, box)
        self.layer._data_changed(region)
        return region

    def finish(self) -> bool:
        """End the stroke (mouse release); returns True when it changed something (and can be undone)."""
        if self.finished:
            return False
        self.finished = True
        self.layer._stroke = None
        if self._box is None:
            return False
        region = painting.box_to_region(self.axis, self.index, self._box)
        before = self._before[self._box.slices].reshape(self.layer.array[region].shape)
        return self.layer._record(region, before, self.tool)

    def cancel(self) -> None:
        """Undo what the stroke painted so far, without an undo step (Escape during a stroke)."""
        if self.finished:
            return
        self.finished = True
        self.layer._stroke = None
        if self._box is not None:
            self._plane[self._box.slices] = self._before[self._box.slices]
            self.layer._data_changed(painting.box_to_region(self.axis, self.index, self._box))

    def __enter__(self) -> Stroke:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.cancel()


class LabelLayer:
    """A label map being edited, with its display properties and undo history.

    Events (``layer.events.<name>``): ``data(region | None)`` after each change of voxels; ``name``,
    ``opacity``, ``visible``, ``labels`` (the label table), ``selected_label``, ``saved(path)``;
    ``history`` when what can be undone/redone changed; ``any(name, *args)`` after each of them.
    """

    def __init__(
        self,
        label_map: LabelMap,
        name: str = "mask",
        *,
        kind: str = "manual",
        opacity: float = 0.5,
        visible: bool = True,
        layer_id: str | None = None,
        max_undo: int = DEFAULT_MAX_STEPS,
        source_path: str | None = None,
    ) -> None:
        if kind not in LAYER_KINDS:
            raise ValueError(f"kind must be one of {LAYER_KINDS}, got {kind!r}")
        self.id = layer_id or new_id()
        self.label_map = label_map
        self._name = str(name)
        self.kind = kind
        self._opacity = _clip_opacity(opacity)
        self._visible = bool(visible)
        present = label_map.labels or {}
        self._selected_label = next(iter(present), 1)
        self.source_path = source_path
        #: incremented at every change of the voxels: the autosave writes a layer only when it changed
        self.data_version = 0
        self.saved_version = 0
        self.events = Events(
            "data", "name", "opacity", "visible", "labels", "selected_label", "saved", "history"
        )
        self.history = History(label_map.array, max_steps=max_undo)
        self.history.events.changed.connect(self._history_changed)
        self._stroke: Stroke | None = None

    # ---------------------------------------------------------------------------------------- properties
    @property
    def array(self) -> np.ndarray:
        """The voxels ``(z, y, x)`` uint8/uint16, edited in place (read it, paint through the layer)."""
        return self.label_map.array

    @property
    def geometry(self) -> Geometry:
        return self.label_map.geometry

    @property
    def labels(self) -> dict[int, Label]:
        return self.label_map.labels

    @property
    def name(self) -> str:
        return self._name

    def _set_name(self, name: str) -> None:  # through Study.rename_layer (names are unique in a study)
        if name != self._name:
            self._name = name
            self.events.name.emit(name)

    @property
    def opacity(self) -> float:
        return self._opacity

    @opacity.setter
    def opacity(self, value: float) -> None:
        value = _clip_opacity(value)
        if value != self._opacity:
            self._opacity = value
            self.events.opacity.emit(value)

    @property
    def visible(self) -> bool:
        return self._visible

    @visible.setter
    def visible(self, value: bool) -> None:
        value = bool(value)
        if value != self._visible:
            self._visible = value
            self.events.visible.emit(value)

    @property
    def selected_label(self) -> int:
        """The label value the brush and fill paint with."""
        return self._selected_label

    @selected_label.setter
    def selected_label(self, value: int) -> None:
        value = int(value)
        if not 1 <= value <= MAX_LABEL:
            raise MaskError(f"label value {value} is outside 1..{MAX_LABEL}")
        if value != self._selected_label:
            self._selected_label = value
            self.events.selected_label.emit(value)

    @property
    def modified(self) -> bool:
        """True when the voxels changed since the layer was last saved (or loaded)."""
        return self.data_version != self.saved_version

    # ------------------------------------------------------------------------------------------- labels
    def set_label(self, label: Label) -> None:
        """Add or change a label's name, colour or visibility."""
        self.ensure_label_fits(label.value)
        self.label_map.set_label(label)
        self.events.labels.emit(dict(self.labels))

    def add_label(
        self, name: str, colour: tuple[int, int, int] | None = None, *, select: bool = True
    ) -> Label:
        """A new label with the next free value (ITK-SNAP's colour for it unless given); selects it."""
        used = set(self.labels) | set(self.label_map.present_labels())
        value = next(v for v in range(1, MAX_LABEL + 1) if v not in used)
        label = Label.default(value, name) if colour is None else Label(value, name, colour)
        self.set_label(label)
        if select:
            self.selected_label = value
        return label

    def remove_label(self, value: int) -> None:
        """Forget a label's table entry (its voxels, if any, stay; clear them with :meth:`clear_label`)."""
        if int(value) in self.labels:
            del self.label_map.labels[int(value)]
            self.events.labels.emit(dict(self.labels))

    def label_value(self, name: str) -> int | None:
        """The value of the label called ``name`` (case-insensitive), None if there is none."""
        for value, label in self.labels.items():
            if label.name.lower() == name.lower():
                return value
        return None

    def ensure_label_fits(self, value: int) -> None:
        """Widen a uint8 array to uint16 when a label above 255 is painted."""
        if int(value) > 255 and self.array.dtype == np.uint8:
            if self._stroke is not None:
                raise RuntimeError("cannot widen the label array during a stroke")
            self.label_map.array = self.label_map.array.astype(np.uint16)
            self.history.array = self.label_map.array

    # ----------------------------------------------------------------------------------------- painting
    def begin_stroke(
        self,
        axis: int,
        index: int,
        *,
        tool: str = "brush",
        label: int | None = None,
        radius: float = 5.0,
        overwrite: bool = True,
        only_label: int | None = None,
    ) -> Stroke:
        """Start a brush or eraser stroke on slice ``index`` along ``axis`` (0 axial, 1 coronal, 2 sagittal).

        ``label``: the value painted (default :attr:`selected_label`); ``overwrite=False`` leaves other
        labels alone; for the eraser, ``only_label`` erases only that label. A stroke still open is finished.
        """
        if self._stroke is not None:
            self._stroke.finish()
        self._stroke = Stroke(
            self,
            axis,
            index,
            tool=tool,
            label=label,
            radius=radius,
            overwrite=overwrite,
            only_label=only_label,
        )
        return self._stroke

    def paint_line(
        self,
        axis: int,
        index: int,
        points: list[Point],
        *,
        tool: str = "brush",
        label: int | None = None,
        radius: float = 5.0,
        overwrite: bool = True,
        only_label: int | None = None,
    ) -> bool:
        """A whole stroke through ``points`` at once (one undo step); True when it changed something."""
        stroke = self.begin_stroke(
            axis, index, tool=tool, label=label, radius=radius, overwrite=overwrite, only_label=only_label
        )
        try:
            for p in points:
                stroke.add_point(p)
        except BaseException:
            stroke.cancel()
            raise
        return stroke.finish()

    def fill(
        self,
        axis: int,
        index: int,
        seed: Point,
        *,
        label: int | None = None,
        image: np.ndarray | None = None,
        intensity_range: tuple[float, float] | None = None,
        overwrite: bool = True,
    ) -> Region | None:
        """Flood-fill the 4-connected region at ``seed`` on one slice (one undo step).

        ``image``: the study's volume array ``(z, y, x)`` (needed with ``intensity_range``, which bounds the
        fill to voxels whose intensity lies in ``(low, high)``). Returns the changed region, or None.
        """
        value = int(self.selected_label if label is None else label)
        self.ensure_label_fits(value)
        plane = painting.plane_view(self.array, axis, index)
        image_plane = None if image is None else painting.plane_view(image, axis, index)
        before = plane.copy()
        box = painting.flood_fill(
            plane, seed, value, image=image_plane, intensity_range=intensity_range, overwrite=overwrite
        )
        if box is None:
            return None
        region = painting.box_to_region(axis, index, box)
        self._record(region, before[box.slices].reshape(self.array[region].shape), "fill")
        self._data_changed(region)
        return region

    def set_region(self, region: Region, values: np.ndarray | int, name: str = "edit") -> bool:
        """Write ``values`` into ``array[region]`` as one undo step (e.g. "clear slice", a pasted mask)."""
        region = normalize_region(region, self.array.shape)
        values = np.asarray(values)
        if values.size and values.max(initial=0) > 255:
            self.ensure_label_fits(int(values.max()))
        before = self.array[region].copy()
        self.array[region] = values
        changed = self._record(region, before, name)
        if changed:
            self._data_changed(region)
        return changed

    def replace_array(self, array: np.ndarray, name: str = "replace") -> bool:
        """Replace every voxel (same shape) as one undo step."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise MaskError(f"a mask of shape {array.shape} cannot replace one of shape {self.array.shape}")
        return self.set_region((slice(None),) * 3, array, name)  # type: ignore[arg-type]

    def clear_label(self, value: int, name: str = "clear label") -> bool:
        """Set every voxel of ``value`` to background (one undo step)."""
        mask = self.array == int(value)
        if not mask.any():
            return False
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        region = (slice(int(zs[0]), int(zs[-1]) + 1), slice(None), slice(None))
        values = np.where(mask[region], 0, self.array[region]).astype(self.array.dtype)
        return self.set_region(region, values, name)  # type: ignore[arg-type]

    # -------------------------------------------------------------------------------------- undo, redo
    @property
    def can_undo(self) -> bool:
        return self.history.can_undo

    @property
    def can_redo(self) -> bool:
        return self.history.can_redo

    def undo(self) -> Region | None:
        """Ctrl+Z: returns the region restored (None when there was nothing to undo)."""
        if self._stroke is not None:
            self._stroke.finish()
        region = self.history.undo()
        if region is not None:
            self._data_changed(region)
        return region

    def redo(self) -> Region | None:
        """Ctrl+Shift+Z."""
        if self._stroke is not None:
            self._stroke.finish()
        region = self.history.redo()
        if region is not None:
            self._data_changed(region)
        return region

    # -------------------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as NIfTI (+ label table sidecar), atomically; the layer is then not :attr:`modified`."""
        out = self.label_map.save(path)
        self.source_path = str(out)
        self.saved_version = self.data_version
        self.events.saved.emit(str(out))
        return out

    def copy_label_map(self) -> LabelMap:
        """A copy of the label map (for a background job that must not see later edits)."""
        return self.label_map.copy()

    def binary(self, value: int) -> np.ndarray:
        return self.array == int(value)

    # ----------------------------------------------------------------------------------------- internal
    def _record(self, region: Region, before: np.ndarray, name: str) -> bool:
        return self.history.record(region, before, name)

    def _data_changed(self, region: Region | None) -> None:
        self.data_version += 1
        self.events.data.emit(region)

    def _history_changed(self) -> None:
        self.events.history.emit()

    def __repr__(self) -> str:
        return f"LabelLayer({self.name!r}, kind={self.kind!r}, shape={self.array.shape}, id={self.id!r})"


def _clip_opacity(value: float) -> float:
    return float(min(1.0, max(0.0, float(value))))
