"""The clinical protocol: painted slices of the study itself, the whole volume segmented and scored."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sd_fsmis.core.engines.propagation import PropagationEngine
from sd_fsmis.core.engines.support import chunk_middle_slices, labelled_slices
from sd_fsmis.core.evaluation.metrics import dice as metrics_dice
from sd_fsmis.core.evaluation.protocols import EvaluationError, evaluate
from sd_fsmis.core.io.datasets import FewShotDataset
from sd_fsmis.core.io.labelmap import LabelMap


def test_clinical_dice_is_the_dice_of_the_saved_predictions(chaos_dir, tmp_path):
    """3 painted slices per volume, every slice segmented with the defaults; the painted slices are not
    scored; the report's Dice, per query and per class, is recomputed from the files written."""
    dataset = FewShotDataset.open(chaos_dir)
    out = tmp_path / "preds"
    report = evaluate(
        dataset,
        PropagationEngine(),
        protocol="clinical",
        ids=[3, 1],
        labels=[2, 3],
        shots=3,
        save_predictions=out,
    )
    document = json.loads((out / "evaluation.json").read_text())
    assert report.protocol == document["protocol"] == "clinical" and report.folds == [0]
    assert [(q.query_id, q.label) for q in report.queries] == [(1, 2), (1, 3), (3, 2), (3, 3)]
    per_class: dict[int, list[float]] = {2: [], 3: []}
    for q, row in zip(report.queries, document["queries"]):
        reference = LabelMap.load(chaos_dir / "labels" / f"label_{q.query_id}.nii.gz")
        ref = reference.binary(q.label)
        painted = chunk_middle_slices(labelled_slices(ref), 3)
        assert q.support_slices == [[q.query_id, z] for z in painted]  # from the study itself
        assert q.slices == [z for z in range(ref.shape[0]) if z not in painted]  # the whole volume
        pred = LabelMap.load(out / row["prediction"], like=reference.geometry).binary(q.label)
        assert not pred[painted].any()  # the painted slices are not scored (emptied in the saved file)
        ref[painted] = False
        recomputed = metrics_dice(pred, ref)
        assert recomputed == pytest.approx(q.dice, abs=1e-12) and row["dice"] == pytest.approx(q.dice)
        assert q.false_positives == int((pred & ~ref).sum())  # false positives anywhere in the volume
        assert math.isfinite(q.hd95_mm)
        per_class[q.label].append(recomputed)
    for label, values in per_class.items():
        assert report.class_dice()[label] == pytest.approx(np.mean(values))
        assert document["summary"]["dice"][str(label)] == pytest.approx(np.mean(values))
    assert report.mean_dice() > 0.8  # kidneys from 3 painted slices (measured ~0.9)
    assert "CLINICAL" in report.markdown()


def test_clinical_protocol_checks_its_inputs(chaos_dir):
    dataset = FewShotDataset.open(chaos_dir)
    with pytest.raises(EvaluationError, match="none of the volumes"):
        evaluate(dataset, PropagationEngine(), protocol="clinical", ids=[2], labels=[7])
    with pytest.raises(EvaluationError, match="at least 1"):
        evaluate(dataset, PropagationEngine(), protocol="clinical", ids=[2], shots=0)
