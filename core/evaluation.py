"""The few-shot evaluation protocol of the literature (docs/fsmis-protocol.md), for any engine.

- Folds: case ids sorted as integers; with ``n`` volumes and 5 folds, ``block = n // 5`` and fold ``k`` holds
  the sorted positions ``block*k .. block*k + block`` (wrapping round: Abd-MRI's fold 4 is 16..19 and 0),
  i.e. ``block + 1`` volumes for 1-shot (SSL-ALPNet's ``img_pids[sep[k]:sep[k+1] + nsup]``). The support
  volume is position 2 inside the fold (SD-FSMIS, GMRD, RPT); the others are the queries. With ``shots``
  support volumes the fold holds ``block + shots`` volumes and positions ``2 .. 2 + shots - 1`` are supports.
- Support slices: in each support volume, the slices holding the class; those at 1/6, 1/2 and 5/6 of that
  list (:func:`sd_fsmis.core.support.chunk_middle_slices`, the same indices as SSL-ALPNet's
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
  (:func:`~sd_fsmis.core.support.chunk_middle_slices` of its labelled slices: 1 shot the middle one, 3 shots
  those at 1/6, 1/2, 5/6), as a person paints the structure on one or three slices of the study; the
  queries are the labelled range ``z_min .. z_max`` minus the support slices; with several supports each
  query slice uses the support of its chunk (EP1's chunks, ``shots`` of them). The Dice is 3-D over the
  query slices only (the support slices are not scored). A class absent from a volume is not scored there.
  The report holds one pseudo-fold (0) whose ids, supports and queries are all ``ids``.
- Dice = 2TP / (2TP + FP + FN) in 3-D per query volume over the evaluated slices (the prediction is empty
  elsewhere, so this is also the whole-volume Dice of the saved prediction), averaged over the fold's
  queries, then over the folds; the mean of the classes is the mean of the per-class values. HD95 and
  ASSD (mm, :mod:`sd_fsmis.core.metrics`) are averaged the same way over the queries where both are
  finite. The pooled variant (SD-FSMIS's released test: TP/FP/FN summed over a fold's queries before the
  Dice, then averaged over folds) is reported only when asked for.

Saved predictions: ``<dir>/fold<k>/pred_<id>_label<L>.nii.gz`` (value ``L`` where predicted, the query's
geometry, with the label-table sidecar), one file per query volume and class, written atomically, plus
``<dir>/evaluation.json``; the Dice of the report can be recomputed from them and the reference labels.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sd_fsmis.core.atomic import atomic_write_text
from sd_fsmis.core.datasets import FewShotDataset
from sd_fsmis.core.engines.base import SegmentationEngine, SegmentationRequest, SupportExample
from sd_fsmis.core.errors import UserError
from sd_fsmis.core.jobs import CancelToken, Progress, ProgressCallback, ProgressReporter
from sd_fsmis.core.labelmap import Label, LabelMap
from sd_fsmis.core.metrics import surface_distances
from sd_fsmis.core.study_io import load_volume
from sd_fsmis.core.support import (
    THREE_CHUNK_FRACTIONS,
    chunk_middle_slices,
    labelled_slices,
    make_support_examples,
    normalize_intensities,
)
from sd_fsmis.core.volume import Volume

log = logging.getLogger(__name__)

PROTOCOLS = ("ep1", "ep2", "study")
N_FOLDS = 5
#: the support volume's position inside a fold (SD-FSMIS, GMRD, RPT)
SUPPORT_POSITION = 2
N_CHUNKS = len(THREE_CHUNK_FRACTIONS)
REPORT_FORMAT = "sd-fsmis evaluation"
REPORT_VERSION = 1

#: Column titles of the papers' tables.
SHORT_NAMES = {"liver": "Liver", "right kidney": "R.Kidney", "left kidney": "L.Kidney", "spleen": "Spleen"}


class EvaluationError(UserError):
    """An evaluation that cannot be run as asked (bad fold, unknown label, unknown protocol)."""


# ------------------------------------------------------------------------------------------ the layout
@dataclass(frozen=True)
class FoldSplit:
    """Which volumes a fold holds (sorted positions and ids), which is the support and which the queries."""

    fold: int
    positions: list[int]
    ids: list[int]
    support_ids: list[int]
    query_ids: list[int]


def fold_split(
    ids: Sequence[int],
    fold: int,
    *,
    n_folds: int = N_FOLDS,
    shots: int = 1,
    support_position: int = SUPPORT_POSITION,
) -> FoldSplit:
    """The volumes of ``fold`` among ``ids`` (sorted here as integers); see the module docstring."""
    ordered = sorted(int(i) for i in ids)
    n = len(ordered)
    block = n // n_folds
    if block < 1:
        raise EvaluationError(f"{n} volumes are too few for {n_folds} folds")
    if not 0 <= int(fold) < n_folds:
        raise EvaluationError(f"fold {fold} does not exist: folds are 0..{n_folds - 1} (or 'all')")
    if shots < 1:
        raise EvaluationError("--shots must be at least 1")
    size = block + shots
    if size > n or support_position + shots > size:
        raise EvaluationError(f"{shots} support volumes do not fit a fold of {n} volumes")
    positions = [(block * int(fold) + j) % n for j in range(size)]
    fold_ids = [ordered[p] for p in positions]
    supports = fold_ids[support_position : support_position + shots]
    queries = [i for i in fold_ids if i not in supports]
    return FoldSplit(int(fold), positions, fold_ids, supports, queries)


def ep1_chunks(labelled: Sequence[int], n_chunks: int = N_CHUNKS) -> dict[int, int]:
    """``{query slice: chunk}`` for EP1: every slice of the labelled range, split as SSL-ALPNet does."""
    if not labelled:
        return {}
    lo, hi = int(min(labelled)), int(max(labelled))
    if hi == lo:
        return {lo: 0}
    width = (hi - lo) / n_chunks
    return {z: min(n_chunks - 1, max(0, int((z - lo) // width))) for z in range(lo, hi + 1)}


def study_layout(mask: np.ndarray, shots: int = 1) -> tuple[list[int], list[int], dict[int, int]]:
    """The study protocol on one volume and class: ``(support slices, query slices, {query: chunk})``.

    Supports: ``chunk_middle_slices(labelled_slices(mask), shots)``; queries: the labelled range minus the
    supports; chunk ``i`` of the range (EP1's split into ``shots`` chunks) uses support ``i``.
    """
    labelled = labelled_slices(mask)
    if not labelled:
        return [], [], {}
    chosen = chunk_middle_slices(labelled, shots)
    chunks = ep1_chunks(labelled, shots)
    queries = [z for z in sorted(chunks) if z not in set(chosen)]
    return chosen, queries, {z: chunks[z] for z in queries}


def parse_folds(text: str | int, n_folds: int = N_FOLDS) -> list[int]:
    """``"all"`` -> 0..n-1; ``"2"`` or ``"0,3"`` -> those folds; :class:`EvaluationError` otherwise."""
    if isinstance(text, int):
        text = str(text)
    text = str(text).strip().lower()
    if text == "all":
        return list(range(n_folds))
    folds = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 <= int(part) < n_folds:
            raise EvaluationError(f"fold {part!r} does not exist: folds are 0..{n_folds - 1} or 'all'")
        folds.append(int(part))
    return sorted(set(folds))


# ------------------------------------------------------------------------------------------ the report
@dataclass
class QueryResult:
    """One query volume and one class: the scores and how it was set up."""

    fold: int
    query_id: int
    label: int
    name: str
    dice: float
    hd95_mm: float
    assd_mm: float
    true_positives: int
    false_positives: int
    false_negatives: int
    #: the evaluated (segmented) query slices
    slices: list[int]
    #: ``[[support id, slice], ...]`` in support-example order
    support_slices: list[list[int]]
    #: EP1: ``{query slice: chunk}``; EP2: empty
    chunks: dict[int, int]
    seconds: float
    prediction: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("dice", "hd95_mm", "assd_mm"):
            d[key] = _json_float(d[key])
        d["chunks"] = {str(k): v for k, v in self.chunks.items()}
        return d


@dataclass
class EvaluationReport:
    """Everything one ``evaluate`` run measured, with the tables of the papers."""

    model: str
    protocol: str
    data: str
    folds: list[int]
    labels: dict[int, str]
    shots: int
    engine: dict = field(default_factory=dict)
    splits: list[FoldSplit] = field(default_factory=list)
    queries: list[QueryResult] = field(default_factory=list)
    seconds_total: float = 0.0
    pooled: bool = False

    # ----------------------------------------------------------------------------------- aggregates
    def _per_fold(self, key: Callable[[list[QueryResult]], float]) -> dict[int, dict[int, float]]:
        out: dict[int, dict[int, float]] = {}
        for fold in self.folds:
            out[fold] = {}
            for label in self.labels:
                rows = [q for q in self.queries if q.fold == fold and q.label == label]
                out[fold][label] = key(rows) if rows else math.nan
        return out

    def fold_dice(self) -> dict[int, dict[int, float]]:
        """``{fold: {label: mean Dice over the fold's query volumes}}``."""
        return self._per_fold(lambda rows: _nanmean([q.dice for q in rows]))

    def fold_pooled_dice(self) -> dict[int, dict[int, float]]:
        """``{fold: {label: Dice of TP/FP/FN summed over the fold's queries}}`` (SD-FSMIS's variant)."""

        def pooled(rows: list[QueryResult]) -> float:
            tp = sum(q.true_positives for q in rows)
            fp = sum(q.false_positives for q in rows)
            fn = sum(q.false_negatives for q in rows)
            return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan

        return self._per_fold(pooled)

    def _over_folds(self, per_fold: dict[int, dict[int, float]]) -> dict[int, float]:
        return {label: _nanmean([per_fold[f][label] for f in self.folds]) for label in self.labels}

    def class_dice(self) -> dict[int, float]:
        """``{label: Dice averaged over queries, then folds}``: the numbers of the papers' tables."""
        return self._over_folds(self.fold_dice())

    def mean_dice(self) -> float:
        return _nanmean(list(self.class_dice().values()))

    def class_distance(self, key: str) -> dict[int, float]:
        """``{label: mean HD95 or ASSD (mm)}`` over queries (finite values), then folds."""
        per_fold = self._per_fold(
            lambda rows: _nanmean([getattr(q, key) for q in rows if math.isfinite(getattr(q, key))])
        )
        return self._over_folds(per_fold)

    def seconds_per_volume(self) -> float:
        """Mean engine time to segment one class in one query volume."""
        return float(np.mean([q.seconds for q in self.queries])) if self.queries else math.nan

    # ---------------------------------------------------------------------------------------- output
    def to_dict(self) -> dict:
        fold_dice = self.fold_dice()
        summary = {
            "dice": {str(k): _json_float(v) for k, v in self.class_dice().items()},
            "mean_dice": _json_float(self.mean_dice()),
            "hd95_mm": {str(k): _json_float(v) for k, v in self.class_distance("hd95_mm").items()},
            "assd_mm": {str(k): _json_float(v) for k, v in self.class_distance("assd_mm").items()},
            "seconds_per_volume": _json_float(self.seconds_per_volume()),
        }
        if self.pooled:
            pooled = self._over_folds(self.fold_pooled_dice())
            summary["pooled_dice"] = {str(k): _json_float(v) for k, v in pooled.items()}
            summary["pooled_mean_dice"] = _json_float(_nanmean(list(pooled.values())))
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "model": self.model,
            "protocol": self.protocol,
            "data": self.data,
            "shots": self.shots,
            "folds": self.folds,
            "labels": {str(k): v for k, v in self.labels.items()},
            "engine": self.engine,
            "splits": [asdict(s) for s in self.splits],
            "fold_dice": [
                {
                    "fold": f,
                    "dice": {str(k): _json_float(v) for k, v in fold_dice[f].items()},
                    "mean_dice": _json_float(_nanmean(list(fold_dice[f].values()))),
                }
                for f in self.folds
            ],
            "summary": summary,
            "queries": [q.to_dict() for q in self.queries],
            "seconds_total": round(self.seconds_total, 3),
        }

    def markdown(self, *, per_query: bool = True) -> str:
        """The papers' table (Dice %, classes and their mean), per-fold rows, and distances in mm."""
        names = [_short(self.labels[k]) for k in self.labels]
        head = "| " + " | ".join(["method", *names, "Mean", "s/volume"]) + " |"
        rule = "|" + "---|" * (len(names) + 3)
        method = f"{self.model} ({self.protocol.upper()}, {self.shots}-shot)"
        dice = self.class_dice()
        row = [method, *(_pct(dice[k]) for k in self.labels), _pct(self.mean_dice())]
        lines = [head, rule, "| " + " | ".join([*row, f"{self.seconds_per_volume():.2f}"]) + " |"]
        if self.pooled:
            pooled = self._over_folds(self.fold_pooled_dice())
            prow = [f"{method}, pooled", *(_pct(pooled[k]) for k in self.labels)]
            prow.append(_pct(_nanmean(list(pooled.values()))))
            lines.append("| " + " | ".join([*prow, ""]) + " |")
        lines += ["", "| fold | " + " | ".join([*names, "Mean"]) + " |", "|" + "---|" * (len(names) + 2)]
        for f, per_label in self.fold_dice().items():
            values = [_pct(per_label[k]) for k in self.labels]
            lines.append(f"| {f} | " + " | ".join([*values, _pct(_nanmean(list(per_label.values())))]) + " |")
        if per_query:
            lines += ["", "| fold | query | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
            for split in self.splits:
                for qid in split.query_ids:
                    by_label = {
                        q.label: q for q in self.queries if q.fold == split.fold and q.query_id == qid
                    }
                    cells = [_pct(by_label[k].dice) if k in by_label else "" for k in self.labels]
                    lines.append(f"| {split.fold} | {qid} | " + " | ".join(cells) + " |")
        hd, assd = self.class_distance("hd95_mm"), self.class_distance("assd_mm")
        lines += ["", "| mm | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        lines.append("| HD95 | " + " | ".join(_mm(hd[k]) for k in self.labels) + " |")
        lines.append("| ASSD | " + " | ".join(_mm(assd[k]) for k in self.labels) + " |")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return Path(path)


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
    """Run the protocol over ``folds`` (default all) and ``labels`` (default: the classes of the supports).

    ``protocol="study"`` scores the volumes ``ids`` (default: all) with supports taken from each volume
    itself (see the module docstring); ``folds`` and ``n_folds`` are then not used.

    A core job: progress counts query slices segmented; ``cancel`` stops between slices (the engine
    checks it) and raises :class:`~sd_fsmis.core.errors.JobCancelled`.
    """
    protocol = str(protocol).lower()
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}: use ep1, ep2 or study")
    if protocol == "study":
        return _evaluate_study(
            dataset,
            engine,
            ids=dataset.ids if ids is None else ids,
            labels=labels,
            shots=shots,
            model_name=model_name,
            surface=surface,
            pooled=pooled,
            save_predictions=save_predictions,
            progress=progress,
            cancel=cancel,
        )
    if ids is not None:
        raise EvaluationError("a list of volumes (ids) applies to the study protocol; ep1/ep2 use folds")
    fold_list = list(range(n_folds)) if folds is None else sorted({int(f) for f in folds})
    splits = [fold_split(dataset.ids, f, n_folds=n_folds, shots=shots) for f in fold_list]
    label_maps: dict[int, LabelMap] = {}  # small (uint8): kept for the whole run
    cache: dict[int, _Case] = {}  # volumes: only those of the current fold

    def label_map(case_id: int) -> LabelMap:
        if case_id not in label_maps:
            entry = dataset.case(case_id)
            label_maps[case_id] = LabelMap.load(entry.label, labels=dataset.class_names)
        return label_maps[case_id]

    def case(case_id: int) -> _Case:
        if case_id not in cache:
            cache[case_id] = _load_case(dataset, case_id, label_map(case_id))
        return cache[case_id]

    # The classes: those asked for, which every support volume must hold; by default all the classes
    # that every support volume holds (CHAOS: 1..4).
    in_supports = [(s, sid, set(label_map(sid).present_labels())) for s in splits for sid in s.support_ids]
    if labels is None:
        wanted = sorted(set.intersection(*(present for _, _, present in in_supports)))
        if not wanted:
            raise EvaluationError("the support volumes share no labelled class")
    else:
        wanted = sorted({int(v) for v in labels})
    _check_classes(wanted)
    for split, sid, present in in_supports:
        missing = [v for v in wanted if v not in present]
        if missing:
            names = ", ".join(f"{v} ({dataset.class_name(v)})" for v in missing)
            raise EvaluationError(f"unknown label {names}: not in support volume {sid} of fold {split.fold}")
    out_dir = Path(save_predictions) if save_predictions is not None else None
    start = time.perf_counter()
    report = _new_report(dataset, engine, model_name, protocol, splits, wanted, shots, pooled)
    # Plan first (label maps only: cheap), so that progress knows the total number of slices.
    plan: list[tuple[FoldSplit, int, int, list[int]]] = []
    for split in splits:
        for qid in split.query_ids:
            for value in wanted:
                plan.append((split, qid, value, []))
    total = 0
    for _split, qid, value, slices in plan:
        ref = label_map(qid).binary(value)
        if protocol == "ep1":
            slices.extend(sorted(ep1_chunks(labelled_slices(ref))))
        else:
            slices.extend(range(ref.shape[0]))
        total += len(slices)
    reporter = ProgressReporter(total, progress, cancel)
    reporter.report("evaluating")
    for split, qid, value, slices in plan:
        result = _evaluate_query(
            split, qid, value, slices, case, engine, protocol, dataset, reporter, cancel, surface, out_dir
        )
        report.queries.append(result)
        log.info(
            "fold %d query %d %s: Dice %.4f (%.1f s)",
            split.fold,
            qid,
            result.name,
            result.dice,
            result.seconds,
        )
        for old in [i for i in cache if i not in split.ids]:  # keep only the current fold's volumes
            del cache[old]
    return _finish(report, start, out_dir)


def _evaluate_study(
    dataset: FewShotDataset,
    engine: SegmentationEngine,
    *,
    ids: Sequence[int],
    labels: Sequence[int] | None,
    shots: int,
    model_name: str | None,
    surface: bool,
    pooled: bool,
    save_predictions: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> EvaluationReport:
    """The "study" protocol (module docstring): supports from each volume itself, one pseudo-fold."""
    if shots < 1:
        raise EvaluationError("--shots must be at least 1")
    id_list = sorted({int(i) for i in ids})
    if not id_list:
        raise EvaluationError("no volume to evaluate")
    label_maps = {i: LabelMap.load(dataset.case(i).label, labels=dataset.class_names) for i in id_list}
    present = {i: set(m.present_labels()) for i, m in label_maps.items()}
    in_any = set().union(*present.values())
    if labels is None:
        wanted = sorted(in_any)
        if not wanted:
            raise EvaluationError(f"volumes {', '.join(map(str, id_list))} hold no labelled class")
    else:
        wanted = sorted({int(v) for v in labels})
    _check_classes(wanted)
    missing = [v for v in wanted if v not in in_any]
    if missing:
        names = ", ".join(f"{v} ({dataset.class_name(v)})" for v in missing)
        raise EvaluationError(f"unknown label {names}: in none of the volumes {', '.join(map(str, id_list))}")
    split = FoldSplit(0, [dataset.ids.index(i) for i in id_list], id_list, list(id_list), list(id_list))
    out_dir = Path(save_predictions) if save_predictions is not None else None
    start = time.perf_counter()
    report = _new_report(dataset, engine, model_name, "study", [split], wanted, shots, pooled)
    plan = [
        (qid, value, study_layout(label_maps[qid].binary(value), shots)[1])
        for qid in id_list
        for value in wanted
        if value in present[qid]
    ]
    cache: dict[int, _Case] = {}  # only the volume being evaluated

    def case(case_id: int) -> _Case:
        if case_id not in cache:
            cache.clear()
            cache[case_id] = _load_case(dataset, case_id, label_maps[case_id])
        return cache[case_id]

    reporter = ProgressReporter(sum(len(q) for _, _, q in plan), progress, cancel)
    reporter.report("evaluating")
    for qid, value, slices in plan:
        result = _evaluate_query(
            split,
            qid,
            value,
            slices,
            case,
            engine,
            "study",
            dataset,
            reporter,
            cancel,
            surface,
            out_dir,
            shots=shots,
        )
        report.queries.append(result)
        log.info("study volume %d %s: Dice %.4f (%.1f s)", qid, result.name, result.dice, result.seconds)
    return _finish(report, start, out_dir)


def _evaluate_query(
    split: FoldSplit,
    qid: int,
    value: int,
    slices: list[int],
    case: Callable[[int], _Case],
    engine: SegmentationEngine,
    protocol: str,
    dataset: FewShotDataset,
    reporter: ProgressReporter,
    cancel: CancelToken | None,
    surface: bool,
    out_dir: Path | None,
    shots: int = 1,
) -> QueryResult:
    """Segment one class in one query volume as the protocol says, and score it."""
    query = case(qid)
    name = dataset.class_name(value)
    ref = query.labels.binary(value)
    supports: list[SupportExample] = []
    support_slices: list[list[int]] = []
    chunk_of: dict[int, int] = {}
    assignment: dict[int, list[int]] | None
    if protocol == "ep1":
        chunk_of = ep1_chunks(labelled_slices(ref))
        members: list[list[int]] = [[] for _ in range(N_CHUNKS)]  # chunk -> support example indices
        for sid in split.support_ids:
            support = case(sid)
            mask = support.labels.binary(value)
            chosen = chunk_middle_slices(labelled_slices(mask), N_CHUNKS)
            for i, example in enumerate(_examples(support, mask, chosen, sid, name)):
                members[i].append(len(supports))
                supports.append(example)
                support_slices.append([sid, example.slice_index])
        assignment = {z: list(members[c]) for z, c in chunk_of.items()}
    elif protocol == "study":
        chosen, _queries, chunk_of = study_layout(ref, shots)
        examples = make_support_examples(
            query.normalized,
            ref,
            chosen,
            from_query=True,
            source=f"{qid}",
            label_name=name,
            spacing_yx=(query.volume.geometry.spacing[1], query.volume.geometry.spacing[0]),
        )
        for example in examples:
            supports.append(example)
            support_slices.append([qid, example.slice_index])
        assignment = {z: [c] for z, c in chunk_of.items()}
    else:
        for sid in split.support_ids:
            support = case(sid)
            mask = support.labels.binary(value)
            middle = chunk_middle_slices(labelled_slices(mask), 1)
            for example in _examples(support, mask, middle, sid, name):
                supports.append(example)
                support_slices.append([sid, example.slice_index])
        assignment = {z: list(range(len(supports))) for z in slices}
    spacing = query.volume.geometry.spacing
    request = SegmentationRequest(
        query=query.normalized,
        supports=supports,
        slices=slices,
        assignment=assignment,
        spacing_zyx=(spacing[2], spacing[1], spacing[0]),
    )
    base = reporter.done
    message = f"volume {qid}, {name}" if protocol == "study" else f"fold {split.fold}, volume {qid}, {name}"

    def forward(p: Progress) -> None:
        reporter.done = base + min(p.done, len(slices))
        reporter.report(message)

    started = time.perf_counter()
    predicted = np.zeros(ref.shape, dtype=bool)
    if slices:  # EP1 on a query without the class has nothing to segment (its Dice is then undefined)
        predicted = np.asarray(engine.segment(request, progress=forward, cancel=cancel).mask, dtype=bool)
    seconds = time.perf_counter() - started
    reporter.done = base + len(slices)
    reporter.report(message)
    reporter.check()
    pred = np.zeros(ref.shape, dtype=bool)
    pred[slices] = predicted[slices]
    if protocol == "study":  # the support slices are the person's own painting: not scored
        scored = np.zeros(ref.shape, dtype=bool)
        scored[slices] = ref[slices]
        ref = scored
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan
    hd95 = assd = math.nan
    if surface:
        hd95, assd = surface_distances(pred, ref, spacing)
    saved = ""
    if out_dir is not None:
        rel = Path(f"fold{split.fold}") / f"pred_{qid}_label{value}.nii.gz"
        array = np.zeros(ref.shape, dtype=np.uint8 if value <= 255 else np.uint16)
        array[pred] = value
        LabelMap(array, query.volume.geometry, {value: Label.default(value, name)}).save(out_dir / rel)
        saved = rel.as_posix()
    return QueryResult(
        fold=split.fold,
        query_id=qid,
        label=value,
        name=name,
        dice=dice,
        hd95_mm=hd95,
        assd_mm=assd,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        slices=list(slices),
        support_slices=support_slices,
        chunks=chunk_of,
        seconds=seconds,
        prediction=saved,
    )


def _check_classes(wanted: Sequence[int]) -> None:
    for value in wanted:
        if value < 1:
            raise EvaluationError(f"label {value} is not a class (labels are 1 and above)")


def _new_report(
    dataset: FewShotDataset,
    engine: SegmentationEngine,
    model_name: str | None,
    protocol: str,
    splits: list[FoldSplit],
    wanted: Sequence[int],
    shots: int,
    pooled: bool,
) -> EvaluationReport:
    """An empty report of ``engine`` on ``dataset``: the queries are appended as they are scored."""
    return EvaluationReport(
        model=model_name or getattr(engine, "name", "engine"),
        protocol=protocol,
        data=str(dataset.root),
        folds=[split.fold for split in splits],
        labels={v: dataset.class_name(v) for v in wanted},
        shots=shots,
        engine=_engine_config(engine),
        splits=splits,
        pooled=pooled,
    )


def _finish(report: EvaluationReport, start: float, out_dir: Path | None) -> EvaluationReport:
    """Stamp the report's total time and save it beside the predictions (when they are saved)."""
    report.seconds_total = time.perf_counter() - start
    if out_dir is not None:
        report.save(out_dir / "evaluation.json")
    return report


def _examples(
    support: _Case, mask: np.ndarray, chosen: list[int], sid: int, name: str
) -> list[SupportExample]:
    spacing = support.volume.geometry.spacing
    return make_support_examples(
        support.normalized,
        mask,
        chosen,
        source=f"{sid}",
        label_name=name,
        spacing_yx=(spacing[1], spacing[0]),
    )


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


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def _json_float(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _short(name: str) -> str:
    return SHORT_NAMES.get(name.lower(), name.title())


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _mm(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"
