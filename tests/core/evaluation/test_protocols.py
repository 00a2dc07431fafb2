"""The evaluation protocol: fold layout, EP1 chunks, support slices, Dice averaging, saved predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.core.engines.classical import ClassicalEngine
from sd_fsmis.core.errors import UserError
from sd_fsmis.core.evaluation.folds import EvaluationError, ep1_chunks, fold_split, parse_folds
from sd_fsmis.core.evaluation.metrics import dice as metrics_dice
from sd_fsmis.core.evaluation.protocols import evaluate
from sd_fsmis.core.io.datasets import DatasetError, FewShotDataset
from sd_fsmis.core.io.labelmap import LabelMap

CHAOS_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)


# -------------------------------------------------------------------------------------- fold layout
def test_chaos_folds_are_the_literature_blocks_with_support_at_position_2():
    shuffled = list(reversed(CHAOS_IDS))  # sorted as integers inside
    expected_positions = [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 12], [12, 13, 14, 15, 16]]
    expected_positions.append([16, 17, 18, 19, 0])
    for k, positions in enumerate(expected_positions):
        split = fold_split(shuffled, k)
        assert split.positions == positions
        assert split.ids == [CHAOS_IDS[p] for p in positions]
        assert split.support_ids == [CHAOS_IDS[positions[2]]]
        assert split.query_ids == [CHAOS_IDS[p] for i, p in enumerate(positions) if i != 2]
    assert fold_split(CHAOS_IDS, 0).support_ids == [3]
    assert fold_split(CHAOS_IDS, 4).ids == [36, 37, 38, 39, 1]


def test_ids_sort_as_integers_not_strings(tmp_path):
    for case_id in (10, 2, 1, 33, 5):
        _write_case(tmp_path, case_id, np.random.default_rng(case_id))
    assert FewShotDataset.open(tmp_path).ids == [1, 2, 5, 10, 33]


def test_abd_ct_and_shots_layouts():
    ct = fold_split(range(30), 4)  # blocks of 6, 7 volumes: 24..29 plus 0
    assert ct.positions == [24, 25, 26, 27, 28, 29, 0]
    two = fold_split(CHAOS_IDS, 1, shots=2)  # one more volume per fold, supports at positions 2 and 3
    assert two.positions == [4, 5, 6, 7, 8, 9] and two.support_ids == [CHAOS_IDS[6], CHAOS_IDS[7]]
    assert len(two.query_ids) == 4


@pytest.mark.parametrize("bad", [5, -1])
def test_bad_fold_is_a_user_error(bad):
    with pytest.raises(EvaluationError) as info:
        fold_split(CHAOS_IDS, bad)
    assert isinstance(info.value, UserError)


def test_parse_folds():
    assert parse_folds("all") == [0, 1, 2, 3, 4]
    assert parse_folds("3") == [3]
    assert parse_folds("2,0") == [0, 2]
    for bad in ("5", "x", "-1", ""):
        with pytest.raises(EvaluationError):
            parse_folds(bad)


# ------------------------------------------------------------------------------------------- chunks
def _sizes(chunks: dict[int, int]) -> list[int]:
    return [sum(1 for c in chunks.values() if c == i) for i in range(3)]


def test_ep1_chunks_follow_ssl_alpnet():
    assert _sizes(ep1_chunks(range(10, 24))) == [5, 4, 5]  # 14 slices
    assert _sizes(ep1_chunks(range(21))) == [7, 7, 7]
    assert _sizes(ep1_chunks(range(4))) == [1, 1, 2]
    assert _sizes(ep1_chunks(range(3))) == [1, 1, 1]
    assert ep1_chunks([7]) == {7: 0}
    assert ep1_chunks([]) == {}
    chunks = ep1_chunks(range(5, 19))
    assert list(chunks) == list(range(5, 19))  # in order, consecutive
    assert list(chunks.values()) == sorted(chunks.values())


def test_ep1_chunks_cover_the_labelled_range_including_gaps():
    mask = np.zeros((20, 4, 4), bool)
    mask[[3, 4, 6, 7, 8], 1, 1] = True  # slice 5 misses the class
    from sd_fsmis.core.engines.support import labelled_slices

    chunks = ep1_chunks(labelled_slices(mask))
    assert sorted(chunks) == [3, 4, 5, 6, 7, 8]


# ------------------------------------------------------------------------------ synthetic data folder
def _write_case(root: Path, case_id: int, rng: np.random.Generator, depth: int = 10, size: int = 48) -> None:
    """A small volume: a body ellipse holding an 'organ' (label 1) and a small 'kidney' (label 2)."""
    zz, yy, xx = np.mgrid[:depth, :size, :size].astype(np.float32)
    shift = rng.uniform(-3, 3, 2)
    body = ((yy - size / 2) / (0.45 * size)) ** 2 + ((xx - size / 2) / (0.42 * size)) ** 2 <= 1
    taper = np.clip(1 - np.abs(zz - depth / 2) / (depth / 2 - 1), 0, 1)
    organ = ((yy - 20 - shift[0]) / (10 * taper + 1e-3)) ** 2 + (
        (xx - 22 - shift[1]) / (8 * taper + 1e-3)
    ) ** 2
    organ = (organ <= 1) & (taper > 0.2)
    kidney = ((yy - 32) ** 2 + (xx - 32 - shift[1]) ** 2 <= 16) & (zz >= 3) & (zz <= 6)
    image = 200 * body + 300 * organ + 500 * kidney + rng.normal(0, 5, body.shape)
    labels = np.zeros(body.shape, np.uint8)
    labels[organ] = 1
    labels[kidney] = 2
    for folder, name, array in (("images", "image", image.astype(np.float32)), ("labels", "label", labels)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((1.5, 1.5, 5.0))
        itk.SetOrigin((-30.0, -30.0, float(case_id)))
        sitk.WriteImage(itk, str(root / folder / f"{name}_{case_id}.nii.gz"))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fewshot-data")
    rng = np.random.default_rng(0)
    for case_id in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10):
        _write_case(root, case_id, rng)
    return root


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such data folder"):
        FewShotDataset.open(tmp_path / "missing")
    with pytest.raises(DatasetError, match="images/ and labels/"):
        FewShotDataset.open(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        FewShotDataset.open(tmp_path)
    (tmp_path / "images" / "image_4.nii.gz").write_bytes(b"x")
    with pytest.raises(DatasetError, match="label_4"):
        FewShotDataset.open(tmp_path)


def test_synthetic_ep2_segments_every_slice_and_unknown_label_is_refused(synthetic_dir):
    dataset = FewShotDataset.open(synthetic_dir, class_names={1: "organ", 2: "kidney"})
    report = evaluate(dataset, ClassicalEngine(), protocol="ep2", folds=[1], labels=[2])
    assert [q.query_id for q in report.queries] == [3, 4]  # fold 1: positions 2, 3, 4; support 5
    for q in report.queries:
        assert q.slices == list(range(10))
        assert q.support_slices == [[5, 5]]  # labelled slices 3..6: the one at 1/2 is index 2, slice 5
        assert q.chunks == {}
    with pytest.raises(EvaluationError, match="label 3"):
        evaluate(dataset, ClassicalEngine(), protocol="ep1", folds=[0], labels=[3])


# -------------------------------------------------------------------------------------------- CHAOS
def test_chaos_fold_ep1_spleen_matches_saved_predictions(chaos_dir, tmp_path):
    """Fold 0, spleen, EP1, classical: supports at 1/6, 1/2, 5/6; chunks; Dice recomputed from the files."""
    dataset = FewShotDataset.open(chaos_dir)
    out = tmp_path / "preds"
    report = evaluate(dataset, ClassicalEngine(), protocol="ep1", folds=[0], labels=[4], save_predictions=out)
    document = json.loads((out / "evaluation.json").read_text())
    assert document["summary"]["dice"]["4"] == pytest.approx(report.class_dice()[4])

    support_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(chaos_dir / "labels" / "label_3.nii.gz")))
    spleen_slices = [z for z in range(support_labels.shape[0]) if (support_labels[z] == 4).any()]
    n = len(spleen_slices)
    expected_supports = [[3, spleen_slices[int(f * n)]] for f in (1 / 6, 1 / 2, 5 / 6)]

    dices = []
    for q, row in zip(report.queries, document["queries"]):
        assert q.fold == 0 and q.label == 4 and row["query_id"] == q.query_id
        assert q.support_slices == expected_supports
        reference = LabelMap.load(chaos_dir / "labels" / f"label_{q.query_id}.nii.gz")
        ref = reference.binary(4)
        labelled = [z for z in range(ref.shape[0]) if ref[z].any()]
        lo, hi = labelled[0], labelled[-1]
        assert q.slices == list(range(lo, hi + 1))
        for z, chunk in q.chunks.items():  # SSL-ALPNet's rule, recomputed here
            assert chunk == min(2, int((z - lo) // ((hi - lo) / 3)))
        assert [q.chunks[z] for z in q.slices] == sorted(q.chunks.values())
        pred_map = LabelMap.load(out / row["prediction"], like=reference.geometry)
        pred = pred_map.binary(4)
        assert not pred[:lo].any() and not pred[hi + 1 :].any()
        recomputed = metrics_dice(pred, ref)
        tp, fp, fn = (pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum()
        assert recomputed == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert recomputed == pytest.approx(row["dice"], abs=1e-12)
        assert math.isfinite(row["hd95_mm"]) and row["hd95_mm"] >= 0
        dices.append(recomputed)
    assert len(dices) == 4
    assert np.mean(dices) == pytest.approx(document["fold_dice"][0]["dice"]["4"])
    assert np.mean(dices) == pytest.approx(report.mean_dice())
    assert f"{100 * np.mean(dices):.2f}" in report.markdown()
    assert np.mean(dices) > 0.2  # spleen is the classical engine's hardest class (measured ~0.37)


def test_study_protocol_takes_supports_from_the_query_and_does_not_score_them(chaos_dir, tmp_path):
    """The app's workflow: 1 or 3 painted slices of the volume itself; the rest of its range is scored."""
    from sd_fsmis.core.engines.classical import RegistrationSettings
    from sd_fsmis.core.engines.support import chunk_middle_slices, labelled_slices
    from sd_fsmis.core.evaluation.folds import study_layout

    dataset = FewShotDataset.open(chaos_dir)
    out = tmp_path / "preds"
    # coarse propagation settings: the layout is under test here, not the engine (a second, not 30)
    fast = RegistrationSettings(
        initializer="identity", shrink_factors=(4,), smoothing_sigmas=(2.0,), affine_iterations=10
    )
    engine = ClassicalEngine(neighbour=fast)
    report = evaluate(
        dataset, engine, protocol="study", ids=[5, 2], labels=[1], shots=3, save_predictions=out
    )
    assert report.folds == [0] and report.splits[0].query_ids == [2, 5] and report.protocol == "study"
    assert [q.query_id for q in report.queries] == [2, 5]
    for q in report.queries:
        reference = LabelMap.load(chaos_dir / "labels" / f"label_{q.query_id}.nii.gz")
        ref = reference.binary(1)
        labelled = labelled_slices(ref)
        chosen = chunk_middle_slices(labelled, 3)
        assert q.support_slices == [[q.query_id, z] for z in chosen]  # from the query volume itself
        assert q.slices == [z for z in range(labelled[0], labelled[-1] + 1) if z not in chosen]
        assert set(q.chunks) == set(q.slices) and sorted(set(q.chunks.values())) == [0, 1, 2]
        pred = LabelMap.load(out / q.prediction, like=reference.geometry).binary(1)
        assert not pred[chosen].any()  # nothing predicted (or scored) on the painted slices
        scored = np.zeros_like(ref)
        scored[q.slices] = ref[q.slices]
        assert q.false_negatives == int((scored & ~pred).sum())  # the support slices are not missed voxels
        assert q.dice == pytest.approx(metrics_dice(pred, scored))
        assert q.dice > 0.5  # propagation from painted slices of the same liver (measured ~0.8)
        assert math.isfinite(q.hd95_mm)
    assert "STUDY" in report.markdown()
    one, queries, chunks = study_layout(LabelMap.load(chaos_dir / "labels" / "label_2.nii.gz").binary(1), 1)
    assert len(one) == 1 and one[0] not in queries and set(chunks.values()) == {0}
    with pytest.raises(EvaluationError, match="none of the volumes"):
        evaluate(dataset, engine, protocol="study", ids=[2], labels=[7])
    with pytest.raises(EvaluationError, match="applies to the study and clinical protocols"):
        evaluate(dataset, engine, protocol="ep1", ids=[2])


