"""Session state without a window: studies and layers with events, painting + undo through a layer,
the support set (validation, thumbnails, cross-study), segmentation inputs, runs and Dice."""

from __future__ import annotations

import numpy as np
import pytest

from sd_fsmis.core.engines.classical import ClassicalEngine
from sd_fsmis.core.engines.segmentation import segment_volume
from sd_fsmis.core.errors import MaskError
from sd_fsmis.core.geometry import Geometry
from sd_fsmis.core.io.labelmap import Label, LabelMap
from sd_fsmis.core.session.layers import LabelLayer
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.volume import Volume, VolumeMetadata


def _blob_volume(shift: float = 0.0, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A 12 x 64 x 64 volume with a bright ellipsoid (the "organ") and its mask."""
    z, y, x = np.mgrid[0:12, 0:64, 0:64].astype(np.float32)
    organ = ((z - 6) / 5) ** 2 + ((y - 32 - shift) / 14) ** 2 + ((x - 30 - shift) / 18) ** 2 < 1
    rng = np.random.default_rng(seed)
    image = 100 + 300 * organ + rng.normal(0, 10, organ.shape)
    geometry = Geometry.identity(organ.shape, spacing=(1.5, 1.5, 5.0))
    volume = Volume(image.astype(np.float32), geometry, VolumeMetadata(source_path=f"blob{seed}.nii.gz"))
    return volume, organ


@pytest.fixture
def session_with_study():
    session = Session()
    volume, organ = _blob_volume()
    study = session.add_study(Study(volume, path="/data/blob0.nii.gz"))
    return session, study, organ


def test_study_layers_and_events(session_with_study):
    session, study, _ = session_with_study
    seen = []
    session.events.any.connect(lambda name, *a: seen.append(name))
    study_events = []
    study.events.any.connect(lambda name, *a: study_events.append(name))
    layer = study.add_layer("liver", labels={1: "liver"})
    assert study.active_layer is layer and layer.labels[1].name == "liver"
    second = study.add_layer("liver")
    assert second.name == "liver (2)"
    assert study.rename_layer(second, "liver") == "liver (2)"
    layer.opacity = 0.8
    layer.visible = False
    assert study_events[:2] == ["layer_added", "active_layer"]
    assert "layer_changed" in study_events
    assert "modified" in seen
    study.remove_layer(second)
    assert study.layers == (layer,)
    assert session.study(study.id) is study
    assert session.active_study is study
    assert study.name == "blob0"


def test_paint_undo_redo_through_the_layer(session_with_study):
    _, study, _ = session_with_study
    layer = study.add_layer("mask", labels={1: "liver"})
    regions = []
    layer.events.data.connect(regions.append)
    stroke = layer.begin_stroke(0, 5, radius=2)
    stroke.add_point((10, 10))
    stroke.add_point((10, 30))
    stroke.add_point((20, 30))
    assert stroke.finish()
    painted = layer.array.copy()
    assert painted[5, 10, 10:31].all() and painted[5, 10:21, 30].all()
    assert painted[[0, 1, 2, 3, 4, 6]].sum() == 0
    assert len(regions) == 3 and all(r[0] == slice(5, 6) for r in regions)
    assert layer.history.undo_count == 1  # the whole stroke is one step
    layer.fill(0, 5, (0, 0), label=2)  # the background around the stroke
    assert (layer.array[5] > 0).all()
    assert layer.history.undo_count == 2
    layer.undo()
    assert np.array_equal(layer.array, painted)
    layer.undo()
    assert layer.array.sum() == 0
    layer.redo()
    assert np.array_equal(layer.array, painted)
    # a new edit clears the redo
    layer.paint_line(1, 32, [(2, 2)], radius=0, label=3)  # a coronal dab: (z=2, y=32, x=2)
    assert layer.array[2, 32, 2] == 3 and not layer.can_redo
    # eraser limited to one label
    layer.paint_line(0, 5, [(10, 5), (10, 40)], tool="eraser", radius=1, only_label=3)
    assert np.array_equal(layer.array[5], painted[5])
    assert layer.modified


def test_fill_bounded_by_intensity_and_cancelled_stroke(session_with_study):
    _, study, organ = session_with_study
    layer = study.add_layer("mask")
    region = layer.fill(0, 6, (32, 30), label=1, image=study.volume.array, intensity_range=(300, 600))
    assert region is not None
    assert np.array_equal(layer.array[6] == 1, organ[6])
    stroke = layer.begin_stroke(0, 6, radius=3, label=2)
    stroke.add_point((1, 1))
    stroke.cancel()
    assert not (layer.array == 2).any() and layer.history.undo_count == 1


def test_labels_widen_to_uint16(session_with_study):
    _, study, _ = session_with_study
    layer = study.add_layer("many")
    layer.set_label(Label(300, "lesion 300", (10, 20, 30)))
    layer.paint_line(0, 0, [(5, 5)], radius=0, label=300)
    assert layer.array.dtype == np.uint16 and layer.array[0, 5, 5] == 300
    layer.undo()
    assert layer.array[0, 5, 5] == 0
    added = layer.add_label("spleen")
    assert added.value == 1 and layer.selected_label == 1 and layer.label_value("Spleen") == 1


def test_support_set_validation_and_thumbnails(session_with_study):
    session, study, organ = session_with_study
    layer = study.add_layer("liver", labels={1: "liver"})
    layer.replace_array(organ.astype(np.uint8))
    with pytest.raises(MaskError, match="holds no liver"):
        session.add_support(study, layer, 0)  # slice 0 is empty
    entry = session.add_support(study, layer, 6)
    assert entry.thumbnail.shape == (64, 64) and entry.thumbnail.dtype == np.uint8
    assert entry.thumbnail_mask.any() and entry.label_name == "liver"
    with pytest.raises(MaskError, match="already a support"):
        session.add_support(study, layer, 6)
    session.add_support(study, layer, 3)
    assert session.support_set.k == 2 and len(session.support_set) == 2
    # painting more on a support slice refreshes its thumbnail when the stroke ends
    updated = []
    session.support_set.events.updated.connect(updated.append)
    before = entry.thumbnail_mask.copy()
    layer.paint_line(0, 6, [(0, 0), (0, 63)], radius=6)
    assert updated and not np.array_equal(entry.thumbnail_mask, before)
    layer.set_label(Label(1, "hepar", (1, 2, 3)))
    assert entry.label_name == "hepar"
    session.support_set.remove(entry)
    assert [e.slice_index for e in session.support_set] == [3]
    study.remove_layer(layer)  # its supports go with it
    assert len(session.support_set) == 0


def test_segmentation_inputs_group_by_study_and_need_a_single_structure(session_with_study):
    session, query, organ = session_with_study
    other_volume, other_organ = _blob_volume(shift=3.0, seed=1)
    other = session.add_study(Study(other_volume, path="/data/blob1.nii.gz"), activate=False)
    ref = other.add_layer("atlas", labels={1: "liver", 2: "spleen"})
    ref.replace_array(other_organ.astype(np.uint8))
    ref.paint_line(0, 6, [(2, 2)], radius=1, label=2)
    own = query.add_layer("mine", labels={1: "liver"})
    own.replace_array(organ.astype(np.uint8) * (np.arange(12)[:, None, None] == 6))
    session.add_support(other, ref, 4)
    session.add_support(other, ref, 8)
    session.add_support(query, own, 6)
    session.add_support(other, ref, 6, label_value=2)
    with pytest.raises(MaskError, match="several structures"):
        session.segmentation_inputs(query)
    inputs = session.segmentation_inputs(query, "liver")
    assert inputs.k == 3 and inputs.label_value == 1 and inputs.label_name == "liver"
    by_source = {s.name: s for s in inputs.sources}
    assert sorted(len(s.chosen_slices()) for s in inputs.sources) == [1, 2]
    query_source = next(s for s in inputs.sources if s.is_query)
    assert query_source.volume is query.volume and query_source.chosen_slices() == [6]
    assert "/data/blob1.nii.gz" in by_source
    # painting after the inputs were taken does not reach them
    own.paint_line(0, 6, [(0, 0)], tool="eraser", radius=100)
    assert query_source.mask[6].any()
    with pytest.raises(MaskError, match="no longer holds"):
        session.segmentation_inputs(query, "liver")


def test_run_records_and_dice_against_the_reference(session_with_study):
    session, query, organ = session_with_study
    manual = query.add_layer("liver", labels={1: "liver"})
    manual.replace_array(organ.astype(np.uint8) * (np.arange(12)[:, None, None] == 6))
    reference = query.add_layer("ground truth", LabelMap.from_array(organ, query.geometry, {1: "liver"}))
    session.add_support(query, manual, 6)
    inputs = session.segmentation_inputs(query)
    run = session.begin_run(inputs, engine="classical", device="cpu", settings={"slices": "5-7"})
    assert run.status == "running" and run.k == 1
    outcome = segment_volume(
        inputs.query,
        inputs.sources,
        ClassicalEngine(workers=1),
        query_slices=[5, 6, 7],
        **inputs.job_options(),
    )
    layer, run = session.add_result(inputs, outcome, run=run, device="cpu")
    assert layer.kind == "prediction" and layer in query.layers
    assert run.status == "done" and run.result_layer_id == layer.id and run.duration_s >= 0
    assert run.dice is None  # no reference yet
    events = []
    session.runs.events.changed.connect(events.append)
    session.set_reference(reference)
    run = session.runs.get(run.id)
    assert run.dice is not None and 0.0 < run.dice <= 1.0 and run.reference_layer_id == reference.id
    assert events and events[-1].id == run.id
    assert run.supports[0]["slice_index"] == 6 and run.settings["slices"] == "5-7"
    failed = session.fail_run(session.begin_run(inputs, engine="sd-fsmis"), cancelled=True)
    assert failed.status == "cancelled"
    # closing the study drops its reference
    session.remove_study(query)
    assert session.reference is None and session.active_study is None


def test_a_study_segmented_from_its_file_is_shown_with_its_mask_when_opened(tmp_path):
    """A folder cohort's result: recorded as a run of a study not open, attached when it is opened."""
    volume, organ = _blob_volume()
    image = tmp_path / "blob0.nii.gz"
    image.write_bytes(b"")  # the study's file (only its identity matters here)
    mask = tmp_path / "out" / "blob0.nii.gz"
    mask.parent.mkdir()
    prediction = organ.copy()
    prediction[:, :, :28] = False  # half the organ: a Dice well below 1
    LabelMap.from_array(prediction.astype(np.uint8), volume.geometry, {1: "liver"}).save(mask)
    session = Session()
    run = session.record_file_run(
        study_name="blob0",
        image=str(image),
        series=None,
        mask=str(mask),
        engine="propagation",
        label_name="liver",
        k=3,
        device="CPU",
        seconds=1.25,
    )
    failed = session.record_file_run(
        study_name="broken",
        image=str(tmp_path / "broken.nii.gz"),
        series=None,
        mask=None,
        engine="propagation",
        label_name="liver",
        k=3,
        status="failed",
        message="not an image",
    )
    assert run.status == "done" and run.duration_s == 1.25 and run.query_study_id == ""
    assert failed.status == "failed" and failed.message == "not an image"
    other = session.add_study(Study(_blob_volume(seed=1)[0], path=str(tmp_path / "other.nii.gz")))
    assert session.file_runs_for(other) == []
    study = session.add_study(Study(volume, path=str(image)))
    assert session.file_runs_for(study) == [run]
    reference = study.add_layer("ground truth", LabelMap.from_array(organ, study.geometry, {1: "liver"}))
    session.set_reference(reference)
    layer = session.attach_file_run(run, study)
    assert layer.kind == "prediction" and np.array_equal(layer.array > 0, prediction)
    run = session.runs.get(run.id)
    assert run.query_study_id == study.id and run.result_layer_id == layer.id
    assert run.dice is not None and 0.3 < run.dice < 0.9  # the half organ, against the reference
    assert session.file_runs_for(study) == []  # shown once


def test_layer_label_map_must_match_the_study(session_with_study):
    _, study, _ = session_with_study
    wrong = LabelMap.empty(Geometry.identity((3, 4, 5)))
    with pytest.raises(Exception, match="does not match"):
        study.add_layer("bad", wrong)
    assert isinstance(study.add_layer("ok"), LabelLayer)
