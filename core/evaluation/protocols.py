"""Evaluation protocols, for any engine: the few-shot protocols of the literature (docs/fsmis-protocol.md)
and the application's own workflow. One mechanism (:func:`evaluate`) runs every protocol; a protocol is a
small :class:`Protocol` declaration (where its supports come from, which slices it segments and scores,
which support serves which slice) registered with :func:`register_protocol`.

- Folds: case ids sorted as integers; with ``n`` volumes and 5 folds, ``block = n // 5`` and fold ``k`` holds
  the sorted positions ``block*k .. block*k + block`` (wrapping round: Abd-MRI's fold 4 is 16..19 and 0),
  i.e. ``block + 1`` volumes for 1-shot (SSL-ALPNet's ``img_pids[sep[k]:sep[k+1] + nsup]``). The support
  volume is position 2 inside the fold (SD-FSMIS, GMRD, RPT); the others are the queries. With ``shots``
  support volumes the fold holds ``block + shots`` volumes and positions ``2 .. 2 + shots - 1`` are supports.
- Support slices: in each support volume, the slices holding the class; those at 1/6, 1/2 and 5/6 of that
  list (:func:`sd_fsmis.core.engines.support.chunk_middle_slices`, the same indices as SSL-ALPNet's
  ``_zlist[int(pct * len(_zlist))]``).
- EP1: the query is reduced to its labelled range ``z_min .. z_max`` (the class's first to last slice, as
  SSL-ALPNet's validation: slices inside the range that happen to miss the class are evaluated too) and
  split into three chunks in order exactly as SSL-ALPNet's ``ValidationDataset``: slice ``z`` is in chunk
  ``floor((z - z_min) / ((z_max - z_min) / 3))``, capped at 2. The remainder goes to the end chunks
  (14 slices: 5, 4, 5; 21 slices: 7, 7, 7; 4 slices: 1, 1, 2). Chunk ``i`` is segmented with support slice
  ``i`` (of each support volume).
- EP2: every query slice is segmented with the support slice at 1/2; false positives outside count.
- "study" (the application's own workflow, used to validate fine-tuning on a user's volumes): no folds; for
  each volume of ``ids`` and each class it holds, the supports are ``shots`` slices of the SAME volume
  (:func:`~sd_fsmis.core.engines.support.chunk_middle_slices` of its labelled slices: 1 shot the middle one,
  3 shots those at 1/6, 1/2, 5/6), as a person paints the structure on one or three slices of the study; the
  queries are the labelled range ``z_min .. z_max`` minus the support slices; with several supports each
  query slice uses the support of its chunk (EP1's chunks, ``shots`` of them). The Dice is 3-D over the
  query slices only (the support slices are not scored). A class absent from a volume is not scored there.
  The report holds one pseudo-fold (0) whose ids, supports and queries are all ``ids``. It scores only the
  structure's own slice range: false positives beyond the organ's ends are not seen ("clinical" sees them).
- "clinical" (what a person gets): supports as in "study" (1 or 3 slices of the volume itself); EVERY slice
  of the volume is segmented, the engine choosing the support of each slice as the GUI and ``sd-fsmis
  segment`` do by default; the Dice, HD95 and ASSD are over the whole volume, the painted slices excluded.
- Dice = 2TP / (2TP + FP + FN) in 3-D per query volume over the evaluated slices (the prediction is empty
  elsewhere, so this is also the whole-volume Dice of the saved prediction), averaged over the fold's
  queries, then over the folds; the mean of the classes is the mean of the per-class values. HD95 and
  ASSD (mm, :mod:`sd_fsmis.core.evaluation.metrics`) are averaged the same way over the queries where both are
  finite. The pooled variant (SD-FSMIS's released test: TP/FP/FN summed over a fold's queries before the
  Dice, then averaged over folds) is reported only when asked for.

Saved predictions: ``<dir>/fold<k>/pred_<id>_label<L>.nii.gz`` (value ``L`` where predicted, the query's
geometry, with the label-table sidecar), one file per query volume and class, written atomically, plus
``<dir>/evaluation.json``; the Dice of the report can be recomputed from them and the reference labels.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sd_fsmis.core.engines.base import SegmentationEngine, SegmentationRequest, SupportExample
from sd_fsmis.core.engines.support import (
    chunk_middle_slices,
    labelled_slices,
    make_support_examples,
    normalize_intensities,
)
from sd_fsmis.core.evaluation.folds import (
    N_CHUNKS,
    N_FOLDS,
    EvaluationError,
    FoldSplit,
    ep1_chunks,
    fold_split,
    parse_folds,
    study_layout,
)
from sd_fsmis.core.evaluation.metrics import surface_distances
from sd_fsmis.core.evaluation.report import EvaluationReport, QueryResult
from sd_fsmis.core.io.datasets import FewShotDataset
from sd_fsmis.core.io.destinations import Inputs, check_destination_folder
from sd_fsmis.core.io.labelmap import Label, LabelMap
from sd_fsmis.core.io.loader import load_volume
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback, ProgressReporter
from sd_fsmis.core.volume import Volume

log = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "EvaluationError",
    "EvaluationReport",
    "Protocol",
    "QueryResult",
    "evaluate",
    "parse_folds",
    "register_protocol",
]


# ------------------------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Protocol:
    """How a protocol sets up and scores one query volume and class.

    ``support_slices(labelled, shots)``: the slices of a support volume (the query itself when
    ``supports_from_query``) used as supports, from the slices that hold the class. ``query_slices(ref,
    painted)``: the query slices segmented, and scored, from the query's reference mask and the painted
    (support) slices when the supports come from the query. ``chunks(ref, shots)``: ``{query slice:
    support chunk}``; chunk ``i`` is served by support slice ``i`` (of each support volume). An empty
    mapping: every slice uses every support (fold protocols), or the engine chooses as the GUI does
    (supports from the query).
    """

    name: str
    summary: str
    supports_from_query: bool
    support_slices: Callable[[list[int], int], list[int]]
    query_slices: Callable[[np.ndarray, list[int]], list[int]]
    chunks: Callable[[np.ndarray, int], dict[int, int]] = lambda ref, shots: {}


#: the protocols ``evaluate`` knows, by name (``sd-fsmis evaluate --protocol``)
PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Offer ``protocol`` to :func:`evaluate` and the command line under its name."""
    PROTOCOLS[protocol.name] = protocol
    return protocol


