"""ComparePanel and RunsTable: the numbers are core's, the per-slice plot navigates, the disagreement map,
a reference loaded from a file, runs side by side (sorting, HD95, selecting a run selects its layer)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.engines.classical import ClassicalEngine
from sd_fsmis.core.engines.segmentation import segment_volume
from sd_fsmis.core.evaluation.metrics import compare_label_maps, confusion_overlay, surface_distances
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.volume import Volume, VolumeMetadata
from sd_fsmis.ui.panels.compare import ComparePanel, format_dice, format_ml, format_mm
from sd_fsmis.ui.panels.runs_table import COLUMNS

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
REFERENCE_LABELS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


def new_session(liver_phantom) -> tuple[Session, Study]:
    image, _labels, geometry = liver_phantom
    session = Session()
    volume = Volume(image, geometry, VolumeMetadata(source_path="demo-abdomen.nii.gz", modality="MR"))
    study = session.add_study(Study(volume, path="demo-abdomen.nii.gz", name="Demo abdomen"))
    return session, study


def paint_supports(session: Session, study: Study, labels: np.ndarray, slices: tuple[int, ...]) -> None:
    """A "liver" layer painted from the phantom's labels on ``slices``, each a support example."""
    layer = study.add_layer("liver", labels={1: "liver"}, activate=False)
    for z in slices:
        layer.set_region(
            (slice(z, z + 1), slice(None), slice(None)), (labels[z : z + 1] == 1).astype(np.uint8)
        )
        session.add_support(study, layer, z)


@pytest.fixture(scope="module")
def outcomes(liver_phantom):
    """Classical 1-shot and 3-shot segmentations of the liver, computed once for the module."""
    session, study = new_session(liver_phantom)
    _image, labels, _geometry = liver_phantom
    results = {}
    for shots in ((8,), (3, 8, 12)):
        paint_supports(session, study, labels, shots)
        inputs = session.segmentation_inputs(study)
        results[len(shots)] = (
            inputs,
            segment_volume(inputs.query, inputs.sources, ClassicalEngine(), **inputs.job_options()),
        )
        session.support_set.clear()
    return results


@pytest.fixture
def scene(qtbot, liver_phantom, outcomes):
    """A study with its reference, the 1-shot and 3-shot runs recorded, and the panel."""
    session, study = new_session(liver_phantom)
    _image, labels, geometry = liver_phantom
    reference = study.add_layer(
        "demo labels", LabelMap(labels.copy(), geometry, REFERENCE_LABELS), kind="reference"
    )
    session.set_reference(reference)
    layers = {}
    for k, (inputs, outcome) in outcomes.items():
        inputs = dataclasses.replace(inputs, query_study_id=study.id)
        outcome = dataclasses.replace(outcome, label_map=outcome.label_map.copy())
        layer, _run = session.add_result(inputs, outcome, device="CPU")
        layers[k] = layer
    panel = ComparePanel(session)
    qtbot.addWidget(panel)
    panel.resize(560, 760)
    panel.show()
    qtbot.waitExposed(panel)
    qtbot.waitUntil(lambda: not panel.computing() and not panel.runs_table.computing(), timeout=30_000)
    yield session, study, reference, layers, panel
    assert panel.shutdown(30_000)


def screenshot(widget, name: str) -> Path:
    QtWidgets.QApplication.processEvents()
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert widget.grab().save(str(path), "PNG")
    return path


def test_numbers_are_those_of_core_metrics(qtbot, scene):
    _session, _study, reference, layers, panel = scene
    prediction = layers[3]  # the newest prediction is compared by default
    assert panel.prediction is prediction and panel.reference is reference
    expected = compare_label_maps(prediction.label_map, reference.label_map, [1])
    got = panel.comparisons
    assert list(got) == [1]
    for field in ("dice", "hd95_mm", "assd_mm", "voxels_pred", "voxels_ref", "true_positives"):
        assert getattr(got[1], field) == pytest.approx(getattr(expected[1], field)), field
    np.testing.assert_allclose(got[1].dice_per_slice, expected[1].dice_per_slice)
    c = expected[1]
    assert panel.metric_texts() == [
        [
            "liver",
            format_dice(c.dice),
            format_mm(c.hd95_mm),
            format_mm(c.assd_mm),
            format_ml(c.volume_pred_ml),
            format_ml(c.volume_ref_ml),
        ]
    ]
    assert 0.7 < c.dice < 1.0
    # the plot holds one point per slice with the liver, the slice index as data
    points = panel.plot_points()
    assert [z for z, _ in points] == [z for z, d in enumerate(c.dice_per_slice) if not math.isnan(d)]
    assert [d for _, d in points] == pytest.approx([d for d in c.dice_per_slice if not math.isnan(d)])
    # the other prediction, chosen in the combo
    index = panel.prediction_combo.findData(layers[1].id)
    with qtbot.waitSignal(panel.comparisonChanged, timeout=30_000) as blocker:
        panel.prediction_combo.setCurrentIndex(index)
        panel.prediction_combo.activated.emit(index)
    one_shot = compare_label_maps(layers[1].label_map, reference.label_map, [1])
    assert blocker.args[0][1].dice == pytest.approx(one_shot[1].dice)


