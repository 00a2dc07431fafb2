"""An evaluation's report: one :class:`QueryResult` per query volume and class, aggregated as the papers
do (Dice per query volume, averaged over a fold's queries, then over the folds; the mean of the classes),
written as the papers' Markdown table and as JSON (``evaluation.json`` beside saved predictions)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sd_fsmis.core.evaluation.folds import FoldSplit
from sd_fsmis.core.io.atomic import atomic_write_text

REPORT_FORMAT = "sd-fsmis evaluation"


REPORT_VERSION = 1


#: Column titles of the papers' tables.
SHORT_NAMES = {"liver": "Liver", "right kidney": "R.Kidney", "left kidney": "L.Kidney", "spleen": "Spleen"}


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
    #: ``{(fold, class): why}``: classes a fold could not score (not in its support volume, in no label map)
    skipped: dict[tuple[int, int], str] = field(default_factory=dict)
    #: warnings about the classes (what is shown as "—" and why), for the command line and the JSON
    notes: list[str] = field(default_factory=list)

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
            "not_scored": [
                {"fold": fold, "label": label, "reason": reason}
                for (fold, label), reason in sorted(self.skipped.items())
            ],
            "notes": list(self.notes),
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
        marks = self._footnotes()
        for f, per_label in self.fold_dice().items():
            values = [_pct(per_label[k]) + marks.get((f, k), ("", ""))[0] for k in self.labels]
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
        notes = dict(marks.values())
        if notes:
            lines += ["", *(f"{mark} — {text}" for mark, text in notes.items())]
        return "\n".join(lines)

    def _footnotes(self) -> dict[tuple[int, int], tuple[str, str]]:
        """``{(fold, class): (mark, "class: why")}`` for the cells a fold could not score."""
        marks: dict[str, str] = {}
        out: dict[tuple[int, int], tuple[str, str]] = {}
        for (fold, label), reason in sorted(self.skipped.items()):
            if label not in self.labels:
                continue
            text = f"{_short(self.labels[label])}: {reason}"
            mark = marks.setdefault(text, "*" * (len(marks) + 1))
            out[(fold, label)] = (mark, text)
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return Path(path)


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def _json_float(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _short(name: str) -> str:
    return SHORT_NAMES.get(name.lower(), name.title())


def _pct(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _mm(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.2f}"
