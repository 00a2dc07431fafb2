"""The support set: the annotated slices that show the model what to segment.

Each :class:`SupportEntry` is one axial slice of one label layer of an open study, for one label ("this
slice as support"). Entries may come from any open study: study A's liver can serve to segment study B.
K-shot = ``len(support_set)``. An entry refers to its layer *live* (study id, layer id, slice, label value):
painting more on that slice refines the support; :func:`support_groups` reads the masks when the
segmentation starts, and re-checks that every slice still holds its label.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from skimage.transform import resize

from sd_fsmis.core.errors import MaskError
from sd_fsmis.core.session.events import Events
from sd_fsmis.core.session.layers import LabelLayer, new_id
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.volume import Volume

THUMBNAIL_SIZE = 64


@dataclass(eq=False)
class SupportEntry:
    """One support example: slice ``slice_index`` of layer ``layer_id`` of study ``study_id``, label value."""

    study_id: str
    layer_id: str
    slice_index: int
    label_value: int
    label_name: str
    #: ``[64, 64]`` uint8: the image slice, windowed, square-padded (for the support panel)
    thumbnail: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((64, 64), np.uint8))
    #: ``[64, 64]`` bool: the label on that slice, same framing as the thumbnail
    thumbnail_mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((64, 64), bool))
    id: str = field(default_factory=new_id)

    def key(self) -> tuple[str, str, int, int]:
        return (self.study_id, self.layer_id, self.slice_index, self.label_value)

    def to_dict(self) -> dict:
        """What the autosave keeps (thumbnails are recomputed on restore)."""
        return {
            "id": self.id,
            "study_id": self.study_id,
            "layer_id": self.layer_id,
            "slice_index": self.slice_index,
            "label_value": self.label_value,
            "label_name": self.label_name,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> SupportEntry:
        return cls(
            study_id=str(d["study_id"]),
            layer_id=str(d["layer_id"]),
            slice_index=int(d["slice_index"]),
            label_value=int(d["label_value"]),
            label_name=str(d.get("label_name", "")),
            id=str(d.get("id") or new_id()),
        )


@dataclass
class SupportGroup:
    """The support examples taken from one label layer of one study, in the form the segmentation job uses.

    ``mask`` is a fresh ``[Z, H, W]`` bool array (``layer == label``), so later painting does not reach a
    running job; ``slices`` are the support slice indices, ascending.
    """

    study_id: str
    layer_id: str
    volume: Volume
    mask: np.ndarray
    slices: list[int]
    label_value: int
    label_name: str
    #: True when the support study is the query study itself (the engine may propagate from it)
    from_query: bool = False
    #: provenance shown in run records: the study's path (and series)
    source: str = ""


def make_thumbnail(
    image_slice: np.ndarray, mask_slice: np.ndarray, window: tuple[float, float], size: int = THUMBNAIL_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size x size`` uint8 picture of ``image_slice`` (windowed) and the bool mask in the same frame."""
    h, w = image_slice.shape
    n = max(h, w)
    pad = ((n - h) // 2, n - h - (n - h) // 2), ((n - w) // 2, n - w - (n - w) // 2)
    lo, hi = window
    scaled = np.clip((np.asarray(image_slice, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    scaled = np.pad(scaled, pad)
    mask = np.pad(np.asarray(mask_slice, dtype=bool), pad)
    picture = resize(scaled, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    small_mask = resize(mask.astype(np.float32), (size, size), order=1, anti_aliasing=False) >= 0.5
    if mask.any() and not small_mask.any():  # a tiny structure still shows
        small_mask = resize(mask, (size, size), order=0, anti_aliasing=False).astype(bool)
    return np.round(picture * 255).astype(np.uint8), small_mask


class SupportSet:
    """The support examples, in the order they were added.

    Events: ``added(entry)``, ``removed(entry)``, ``updated(entry)`` (thumbnail refreshed), ``any``.
    """

    def __init__(self) -> None:
        self._entries: list[SupportEntry] = []
        self.events = Events("added", "removed", "updated")

    # ------------------------------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SupportEntry]:
        return iter(list(self._entries))

    def __getitem__(self, index: int) -> SupportEntry:
        return self._entries[index]

    @property
    def entries(self) -> tuple[SupportEntry, ...]:
        return tuple(self._entries)

    @property
    def k(self) -> int:
        """K of K-shot."""
        return len(self._entries)

    def get(self, entry_id: str) -> SupportEntry:
        for entry in self._entries:
            if entry.id == entry_id:
                return entry
        raise KeyError(f"no support example {entry_id!r}")

    def label_names(self) -> list[str]:
        """The distinct label names of the entries, in order of first appearance."""
        seen: dict[str, None] = {}
        for entry in self._entries:
            seen.setdefault(entry.label_name, None)
        return list(seen)

    def find(self, study_id: str, layer_id: str, slice_index: int, label_value: int) -> SupportEntry | None:
        key = (study_id, layer_id, int(slice_index), int(label_value))
        return next((e for e in self._entries if e.key() == key), None)

    # ------------------------------------------------------------------------------------------ changes
    def add(
        self, study: Study, layer: LabelLayer, slice_index: int, label_value: int | None = None
    ) -> SupportEntry:
        """Make axial slice ``slice_index`` of ``layer`` a support (label ``label_value``, default: selected).

        Raises :class:`MaskError` when the slice does not hold the label or is already a support.
        """
        if layer not in study.layers:
            raise ValueError(f"{layer!r} is not a layer of study {study.name!r}")
        value = int(layer.selected_label if label_value is None else label_value)
        z = int(slice_index)
        if not 0 <= z < layer.array.shape[0]:
            raise MaskError(f"slice {z} is outside the study (0..{layer.array.shape[0] - 1})")
        name = layer.label_map.label_name(value)
        number = study.volume.slice_numbering().number(z)  # as the viewer shows it
        if not (layer.array[z] == value).any():
            raise MaskError(f"slice {number} holds no {name}: paint it there first")
        if self.find(study.id, layer.id, z, value) is not None:
            raise MaskError(f"slice {number} of {study.name} is already a support example for {name}")
        entry = SupportEntry(study.id, layer.id, z, value, name)
        _fill_thumbnail(entry, study, layer)
        self._entries.append(entry)
        self.events.added.emit(entry)
        return entry

    def insert_entry(self, entry: SupportEntry) -> None:
        """Add an entry made elsewhere (the autosave's restore); no validation."""
        self._entries.append(entry)
        self.events.added.emit(entry)

    def remove(self, entry: SupportEntry | str) -> None:
        entry = self.get(entry) if isinstance(entry, str) else entry
        if entry in self._entries:
            self._entries.remove(entry)
            self.events.removed.emit(entry)

    def remove_study(self, study_id: str) -> None:
        """Remove the entries of a study being closed."""
        for entry in [e for e in self._entries if e.study_id == study_id]:
            self.remove(entry)

    def remove_layer(self, layer_id: str) -> None:
        for entry in [e for e in self._entries if e.layer_id == layer_id]:
            self.remove(entry)

    def clear(self) -> None:
        for entry in list(self._entries):
            self.remove(entry)

    def refresh(self, entry: SupportEntry, study: Study, layer: LabelLayer) -> None:
        """Recompute an entry's thumbnail and label name (after painting on its slice)."""
        entry.label_name = layer.label_map.label_name(entry.label_value)
        _fill_thumbnail(entry, study, layer)
        self.events.updated.emit(entry)

    def to_list(self) -> list[dict]:
        return [e.to_dict() for e in self._entries]


def _fill_thumbnail(entry: SupportEntry, study: Study, layer: LabelLayer) -> None:
    z = entry.slice_index
    entry.thumbnail, entry.thumbnail_mask = make_thumbnail(
        study.volume.array[z], layer.array[z] == entry.label_value, study.auto_window()
    )


def support_groups(
    entries: list[SupportEntry] | tuple[SupportEntry, ...],
    studies: Mapping[str, Study],
    *,
    query_study_id: str | None = None,
) -> list[SupportGroup]:
    """Group entries by (study, layer, label) into what the segmentation job needs.

    Re-checks every entry: its study and layer must still be open and its slice must still hold the label
    (:class:`MaskError` otherwise).
    """
    groups: dict[tuple[str, str, int], SupportGroup] = {}
    for entry in entries:
        study = studies.get(entry.study_id)
        if study is None:
            raise MaskError(f"a support slice of {entry.label_name}: its study is no longer open")
        number = study.volume.slice_numbering().number(entry.slice_index)
        try:
            layer = study.layer(entry.layer_id)
        except KeyError:
            raise MaskError(f"support slice {number} of {study.name}: its mask was closed") from None
        key = (study.id, layer.id, entry.label_value)
        group = groups.get(key)
        if group is None:
            mask = layer.binary(entry.label_value)
            source = study.path + (f" (series {study.series_uid})" if study.series_uid else "")
            group = SupportGroup(
                study_id=study.id,
                layer_id=layer.id,
                volume=study.volume,
                mask=mask,
                slices=[],
                label_value=entry.label_value,
                label_name=entry.label_name,
                from_query=study.id == query_study_id,
                source=source,
            )
            groups[key] = group
        if not group.mask[entry.slice_index].any():
            raise MaskError(f"support slice {number} of {study.name} no longer holds {entry.label_name}")
        if entry.slice_index not in group.slices:
            group.slices.append(entry.slice_index)
    for group in groups.values():
        group.slices.sort()
    return list(groups.values())