# ------------------------------------------------------------------------------- clinical, new protocols
def test_clinical_scores_the_whole_volume_but_the_painted_slices(synthetic_dir, tmp_path):
    """Every slice is segmented and scored (false positives beyond the ends count), the painted ones not;
    the Dice recomputes from the saved prediction."""
    dataset = FewShotDataset.open(synthetic_dir, class_names={1: "organ", 2: "kidney"})
    out = tmp_path / "clinical"
    report = evaluate(
        dataset, ClassicalEngine(), protocol="clinical", ids=[4], labels=[2], shots=3, save_predictions=out
    )
    [q] = report.queries
    ref = LabelMap.load(synthetic_dir / "labels" / "label_4.nii.gz").binary(2)  # slices 3..6
    painted = [z for _, z in q.support_slices]
    assert len(painted) == 3 and all(ref[z].any() for z in painted)
    assert q.slices == [z for z in range(ref.shape[0]) if z not in painted]  # beyond the ends too
    assert q.chunks == {}  # the engine chooses each slice's support, as the GUI does
    pred = LabelMap.load(out / q.prediction).binary(2)
    assert not pred[painted].any()  # the painted slices are not part of the score
    scored = ref.copy()
    scored[painted] = False
    assert q.dice == pytest.approx(metrics_dice(pred, scored), abs=1e-9)
    assert q.false_positives == int(np.count_nonzero(pred & ~scored))