def test_clicking_a_point_of_the_plot_goes_to_its_slice(qtbot, scene):
    _session, _study, _reference, _layers, panel = scene
    z, dice = panel.plot_points()[5]
    view_box = panel.plot.getPlotItem().getViewBox()
    scene_pos = view_box.mapViewToScene(QtCore.QPointF(z + 1, dice))  # the plot shows slices 1-based
    widget_pos = panel.plot.mapFromScene(scene_pos)
    with qtbot.waitSignal(panel.goToSlice, timeout=2000) as blocker:
        qtbot.mouseClick(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=widget_pos)
    assert blocker.args == [z]


def test_clicking_a_zero_dice_point_goes_to_its_slice(qtbot, scene):
    """A slice with Dice 0 (the structure missed there, or predicted beyond the organ's end) is clickable
    like any other point: its point lies inside the plot, not on its lower edge."""
    _session, _study, _reference, layers, panel = scene
    z, dice = panel.plot_points()[2][0], 0.0
    layers[3].set_region((slice(z, z + 1), slice(None), slice(None)), 0)  # the liver missed on slice z
    qtbot.waitUntil(lambda: (z, 0.0) in panel.plot_points(), timeout=30_000)
    view_box = panel.plot.getPlotItem().getViewBox()
    scene_pos = view_box.mapViewToScene(QtCore.QPointF(z + 1, dice))
    assert view_box.sceneBoundingRect().adjusted(0, 0, 0, -4).contains(scene_pos)  # inside, not on the edge
    widget_pos = panel.plot.mapFromScene(scene_pos)
    with qtbot.waitSignal(panel.goToSlice, timeout=2000) as blocker:
        qtbot.mouseClick(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=widget_pos)
    assert blocker.args == [z]


def test_show_disagreement_emits_the_confusion_map(qtbot, scene):
    session, _study, reference, layers, panel = scene
    with qtbot.waitSignal(panel.confusionChanged) as blocker:
        panel.confusion_check.setChecked(True)
    array = blocker.args[0]
    expected = confusion_overlay(layers[3].array == 1, reference.array == 1)
    np.testing.assert_array_equal(array, expected)
    assert set(np.unique(array)) == {0, 1, 2, 3}  # TP, FP and FN all present
    screenshot(panel, "compare_panel.png")
    # editing the prediction recomputes the numbers (after a short delay) and the map
    layer = layers[3]
    with qtbot.waitSignal(panel.comparisonChanged, timeout=30_000):
        layer.set_region((slice(8, 9), slice(None), slice(None)), 0)
    assert panel.comparisons[1].dice_per_slice[8] == 0.0
    with qtbot.waitSignal(panel.confusionChanged) as blocker:
        panel.confusion_check.setChecked(False)
    assert blocker.args == [None]
    # another study becomes active: the map goes at once (it belongs to the other study's grid)
    with qtbot.waitSignal(panel.confusionChanged):
        panel.confusion_check.setChecked(True)
    other = Study(Volume(np.zeros((2, 8, 8), np.int16), Geometry.identity((2, 8, 8))), name="other")
    with qtbot.waitSignal(panel.confusionChanged, timeout=2000) as blocker:
        session.add_study(other)
    assert blocker.args == [None]


def test_false_positives_beyond_the_reference_ends_are_marked(qtbot, scene):
    """A prediction carried past the organ's last slice: those slices are marked on the plot (clickable) and
    coloured as false positive in the disagreement map."""
    _session, _study, reference, layers, panel = scene
    pred_slices = np.flatnonzero((layers[3].array == 1).any(axis=(1, 2)))
    last = int(pred_slices[-1])
    # the reference's liver now ends two slices before the prediction's
    with qtbot.waitSignal(panel.comparisonChanged, timeout=30_000):
        reference.set_region((slice(last - 1, last + 1), slice(None), slice(None)), 0)
    ref_slices = np.flatnonzero((reference.array == 1).any(axis=(1, 2)))
    first = int(ref_slices[0])
    assert int(ref_slices[-1]) == last - 2
    assert panel.beyond_slices == [last - 1, last]
    assert "2 slices predicted beyond the reference's ends" in panel.plot_title.text()
    assert panel.reference_span.isVisible()
    assert tuple(panel.reference_span.getRegion()) == (first + 1, last - 1)  # shown 1-based
    xs, ys = panel.beyond_scatter.getData()
    assert list(xs) == [last, last + 1] and list(ys) == [0.0, 0.0]
    point = panel.beyond_scatter.points()[0]
    with qtbot.waitSignal(panel.goToSlice, timeout=2000) as blocker:
        panel.beyond_scatter.sigClicked.emit(panel.beyond_scatter, [point], None)
    assert blocker.args == [last - 1]
    with qtbot.waitSignal(panel.confusionChanged) as blocker:
        panel.confusion_check.setChecked(True)
    array = blocker.args[0]
    beyond = layers[3].array[last - 1 : last + 1] == 1
    assert beyond.any() and (array[last - 1 : last + 1][beyond] == 2).all()  # false positive
    screenshot(panel, "compare_panel_beyond.png")