def _labelled_range(ref: np.ndarray) -> list[int]:
    labelled = labelled_slices(ref)
    return list(range(labelled[0], labelled[-1] + 1)) if labelled else []


register_protocol(
    Protocol(
        "ep1",
        "the literature's EP1: supports from another volume of the fold, the labelled range in 3 chunks",
        supports_from_query=False,
        support_slices=lambda labelled, shots: chunk_middle_slices(labelled, N_CHUNKS),
        query_slices=lambda ref, painted: _labelled_range(ref),
        chunks=lambda ref, shots: ep1_chunks(labelled_slices(ref)),
    )
)
register_protocol(
    Protocol(
        "ep2",
        "the literature's EP2: every slice of the query, with the support volume's middle slice",
        supports_from_query=False,
        support_slices=lambda labelled, shots: chunk_middle_slices(labelled, 1),
        query_slices=lambda ref, painted: list(range(ref.shape[0])),
    )
)
register_protocol(
    Protocol(
        "study",
        "supports are 1 or 3 slices of each volume itself; only the rest of the structure's slice range is "
        "scored (false positives beyond its ends are not seen)",
        supports_from_query=True,
        support_slices=chunk_middle_slices,
        query_slices=lambda ref, painted: [z for z in _labelled_range(ref) if z not in painted],
        chunks=lambda ref, shots: study_layout(ref, shots)[2],
    )
)
register_protocol(
    Protocol(
        "clinical",
        "what a person gets: 1 or 3 slices of each volume painted, every slice segmented as the GUI does, "
        "scored over the whole volume (the painted slices excluded)",
        supports_from_query=True,
        support_slices=chunk_middle_slices,
        query_slices=lambda ref, painted: [z for z in range(ref.shape[0]) if z not in painted],
    )
)