def test_study_misses_false_positives_that_clinical_counts(synthetic_dir):
    """An engine that paints every slice: "study" sees only the structure's range, "clinical" the volume."""

    class EverywhereEngine:
        name = "everywhere"

        def segment(self, request, progress=None, cancel=None):
            mask = np.zeros(request.query.shape, dtype=bool)
            for z in request.slices:
                mask[z] = request.supports[0].mask
            return type("Result", (), {"mask": mask})()

    dataset = FewShotDataset.open(synthetic_dir, class_names={1: "organ", 2: "kidney"})
    study = evaluate(dataset, EverywhereEngine(), protocol="study", ids=[4], labels=[2], surface=False)
    clinical = evaluate(dataset, EverywhereEngine(), protocol="clinical", ids=[4], labels=[2], surface=False)
    assert study.queries[0].false_positives < clinical.queries[0].false_positives
    assert clinical.mean_dice() < study.mean_dice()


def test_a_new_protocol_is_one_declaration(synthetic_dir):
    from sd_fsmis.core.evaluation.protocols import PROTOCOLS, Protocol, register_protocol

    register_protocol(
        Protocol(
            "top-slice",
            "supports: the structure's lowest slice of the volume itself; queries: the next two",
            supports_from_query=True,
            support_slices=lambda labelled, shots: labelled[:1],
            query_slices=lambda ref, painted: [painted[0] + 1, painted[0] + 2],
        )
    )
    try:
        report = evaluate(
            FewShotDataset.open(synthetic_dir), ClassicalEngine(), protocol="top-slice", ids=[2], labels=[2]
        )
        assert report.queries[0].slices == [4, 5] and report.queries[0].support_slices == [[2, 3]]
    finally:
        PROTOCOLS.pop("top-slice")