def test_load_reference_mask_from_a_file(qtbot, scene, tmp_path):
    session, _study, reference, layers, panel = scene
    edited = reference.label_map.copy()
    edited.array[edited.array == 1] = 0  # a colleague's mask without the liver's last slices
    edited.array[:4][reference.array[:4] == 1] = 1
    path = edited.save(tmp_path / "colleague.nii.gz")
    with qtbot.waitSignal(panel.comparisonChanged, timeout=30_000) as blocker:
        layer = panel.load_reference_file(path)
    assert layer is not None and session.reference is layer and layer.kind == "reference"
    assert panel.reference_combo.currentData() == layer.id
    expected = compare_label_maps(layers[3].label_map, layer.label_map, [1])
    assert blocker.args[0][1].dice == pytest.approx(expected[1].dice)
    # a mask of another grid: one line, nothing changed
    other = LabelMap(np.zeros((4, 8, 8), np.uint8), Geometry.identity((4, 8, 8)))
    bad = other.save(tmp_path / "other.nii.gz")
    assert panel.load_reference_file(bad) is None
    assert panel.last_error and session.reference is layer


def test_runs_table_side_by_side(qtbot, scene):
    session, study, reference, layers, panel = scene
    table = panel.runs_table
    assert table.table.rowCount() == 2
    rows = {table.row_values(r)[1]: table.row_values(r) for r in range(2)}
    assert set(rows) == {"1", "3"}
    for k, row in rows.items():
        run = next(r for r in session.runs if str(r.k) == k)
        layer = study.layer(run.result_layer_id)
        assert row[0] == "classical" and row[2] == "liver" and row[6] == "CPU" and row[8] == "done"
        assert row[3] == f"{run.dice:.3f}"
        hd95, _ = surface_distances(layer.array == 1, reference.array == 1, layer.geometry.spacing)
        assert row[4] == f"{hd95:.1f}"
    # sortable by Dice
    dice_column = COLUMNS.index("Dice")
    table.table.sortByColumn(dice_column, Qt.SortOrder.DescendingOrder)
    values = [float(table.table.item(r, dice_column).text()) for r in range(2)]
    assert values == sorted(values, reverse=True)
    # selecting the 1-shot run selects its layer (in the study and in the comparison)
    row = next(r for r in range(2) if table.table.item(r, 1).text() == "1")
    with qtbot.waitSignal(panel.comparisonChanged, timeout=30_000):
        table.table.selectRow(row)
    assert study.active_layer is layers[1] and panel.prediction is layers[1]
    screenshot(panel, "compare_panel_runs.png")
    # without a reference: no Dice, no HD95
    with qtbot.waitSignal(panel.comparisonChanged, timeout=30_000) as blocker:
        session.set_reference(None)
    assert blocker.args == [None]
    assert [table.row_values(r)[3:5] for r in range(2)] == [["—", "—"], ["—", "—"]]


def test_runs_table_lists_the_active_studys_runs(qtbot, scene, liver_phantom):
    """Runs of another open study are not mixed in (they would show "—" against this reference); "All
    studies" lists them with a Study column."""
    session, study, _reference, _layers, panel = scene
    table = panel.runs_table
    image, _labels, geometry = liver_phantom
    other = session.add_study(
        Study(Volume(image, geometry, VolumeMetadata(source_path="b.nii.gz")), path="b.nii.gz", name="B")
    )
    session.set_active_study(other)
    qtbot.waitUntil(lambda: table.table.rowCount() == 0, timeout=5000)
    assert table.table.isColumnHidden(COLUMNS.index("Study"))
    table.all_studies_check.setChecked(True)
    assert table.table.rowCount() == 2 and not table.table.isColumnHidden(COLUMNS.index("Study"))
    assert {table.row_values(r)[COLUMNS.index("Study")] for r in range(2)} == {study.name}
    table.all_studies_check.setChecked(False)
    session.set_active_study(study)
    qtbot.waitUntil(lambda: table.table.rowCount() == 2, timeout=5000)


def test_every_metric_column_fits_the_docked_panel(qtbot, scene):
    """At the Compare dock's usual width the metrics table shows all its columns (Ref. ml was hidden)."""
    *_, panel = scene
    panel.resize(350, 760)
    QtWidgets.QApplication.processEvents()
    metrics = panel.metrics
    header = metrics.horizontalHeader()
    right = max(
        header.sectionViewportPosition(c) + header.sectionSize(c) for c in range(metrics.columnCount())
    )
    assert right <= metrics.viewport().width() + 1
    assert not metrics.horizontalScrollBar().isVisible()