# ------------------------------------------------------------------------------------------- the job
@dataclass
class _Case:
    volume: Volume
    labels: LabelMap
    normalized: np.ndarray


def evaluate(
    dataset: FewShotDataset,
    engine: SegmentationEngine,
    *,
    protocol: str = "ep1",
    folds: Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
    shots: int = 1,
    n_folds: int = N_FOLDS,
    ids: Sequence[int] | None = None,
    model_name: str | None = None,
    surface: bool = True,
    pooled: bool = False,
    save_predictions: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> EvaluationReport:
    """Run ``protocol`` (a name of :data:`PROTOCOLS`) and return its report.

    Fold protocols run over ``folds`` (default all) and ``labels`` (default: the classes every support
    volume holds). Protocols whose supports come from the query score the volumes ``ids`` (default all)
    and ``labels`` (default: every class of those volumes; a class absent from a volume is not scored
    there); ``folds`` and ``n_folds`` are then not used.

    A core job: progress counts query slices segmented; ``cancel`` stops between slices (the engine
    checks it) and raises :class:`~sd_fsmis.core.errors.JobCancelled`.
    """
    name = str(protocol).lower()
    if name not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}: use {', '.join(PROTOCOLS)}")
    spec = PROTOCOLS[name]
    if shots < 1:
        raise EvaluationError("--shots must be at least 1")
    inputs = dataset.inputs()
    out_dir = Path(save_predictions) if save_predictions is not None else None
    if out_dir is not None:  # before any work; the folder itself is created by the first prediction
        check_destination_folder(out_dir, inputs, option="--save-predictions")
    label_maps: dict[int, LabelMap] = {}  # small (uint8): kept for the whole run

    def label_map(case_id: int) -> LabelMap:
        if case_id not in label_maps:
            label_maps[case_id] = LabelMap.load(dataset.case(case_id).label, labels=dataset.class_names)
        return label_maps[case_id]

    skipped: dict[tuple[int, int], str] = {}  # (fold, class) -> why it is not scored there
    if spec.supports_from_query:
        splits, wanted = _own_volume_split(dataset, ids, labels, label_map)
    else:
        if ids is not None:
            own = " and ".join(n for n, p in PROTOCOLS.items() if p.supports_from_query)
            raise EvaluationError(
                f"a list of volumes (ids) applies to the {own} protocols; {name} uses folds"
            )
        fold_list = list(range(n_folds)) if folds is None else sorted({int(f) for f in folds})
        splits = [
            fold_split(dataset.ids, f, n_folds=n_folds, shots=shots, protocol=name.upper()) for f in fold_list
        ]
        wanted, skipped = _fold_classes(dataset, splits, labels, label_map)
    absent = _classes_in_no_volume(dataset, splits, wanted, label_map)
    for value in absent:
        for split in splits:
            skipped[(split.fold, value)] = "in no label map"
    notes = _class_notes(dataset, skipped, absent)
    for note in notes:  # the report carries them: the command line prints them, the log keeps them
        log.info("%s", note)
    # Plan first (label maps only: cheap), so that progress knows the total number of slices.
    plan: list[tuple[FoldSplit, int, int, list[int], list[int]]] = []
    for split in splits:
        for qid in split.query_ids:
            for value in wanted:
                if (split.fold, value) in skipped:
                    continue
                ref = label_map(qid).binary(value)
                labelled = labelled_slices(ref)
                if spec.supports_from_query and not labelled:
                    continue  # a class absent from this volume is not scored here
                painted = spec.support_slices(labelled, shots) if spec.supports_from_query else []
                plan.append((split, qid, value, painted, spec.query_slices(ref, painted)))
    if out_dir is not None:  # every file the run will write, before the work: none may be an input
        for split, qid, value, _, _ in plan:
            inputs.refuse(out_dir / prediction_path(split.fold, qid, value), "--save-predictions")
        inputs.refuse(out_dir / "evaluation.json", "--save-predictions")
    start = time.perf_counter()
    report = EvaluationReport(
        model=model_name or getattr(engine, "name", "engine"),
        protocol=name,
        data=str(dataset.root),
        folds=[split.fold for split in splits],
        labels={v: dataset.class_name(v) for v in wanted},
        shots=shots,
        engine=_engine_config(engine),
        splits=splits,
        pooled=pooled,
        skipped={key: reason for key, reason in skipped.items()},
        notes=notes,
    )
    cache: dict[int, _Case] = {}  # volumes: only those of the current fold (or the current volume)
    reporter = ProgressReporter(sum(len(p[4]) for p in plan), progress, cancel)
    reporter.report("evaluating")
    for split, qid, value, painted, slices in plan:
        for old in [i for i in cache if i not in (split.ids if not spec.supports_from_query else [qid])]:
            del cache[old]
        for case_id in [qid, *([] if spec.supports_from_query else split.support_ids)]:
            if case_id not in cache:
                cache[case_id] = _load_case(dataset, case_id, label_map(case_id))
        query = _Query(split, qid, value, painted, slices)
        result = _evaluate_query(
            spec, query, cache, shots, engine, dataset, reporter, cancel, surface, out_dir, inputs
        )
        report.queries.append(result)
        log.info(
            "%s fold %d volume %d %s: Dice %.4f (%.1f s)",
            name,
            split.fold,
            qid,
            result.name,
            result.dice,
            result.seconds,
        )
    report.seconds_total = time.perf_counter() - start
    if out_dir is not None:
        report.save(out_dir / "evaluation.json")
    return report


