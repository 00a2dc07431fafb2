"""The application's state, napari style: plain objects with change events, no Qt.

A :class:`Session` holds the open :class:`~sd_fsmis.core.session.study.Study` s (each with its label layers),
the active study, the reference layer (ground truth for Dice), the
:class:`~sd_fsmis.core.session.support_set.SupportSet` and the :class:`~sd_fsmis.core.session.runs.RunList`.
The GUI observes its events and calls its methods; a test does the same without a window::

    session = Session()
    study = session.open_study("case1.nii.gz")
    layer = study.add_layer("liver", labels={1: "liver"})
    layer.paint_line(0, 20, [(100, 100), (110, 120)], radius=8)
    session.add_support(study, layer, 20)
    inputs = session.segmentation_inputs(study)
    outcome = segment_volume(inputs.query, inputs.sources, engine, **inputs.job_options())
    layer, run = session.add_result(inputs, outcome, device="cuda")

``events.modified`` fires after any change that the autosave must keep (voxels, layers, supports, runs).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sd_fsmis.core.errors import MaskError
from sd_fsmis.core.io.destinations import same_path
from sd_fsmis.core.io.labelmap import Label
from sd_fsmis.core.session.events import Events
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.runs import Run, RunList
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.session.support_set import SupportEntry, SupportGroup, SupportSet, support_groups
from sd_fsmis.core.volume import Volume

if TYPE_CHECKING:
    from sd_fsmis.core.engines.segmentation import SegmentationOutcome, SupportSource

log = logging.getLogger(__name__)


@dataclass
class SegmentationInputs:
    """Everything the segmentation job needs for one run, taken from the session when Segment is pressed.

    ``sources`` are :class:`~sd_fsmis.core.engines.segmentation.SupportSource` s (one per study/layer), their
    masks copies: painting during the run does not reach it.
    """

    query_study_id: str
    query: Volume
    groups: list[SupportGroup]
    entries: tuple[SupportEntry, ...]
    label_name: str
    label_value: int
    label_colour: tuple[int, int, int] | None = None
    sources: list[SupportSource] = field(default_factory=list)

    @property
    def k(self) -> int:
        """K of K-shot: the number of support slices."""
        return sum(len(g.slices) for g in self.groups)

    def job_options(self) -> dict:
        """Keyword arguments of :func:`~sd_fsmis.core.engines.segmentation.segment_volume` for the label."""
        return {"label": self.label_value, "label_name": self.label_name, "label_colour": self.label_colour}


class Session:
    """Open studies, the active one, the reference, the support set and the runs.

    Events: ``study_added(study)``, ``study_removed(study)``, ``active_study(study | None)``,
    ``reference(layer | None)``, ``modified(what)`` (anything the autosave keeps changed), ``any``.
    """

    def __init__(self) -> None:
        self._studies: list[Study] = []
        self._active: Study | None = None
        self._reference: tuple[str, str] | None = None  # (study id, layer id)
        self._forwarders: dict[str, Callable[..., None]] = {}
        self.support_set = SupportSet()
        self.runs = RunList()
        #: notes from a restore (studies that could not be re-opened...), for the GUI to show once
        self.warnings: list[str] = []
        self.events = Events("study_added", "study_removed", "active_study", "reference", "modified")
        self.support_set.events.any.connect(self._on_support_event)
        self.runs.events.any.connect(self._on_runs_event)

    # ------------------------------------------------------------------------------------------ studies
    @property
    def studies(self) -> tuple[Study, ...]:
        return tuple(self._studies)

    @property
    def active_study(self) -> Study | None:
        return self._active

    def study(self, study_id: str) -> Study:
        for study in self._studies:
            if study.id == study_id:
                return study
        raise KeyError(f"no open study {study_id!r}")

    def studies_by_id(self) -> dict[str, Study]:
        return {s.id: s for s in self._studies}

    def input_files(self, keep: LabelLayer | None = None):
        """The files the open studies and masks were read from (an :class:`~sd_fsmis.core.io.destinations.
        Inputs`): no save or export writes over them. ``keep``: a mask that may be saved back to its file."""
        from sd_fsmis.core.io.destinations import Inputs

        inputs = Inputs()
        for study in self._studies:
            inputs.add(study.path, f"the image of study {study.name}")
            inputs.add_all(study.volume.metadata.files, f"an image file of study {study.name}")
            for layer in study.layers:
                if layer is not keep and layer.source_path:
                    inputs.add(layer.source_path, f"the file of mask {layer.name} (open)")
        return inputs

    def open_study(
        self, path: str | os.PathLike[str], series_uid: str | None = None, *, activate: bool = True
    ) -> Study:
        """Open a study (DICOM folder, DICOMDIR, NIfTI; one series) and add it to the session."""
        return self.add_study(Study.open(path, series_uid=series_uid), activate=activate)

    def add_study(self, study: Study, *, activate: bool = True) -> Study:
        if any(s.id == study.id for s in self._studies):
            raise ValueError(f"a study with id {study.id} is already open")
        self._studies.append(study)
        forward = partial(self._on_study_event, study)
        self._forwarders[study.id] = forward
        study.events.any.connect(forward)
        self.events.study_added.emit(study)
        if activate or self._active is None:
            self.set_active_study(study)
        self._modified("studies")
        return study

    def remove_study(self, study: Study) -> None:
        """Close a study: its support entries go, and the reference if it was one of its layers."""
        if study not in self._studies:
            raise ValueError(f"{study!r} is not open")
        self.support_set.remove_study(study.id)
        if self._reference is not None and self._reference[0] == study.id:
            self.set_reference(None)
        index = self._studies.index(study)
        self._studies.remove(study)
        forward = self._forwarders.pop(study.id, None)
        if forward is not None:
            study.events.any.disconnect(forward)
        self.events.study_removed.emit(study)
        if self._active is study:
            self.set_active_study(
                self._studies[min(index, len(self._studies) - 1)] if self._studies else None
            )
        self._modified("studies")

    def set_active_study(self, study: Study | None) -> None:
        if study is not None and study not in self._studies:
            raise ValueError(f"{study!r} is not open")
        if study is not self._active:
            self._active = study
            self.events.active_study.emit(study)
            self._modified("active_study")

    def find_layer(self, layer_id: str) -> tuple[Study, LabelLayer]:
        """The study and layer of a layer id; raises KeyError."""
        for study in self._studies:
            for layer in study.layers:
                if layer.id == layer_id:
                    return study, layer
        raise KeyError(f"no layer {layer_id!r} in the open studies")

    # ---------------------------------------------------------------------------------------- reference
    @property
    def reference(self) -> LabelLayer | None:
        """The reference layer (ground truth) that predictions are compared with, or None."""
        if self._reference is None:
            return None
        try:
            return self.find_layer(self._reference[1])[1]
        except KeyError:
            return None

    @property
    def reference_study(self) -> Study | None:
        if self._reference is None:
            return None
        try:
            return self.find_layer(self._reference[1])[0]
        except KeyError:
            return None

    def set_reference(self, layer: LabelLayer | None) -> None:
        """Make ``layer`` (of an open study) the reference, or clear it; the Dice of the runs is refreshed."""
        if layer is None:
            new = None
        else:
            study = next((s for s in self._studies if layer in s.layers), None)
            if study is None:
                raise ValueError(f"{layer!r} is not a layer of an open study")
            new = (study.id, layer.id)
        if new != self._reference:
            self._reference = new
            self.events.reference.emit(layer)
            self._modified("reference")
            self.refresh_run_dice()

    def load_reference(self, study: Study, path: str | os.PathLike[str], **options: object) -> LabelLayer:
        """Open a reference mask on ``study`` (kind "reference") and make it the reference."""
        layer = study.load_layer(path, kind="reference", activate=False, **options)  # type: ignore[arg-type]
        layer.opacity = 0.3
        self.set_reference(layer)
        return layer

    # ------------------------------------------------------------------------------------------ support
    def add_support(
        self, study: Study, layer: LabelLayer, slice_index: int, label_value: int | None = None
    ) -> SupportEntry:
        """ "This slice as support": axial slice ``slice_index`` of ``layer`` for its (selected) label."""
        return self.support_set.add(study, layer, slice_index, label_value)

    def refresh_support_thumbnails(self, layer: LabelLayer | None = None) -> None:
        """Recompute the thumbnails of the entries (of ``layer``), e.g. after painting on a support slice."""
        studies = self.studies_by_id()
        for entry in self.support_set:
            if layer is not None and entry.layer_id != layer.id:
                continue
            study = studies.get(entry.study_id)
            if study is None:
                continue
            try:
                self.support_set.refresh(entry, study, study.layer(entry.layer_id))
            except KeyError:
                continue

    def segmentation_inputs(
        self,
        query: Study,
        label_name: str | None = None,
        entries: tuple[SupportEntry, ...] | list[SupportEntry] | None = None,
    ) -> SegmentationInputs:
        """What the segmentation job needs to segment ``query`` from the support set.

        ``label_name``: the structure to segment, when the support set holds several (the entries of that
        name are used). ``entries``: only these entries of the support set (e.g. a
        :func:`~sd_fsmis.core.session.support_choice.choose_supports` choice: this study's first).
        Raises :class:`MaskError` when there is no support, several structures and no choice, or a
        support slice that no longer holds its label.
        """
        from sd_fsmis.core.engines.segmentation import SupportSource

        if query not in self._studies:
            raise ValueError(f"{query!r} is not open")
        entries = tuple(self.support_set) if entries is None else tuple(entries)
        if not entries:
            raise MaskError("no support example: paint the structure on a slice and add it as support")
        names = list(dict.fromkeys(e.label_name for e in entries))
        if label_name is None:
            if len({n.lower() for n in names}) > 1:
                raise MaskError(
                    f"the support examples show several structures ({', '.join(names)}): choose one"
                )
            label_name = names[0]
        chosen = tuple(e for e in entries if e.label_name.lower() == label_name.lower())
        if not chosen:
            raise MaskError(f"no support example shows {label_name} (they show {', '.join(names)})")
        groups = support_groups(chosen, self.studies_by_id(), query_study_id=query.id)
        first = chosen[0]
        first_layer = self.study(first.study_id).layer(first.layer_id)
        label: Label = first_layer.label_map.label(first.label_value)
        sources = [
            SupportSource(
                volume=g.volume,
                mask=g.mask,
                slices=list(g.slices),
                is_query=g.from_query,
                name=g.source,
            )
            for g in groups
        ]
        return SegmentationInputs(
            query_study_id=query.id,
            query=query.volume,
            groups=groups,
            entries=chosen,
            label_name=label.name if label.name.lower() == label_name.lower() else label_name,
            label_value=first.label_value,
            label_colour=label.colour,
            sources=sources,
        )

    # ---------------------------------------------------------------------------------------------- runs
    def begin_run(
        self,
        inputs: SegmentationInputs,
        *,
        engine: str,
        model: str = "",
        device: str = "",
        settings: dict | None = None,
    ) -> Run:
        """Record a run that starts now (status "running"), for the runs table."""
        return self.runs.start(
            engine=engine,
            model=model,
            query_study_id=inputs.query_study_id,
            label_name=inputs.label_name,
            k=inputs.k,
            supports=tuple(e.to_dict() for e in inputs.entries),
            settings=dict(settings or {}),
            device=device,
        )

    def add_result(
        self,
        inputs: SegmentationInputs,
        outcome: SegmentationOutcome,
        *,
        run: Run | None = None,
        model: str = "",
        device: str = "",
        settings: dict | None = None,
        layer_name: str | None = None,
    ) -> tuple[LabelLayer, Run]:
        """Add a finished segmentation as a prediction layer of the query study and record its run.

        ``run``: the one from :meth:`begin_run` (finished now), or None to record one. ``model``,
        ``device`` (when given) and ``settings`` are recorded on the run, e.g. what the job really used.
        The run's Dice against the reference is filled in when a reference lies on the query's grid.
        """
        query = self.study(inputs.query_study_id)
        name = layer_name or f"{inputs.label_name} · {outcome.engine} {outcome.shots}-shot"
        layer = query.add_layer(name, outcome.label_map, kind="prediction")
        if run is None:
            run = self.begin_run(
                inputs, engine=outcome.engine, model=model, device=device, settings=outcome.settings
            )
        used = {key: value for key, value in (("model", model), ("device", device)) if value}
        run = self.runs.finish(
            run.id,
            status="done",
            duration_s=round(float(outcome.seconds), 3),
            result_layer_id=layer.id,
            result_layer_name=layer.name,
            settings={**run.settings, **(settings or {}), **outcome.settings},
            **used,
        )
        self.refresh_run_dice([run.id])
        return layer, self.runs.get(run.id)

    # -- runs of studies segmented from disk (a folder cohort), not open -----------------------------------
    def record_file_run(
        self,
        *,
        study_name: str,
        image: str,
        series: str | None,
        mask: str | None,
        engine: str,
        label_name: str,
        k: int,
        model: str = "",
        device: str = "",
        seconds: float | None = None,
        status: str = "done",
        message: str = "",
        settings: dict | None = None,
    ) -> Run:
        """Record the finished run of a study segmented from its file (not open here): its image, series
        and mask file are kept in the run's settings so that :meth:`attach_file_run` can open them later."""
        return self.runs.add(
            Run(
                engine=engine,
                query_study_id="",
                label_name=label_name,
                model=model,
                k=k,
                device=device,
                duration_s=None if seconds is None else round(float(seconds), 3),
                status=status,
                message=message,
                result_layer_name=Path(mask).name if mask else "",
                settings={
                    **(settings or {}),
                    "study_name": study_name,
                    "image": str(image),
                    "series": series,
                    "mask": str(mask) if mask else None,
                },
            )
        )

    def file_runs_for(self, study: Study) -> list[Run]:
        """The recorded file runs (:meth:`record_file_run`) of ``study``'s image and series not yet shown
        on it."""
        return [
            run
            for run in self.runs
            if run.awaits_its_study
            and same_path(run.settings.get("image"), study.path)
            and (run.settings.get("series") or None) in (None, study.series_uid)
        ]

    def attach_file_run(self, run: Run, study: Study) -> LabelLayer:
        """Open a file run's mask on ``study`` (its image, now open) as a prediction layer and make the run
        that study's, with its Dice against the reference when there is one."""
        mask = run.settings.get("mask")
        if not mask:
            raise ValueError(f"run {run.id} has no mask file")
        name = f"{run.label_name} · {run.model or run.engine} {run.k}-shot".strip(" ·")
        layer = study.load_layer(mask, name=name, kind="prediction", activate=True)
        self.runs.update(
            run.id, query_study_id=study.id, result_layer_id=layer.id, result_layer_name=layer.name
        )
        self.refresh_run_dice([run.id])
        return layer

    def fail_run(self, run: Run, *, cancelled: bool = False, message: str = "") -> Run:
        """Mark a run cancelled or failed (the job raised)."""
        return self.runs.finish(run.id, status="cancelled" if cancelled else "failed", message=message)

    def refresh_run_dice(self, run_ids: list[str] | None = None) -> None:
        """Recompute each finished run's Dice against the current reference (None where not comparable)."""
        from sd_fsmis.core.evaluation.metrics import dice

        reference = self.reference
        ref_study = self.reference_study
        for run in list(self.runs):
            if run_ids is not None and run.id not in run_ids:
                continue
            if run.status != "done" or run.result_layer_id is None:
                continue
            value: float | None = None
            ref_id: str | None = None
            try:
                study, layer = self.find_layer(run.result_layer_id)
            except KeyError:
                continue
            if reference is not None and ref_study is study:
                ref_value = _matching_value(reference, run.label_name)
                pred_value = layer.label_value(run.label_name) or next(iter(layer.labels), 1)
                if ref_value is not None:
                    d = dice(layer.array == pred_value, reference.array == ref_value)
                    value = None if math.isnan(d) else round(float(d), 6)
                    ref_id = reference.id
            if value != run.dice or ref_id != run.reference_layer_id:
                self.runs.update(run.id, dice=value, reference_layer_id=ref_id)

    # -------------------------------------------------------------------------------------- internals
    def _modified(self, what: str) -> None:
        self.events.modified.emit(what)

    def _on_study_event(self, study: Study, event_name: str, *args: object) -> None:
        if event_name == "layer_removed" and args:
            layer = args[0]
            if isinstance(layer, LabelLayer):
                self.support_set.remove_layer(layer.id)
                if self._reference is not None and self._reference[1] == layer.id:
                    self.set_reference(None)
        if event_name == "layer_changed" and len(args) >= 2 and args[1] in ("history", "labels"):
            # an edit was completed (stroke released, fill, undo...) or a label renamed: the thumbnails
            # of the layer's support slices follow
            layer = args[0]
            if isinstance(layer, LabelLayer) and any(e.layer_id == layer.id for e in self.support_set):
                self.refresh_support_thumbnails(layer)
            if args[1] == "history":
                return  # undo availability is not saved (the data event already said what changed)
        if event_name == "layer_changed" and len(args) >= 2 and args[1] == "selected_label":
            return  # tool state is not saved
        self._modified(event_name)

    def _on_support_event(self, event_name: str, *args: object) -> None:
        if event_name != "updated":
            self._modified("support_set")

    def _on_runs_event(self, event_name: str, *args: object) -> None:
        self._modified("runs")


def _matching_value(reference: LabelLayer, label_name: str) -> int | None:
    """The reference's value for ``label_name``; its only label when it has one; else None."""
    value = reference.label_value(label_name) if label_name else None
    if value is not None:
        return value
    present = reference.label_map.present_labels()
    if len(present) == 1:
        return present[0]
    return None


def layer_summary(layer: LabelLayer) -> dict:
    """Voxel counts per label (for a layer panel tooltip)."""
    counts = layer.label_map.voxel_counts()
    return {layer.label_map.label_name(v): int(n) for v, n in counts.items()}
