"""``sd-fsmis dice``: the table, the JSON (checked against core), and one-line errors with exit code 2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sd_fsmis.cli import main
from sd_fsmis.core.evaluation.metrics import compare_label_maps
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.labelmap import CHAOS_MR_ORGANS, LabelMap


@pytest.fixture
def ref_path(chaos_label_path):
    return chaos_label_path(1)  # read in place, never written


@pytest.fixture
def pred_path(ref_path, tmp_path):
    """A plausible prediction of case 1 (shifted by a slice and two rows), named, in tmp_path."""
    ref = LabelMap.load(ref_path, labels=CHAOS_MR_ORGANS)
    moved = np.roll(ref.array, shift=(1, 2), axis=(0, 1))
    return LabelMap.from_array(moved, ref.geometry, ref.labels).save(tmp_path / "pred.nii.gz")


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == ""
    assert len(lines) == 1, err
    assert lines[0].startswith("sd-fsmis: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_table(pred_path, ref_path, capsys):
    assert main(["dice", str(pred_path), str(ref_path)]) == 0
    out = capsys.readouterr().out
    for name in ("1 liver", "2 right kidney", "3 left kidney", "4 spleen", "mean Dice", "Dice per slice"):
        assert name in out
    assert "1.25 x 1.25 x 7.7 mm" in out


def test_json_matches_core(pred_path, ref_path, capsys):
    assert main(["dice", str(pred_path), str(ref_path), "--json"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    ref = LabelMap.load(ref_path)
    expected = compare_label_maps(LabelMap.load(pred_path), ref)
    assert [d["label"] for d in doc["labels"]] == [1, 2, 3, 4]
    assert Geometry.from_dict(doc["geometry"]) == ref.geometry
    for d in doc["labels"]:
        c = expected[d["label"]]
        assert d["name"] == CHAOS_MR_ORGANS[d["label"]]  # from the prediction's sidecar
        assert d["dice"] == pytest.approx(c.dice, abs=1e-12)
        assert d["hd95_mm"] == pytest.approx(c.hd95_mm) and d["assd_mm"] == pytest.approx(c.assd_mm)
        assert len(d["dice_per_slice"]) == ref.shape[0]
        for got, want in zip(d["dice_per_slice"], c.dice_per_slice):
            assert (got is None and math.isnan(want)) or got == pytest.approx(want)
        assert (d["true_positives"], d["false_positives"], d["false_negatives"]) == (
            c.true_positives,
            c.false_positives,
            c.false_negatives,
        )
    assert doc["mean_dice"] == pytest.approx(np.mean([c.dice for c in expected.values()]))


def test_selected_labels_and_a_label_in_neither_mask(pred_path, ref_path, capsys):
    assert main(["dice", str(pred_path), str(ref_path), "--labels", "2,7", "--json"]) == 0
    out, err = capsys.readouterr()
    doc = _strict_json(out)
    assert [d["label"] for d in doc["labels"]] == [2, 7]
    assert doc["labels"][1]["dice"] is None and doc["labels"][1]["hd95_mm"] is None
    assert "label 7 is in neither mask" in err


def test_empty_masks(tmp_path, capsys):
    grid = Geometry.identity((3, 8, 8), (1.25, 1.25, 7.7))
    empty = LabelMap.empty(grid).save(tmp_path / "empty.nii.gz")
    assert main(["dice", str(empty), str(empty)]) == 0
    assert "no labels in either mask" in capsys.readouterr().out
    assert main(["dice", str(empty), str(empty), "--json"]) == 0
    doc = _strict_json(capsys.readouterr().out)
    assert doc["labels"] == [] and doc["mean_dice"] is None


def test_missing_file(ref_path, tmp_path, capsys):
    assert main(["dice", str(tmp_path / "nope.nii.gz"), str(ref_path)]) == 2
    assert "no such file" in _one_error_line(capsys)


def test_corrupt_file(ref_path, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2048))
    assert main(["dice", str(corrupt), str(ref_path)]) == 2
    assert "corrupt.nii.gz" in _one_error_line(capsys)


def test_truncated_file(pred_path, ref_path, capsys):
    data = pred_path.read_bytes()
    pred_path.write_bytes(data[: len(data) * 2 // 3])
    assert main(["dice", str(pred_path), str(ref_path)]) == 2
    assert "truncated" in _one_error_line(capsys)


def test_mask_of_another_size(chaos_label_path, ref_path, capsys):
    other = chaos_label_path(2)  # another patient: 31 slices, another origin
    assert main(["dice", str(other), str(ref_path)]) == 2
    line = _one_error_line(capsys)
    assert "does not match the reference's geometry" in line and "size" in line


def test_bad_labels_option(pred_path, ref_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dice", str(pred_path), str(ref_path), "--labels", "liver"])
    assert exit_info.value.code == 2
    assert "--labels" in capsys.readouterr().err