def prediction_path(fold: int, query_id: int, label: int) -> Path:
    """Where ``--save-predictions`` puts one prediction, relative to its folder."""
    return Path(f"fold{fold}") / f"pred_{query_id}_label{label}.nii.gz"


def _fold_classes(
    dataset: FewShotDataset,
    splits: list[FoldSplit],
    labels: Sequence[int] | None,
    label_map: Callable[[int], LabelMap],
) -> tuple[list[int], dict[tuple[int, int], str]]:
    """The classes to evaluate and, per fold, those that cannot be: a class must be in every support
    volume of a fold to be segmented there. By default every class of the support volumes and of the
    dataset's class names (a class a fold cannot score is shown as "—" with its reason, not dropped).
    A class asked for that no volume holds is refused."""
    in_supports = [(s, sid, set(label_map(sid).present_labels())) for s in splits for sid in s.support_ids]
    if labels is None:
        wanted = sorted(
            set().union(*(present for _, _, present in in_supports)) | set(dataset.declared_classes)
        )
        if not any(present for _, _, present in in_supports):
            raise EvaluationError("the support volumes hold no labelled class")
    else:
        wanted = _check_classes(labels)
        in_data = set().union(*(set(label_map(i).present_labels()) for s in splits for i in s.ids))
        unknown = [v for v in wanted if v not in in_data]
        if unknown:
            names = ", ".join(f"{v} ({dataset.class_name(v)})" for v in unknown)
            raise EvaluationError(f"unknown label {names}: in none of the volumes of the folds")
    skipped: dict[tuple[int, int], str] = {}
    for split, sid, present in in_supports:
        for value in wanted:
            if value not in present and (split.fold, value) not in skipped:
                skipped[(split.fold, value)] = f"not in support volume {sid}"
    return wanted, skipped


def _classes_in_no_volume(
    dataset: FewShotDataset, splits: list[FoldSplit], wanted: list[int], label_map: Callable[[int], LabelMap]
) -> list[int]:
    """The wanted classes that no volume of the splits holds (a class the manifest names, absent)."""
    present = set().union(*(set(label_map(i).present_labels()) for s in splits for i in s.ids))
    return [v for v in wanted if v not in present]


def _class_notes(
    dataset: FewShotDataset, skipped: dict[tuple[int, int], str], absent: list[int]
) -> list[str]:
    """One warning per class that is not scored somewhere, saying where and why."""
    notes = [
        f"class {v} ({dataset.class_name(v)}) is listed in {dataset.root.name} but is in no label map: "
        "not evaluated (—)"
        for v in absent
    ]
    by_class: dict[int, list[str]] = {}
    for (fold, value), reason in sorted(skipped.items()):
        if value not in absent:
            by_class.setdefault(value, []).append(f"fold {fold} ({reason})")
    for value, where in by_class.items():
        notes.append(
            f"class {value} ({dataset.class_name(value)}) cannot be segmented in "
            + ", ".join(where)
            + ": shown as — there, averaged over the other folds"
        )
    return notes


def _own_volume_split(
    dataset: FewShotDataset,
    ids: Sequence[int] | None,
    labels: Sequence[int] | None,
    label_map: Callable[[int], LabelMap],
) -> tuple[list[FoldSplit], list[int]]:
    """One pseudo-fold (0) of the volumes ``ids`` (supports from each volume itself), and the classes."""
    id_list = sorted({int(i) for i in (dataset.ids if ids is None else ids)})
    if not id_list:
        raise EvaluationError("no volume to evaluate")
    in_any = set().union(*(set(label_map(i).present_labels()) for i in id_list))
    if labels is None:
        if not in_any:
            raise EvaluationError(f"volumes {', '.join(map(str, id_list))} hold no labelled class")
        wanted = sorted(in_any | set(dataset.declared_classes))  # a declared class in no volume: shown as —
        return [_own_split(dataset, id_list)], wanted
    else:
        wanted = _check_classes(labels)
    missing = [v for v in wanted if v not in in_any]
    if missing:
        names = ", ".join(f"{v} ({dataset.class_name(v)})" for v in missing)
        raise EvaluationError(f"unknown label {names}: in none of the volumes {', '.join(map(str, id_list))}")
    return [_own_split(dataset, id_list)], wanted


def _own_split(dataset: FewShotDataset, id_list: list[int]) -> FoldSplit:
    return FoldSplit(0, [dataset.ids.index(i) for i in id_list], id_list, list(id_list), list(id_list))


@dataclass(frozen=True)
class _Query:
    split: FoldSplit
    qid: int
    value: int
    #: the slices painted on the query (supports from the query itself)
    painted: list[int]
    #: the slices segmented and scored
    slices: list[int]


def _evaluate_query(
    spec: Protocol,
    q: _Query,
    cases: dict[int, _Case],
    shots: int,
    engine: SegmentationEngine,
    dataset: FewShotDataset,
    reporter: ProgressReporter,
    cancel: CancelToken | None,
    surface: bool,
    out_dir: Path | None,
    inputs: Inputs,
) -> QueryResult:
    """Segment one class in one query volume as ``spec`` says, and score it on the protocol's slices."""
    query = cases[q.qid]
    name = dataset.class_name(q.value)
    ref = query.labels.binary(q.value)
    chunk_of = spec.chunks(ref, shots)
    supports: list[SupportExample] = []
    support_slices: list[list[int]] = []
    members: dict[int, list[int]] = {}  # chunk -> support example indices
    sources = [(q.qid, ref, q.painted)] if spec.supports_from_query else []
    for sid in [] if spec.supports_from_query else q.split.support_ids:
        mask = cases[sid].labels.binary(q.value)
        sources.append((sid, mask, spec.support_slices(labelled_slices(mask), shots)))
    for sid, mask, chosen in sources:
        case = cases[sid]
        spacing = case.volume.geometry.spacing
        examples = make_support_examples(
            case.normalized,
            mask,
            chosen,
            from_query=spec.supports_from_query,
            source=f"{sid}",
            label_name=name,
            spacing_yx=(spacing[1], spacing[0]),
        )
        for i, example in enumerate(examples):
            members.setdefault(i, []).append(len(supports))
            supports.append(example)
            support_slices.append([sid, example.slice_index])
    assignment: dict[int, list[int]] | None
    if chunk_of:
        assignment = {z: list(members[c]) for z, c in chunk_of.items() if z in set(q.slices)}
    elif spec.supports_from_query:
        assignment = None  # the engine chooses, as for the GUI's Segment button
    else:
        assignment = {z: list(range(len(supports))) for z in q.slices}
    spacing = query.volume.geometry.spacing
    request = SegmentationRequest(
        query=query.normalized,
        supports=supports,
        slices=q.slices,
        assignment=assignment,
        spacing_zyx=(spacing[2], spacing[1], spacing[0]),
    )
    base = reporter.done
    where = f"volume {q.qid}, {name}"
    message = where if spec.supports_from_query else f"fold {q.split.fold}, {where}"

    def forward(p: Progress) -> None:
        reporter.done = base + min(p.done, len(q.slices))
        reporter.report(message)

    started = time.perf_counter()
    predicted = np.zeros(ref.shape, dtype=bool)
    if q.slices:  # EP1 on a query without the class has nothing to segment (its Dice is then undefined)
        predicted = np.asarray(engine.segment(request, progress=forward, cancel=cancel).mask, dtype=bool)
    seconds = time.perf_counter() - started
    reporter.done = base + len(q.slices)
    reporter.report(message)
    reporter.check()
    # only the protocol's slices are scored (and kept): the painted ones and, for EP1 and "study", the
    # slices outside the structure's range are not
    pred = np.zeros(ref.shape, dtype=bool)
    pred[q.slices] = predicted[q.slices]
    scored = np.zeros(ref.shape, dtype=bool)
    scored[q.slices] = ref[q.slices]
    tp = int(np.count_nonzero(pred & scored))
    fp = int(np.count_nonzero(pred & ~scored))
    fn = int(np.count_nonzero(~pred & scored))
    dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan
    hd95 = assd = math.nan
    if surface:
        hd95, assd = surface_distances(pred, scored, spacing)
    saved = ""
    if out_dir is not None:
        rel = prediction_path(q.split.fold, q.qid, q.value)
        array = np.zeros(ref.shape, dtype=np.uint8 if q.value <= 255 else np.uint16)
        array[pred] = q.value
        inputs.refuse(out_dir / rel, "--save-predictions")
        LabelMap(array, query.volume.geometry, {q.value: Label.default(q.value, name)}).save(out_dir / rel)
        saved = rel.as_posix()
    return QueryResult(
        fold=q.split.fold,
        query_id=q.qid,
        label=q.value,
        name=name,
        dice=dice,
        hd95_mm=hd95,
        assd_mm=assd,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        slices=list(q.slices),
        support_slices=support_slices,
        chunks={z: c for z, c in chunk_of.items() if z in set(q.slices)},
        seconds=seconds,
        prediction=saved,
    )


def _check_classes(wanted: Sequence[int]) -> list[int]:
    values = sorted({int(v) for v in wanted})
    for value in values:
        if value < 1:
            raise EvaluationError(f"label {value} is not a class (labels are 1 and above)")
    return values


def _load_case(dataset: FewShotDataset, case_id: int, labels: LabelMap) -> _Case:
    """A volume with its (already read) label map, which must lie on the volume's grid."""
    entry = dataset.case(case_id)
    volume = load_volume(entry.image, entry.series_uid)
    volume.geometry.require_match(labels.geometry, what=f"label map {entry.label.name}", of="volume")
    return _Case(volume, labels, normalize_intensities(volume.array))


def _engine_config(engine: SegmentationEngine) -> dict:
    config = getattr(engine, "config", None)
    if callable(config):
        try:
            value = config()
            if isinstance(value, dict):
                return value
        except Exception:  # provenance only: never fail an evaluation for it
            log.debug("engine config not available", exc_info=True)
    return {"name": getattr(engine, "name", type(engine).__name__)}
