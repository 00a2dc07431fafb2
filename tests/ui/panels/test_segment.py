"""SegmentPanel: classical and tiny-model segmentations through the worker, Cancel, errors, model dialog."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.jobs import Progress
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.volume import Volume, VolumeMetadata
from sd_fsmis.ui.panels.segment import CLASSICAL, SegmentPanel, predicted_range_text, progress_text

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
N_SLICES = 16  # slices of the liver_phantom fixture (tests/ui/conftest.py)
HAS_MODEL_PACKAGE = importlib.util.find_spec("sd_fsmis.core.model.create") is not None


def make_session(liver_phantom, supports: tuple[int, ...] = (8,)) -> tuple[Session, Study]:
    """A session with the phantom study, its reference labels and a "liver" layer painted on ``supports``."""
    image, labels, geometry = liver_phantom
    session = Session()
    volume = Volume(image, geometry, VolumeMetadata(source_path="demo-abdomen.nii.gz", modality="MR"))
    study = session.add_study(Study(volume, path="demo-abdomen.nii.gz", name="Demo abdomen"))
    reference = study.add_layer(
        "reference", LabelMap(labels.copy(), geometry, {1: "liver", 2: "right kidney"}), kind="reference"
    )
    session.set_reference(reference)
    layer = study.add_layer("liver", labels={1: "liver"})
    for z in supports:
        layer.set_region(
            (slice(z, z + 1), slice(None), slice(None)), (labels[z : z + 1] == 1).astype(np.uint8)
        )
        session.add_support(study, layer, z)
    return session, study


def screenshot(widget, name: str) -> Path:
    from PySide6 import QtWidgets

    QtWidgets.QApplication.processEvents()  # let the layouts follow the last text changes
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert widget.grab().save(str(path), "PNG")
    return path


@pytest.fixture
def make_panel(qtbot):
    panels = []

    def make(session: Session) -> SegmentPanel:
        panel = SegmentPanel(session)
        qtbot.addWidget(panel)
        panel.resize(380, 460)
        panel.show()
        qtbot.waitUntil(lambda: not panel.models_loading(), timeout=60_000)
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        assert panel.shutdown(30_000)


def test_progress_text():
    assert progress_text(Progress(12, 40, elapsed_s=1.2)) == "12/40 slices, 3 s left"
    assert progress_text(Progress(0, 40)) == "0/40 slices"
    assert progress_text(Progress(40, 40, elapsed_s=9.0)) == "40/40 slices"
    assert progress_text(Progress(0, 0, "loading the model")) == "Loading the model…"


def test_segment_is_disabled_with_a_reason(make_panel, liver_phantom):
    session = Session()
    panel = make_panel(session)
    assert panel.engine_combo.itemText(0).startswith("Propagation")
    assert panel.engine_combo.itemText(1) == "Classical (registration) — no model needed"
    assert panel.engine_name == "propagation"  # the store is empty: the built-in default
    assert not panel.segment_button.isEnabled()
    assert panel.segment_button.toolTip() == "Open a study first"
    image, _labels, geometry = liver_phantom
    session.add_study(Study(Volume(image, geometry), name="Demo abdomen"))
    assert not panel.segment_button.isEnabled()
    assert "support" in panel.segment_button.toolTip()
    assert panel.k_label.text() == "none yet"
    assert panel.to_spin.value() == N_SLICES  # the whole volume by default
    assert not panel.segment()


def test_predicted_range_text():
    mask = np.zeros((10, 4, 4), dtype=bool)
    assert predicted_range_text(mask) == "Nothing was found."
    mask[3, 1, 1] = True
    assert predicted_range_text(mask) == "Found on slice 4 (1 slice)."
    mask[5:8, 2, 2] = True
    assert predicted_range_text(mask) == "Found on slices 4–8 (4 slices, 1 without it)."


@pytest.mark.parametrize("engine", ["propagation", CLASSICAL])
def test_builtin_segmentation_through_the_worker(qtbot, make_panel, liver_phantom, engine):
    session, study = make_session(liver_phantom, supports=(3, 12))
    panel = make_panel(session)
    assert panel.select_engine(engine)
    assert panel.segment_button.isEnabled()
    assert panel.k_label.text() == "K = 2 (2-shot) from this study"
    assert panel.label_name == "liver"
    layers_before = study.layers
    progress: list[Progress] = []
    with qtbot.waitSignal(panel.runStarted, timeout=1000):
        assert panel.segment()
    panel.worker.progress.connect(progress.append)
    shots: list[Path] = []

    def screenshot_running(p: Progress) -> None:
        if not shots and 0 < p.done < p.total:
            shots.append(screenshot(panel, "segment_panel_running.png"))

    panel.worker.progress.connect(screenshot_running)
    assert panel.is_running() and not panel.segment_button.isEnabled() and panel.cancel_button.isEnabled()
    with qtbot.waitSignal(panel.runFinished, timeout=60_000) as blocker:
        pass
    run = blocker.args[0]
    assert run.status == "done" and run.engine == engine and run.k == 2 and run.label_name == "liver"
    assert run.duration_s is not None and run.duration_s > 0 and run.device == "CPU"
    assert run.settings["slices"] == "all"
    assert session.runs[-1].id == run.id
    new = [layer for layer in study.layers if layer not in layers_before]
    assert len(new) == 1 and new[0].kind == "prediction" and new[0].id == run.result_layer_id
    assert study.active_layer is new[0]  # an editable layer, selected
    assert run.dice is not None and run.dice > 0.75  # against the reference
    assert progress and progress[-1].done == progress[-1].total == N_SLICES
    assert not panel.is_running() and panel.segment_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert "Added the layer" in panel.status_label.text()
    assert predicted_range_text(study.layer(run.result_layer_id).array > 0) in panel.status_label.text()
    screenshot(panel, f"segment_panel_done_{engine}.png")


def test_segment_a_slice_range(qtbot, make_panel, liver_phantom):
    session, study = make_session(liver_phantom, supports=(8,))
    panel = make_panel(session)
    panel.set_slice_range(5, 10)
    assert panel.query_slices() == list(range(5, 11))
    with qtbot.waitSignal(panel.runFinished, timeout=60_000) as blocker:
        panel.segment()
    run = blocker.args[0]
    assert run.status == "done" and run.settings["slices"] == "6-11"
    prediction = study.layer(run.result_layer_id).array
    assert prediction[5:11].any()
    assert not prediction[:5].any() and not prediction[11:].any()


def test_the_last_runs_message_is_not_shown_for_another_study(qtbot, make_panel, liver_phantom):
    """ "liver: 6 slices in 1 s" speaks of the study it segmented: opening another study clears it."""
    session, study = make_session(liver_phantom, supports=(8,))
    panel = make_panel(session)
    panel.set_slice_range(7, 9)
    with qtbot.waitSignal(panel.runFinished, timeout=60_000):
        panel.segment()
    assert "liver: 3 slices" in panel.status_label.text() and panel.progress_bar.format().startswith("Done")
    image, _labels, geometry = liver_phantom
    other = session.add_study(Study(Volume(image, geometry, VolumeMetadata()), path="b.nii.gz", name="B"))
    session.set_active_study(other)
    assert "liver: 3 slices" not in panel.status_label.text() and panel.progress_bar.format() == ""
    session.set_active_study(study)
    assert "liver: 3 slices" not in panel.status_label.text()  # gone, not kept for when it comes back


def test_cancel_midway_leaves_the_study_as_it_was(qtbot, make_panel, liver_phantom):
    session, study = make_session(liver_phantom, supports=(8,))
    panel = make_panel(session)
    layers_before = study.layers
    assert panel.segment()
    seen: list[Progress] = []

    def cancel_at_first_report(progress: Progress) -> None:
        seen.append(progress)
        panel.cancel()

    panel.worker.progress.connect(cancel_at_first_report)
    with qtbot.waitSignal(panel.runFinished, timeout=60_000) as blocker:
        pass
    run = blocker.args[0]
    assert seen and seen[0].done < N_SLICES
    assert run.status == "cancelled" and run.result_layer_id is None
    assert study.layers == layers_before  # no layer added
    assert session.runs.get(run.id).status == "cancelled"
    assert panel.worker.outcome == "cancelled"  # the job itself stopped (it did not finish and get dropped)
    assert panel.progress_bar.format() == "Cancelled"
    assert panel.segment_button.isEnabled()


def test_unusable_support_is_explained_and_nothing_starts(make_panel, liver_phantom):
    session, study = make_session(liver_phantom, supports=(8,))
    panel = make_panel(session)
    study.layer("liver").set_region((slice(8, 9), slice(None), slice(None)), 0)  # the support slice erased
    assert not panel.segment()
    assert "slice 9" in panel.last_error and "no longer holds liver" in panel.last_error
    assert len(session.runs) == 0 and not panel.is_running()


@pytest.mark.skipif(not HAS_MODEL_PACKAGE, reason="the SD-FSMIS model package is not installed")
def test_tiny_model_from_the_model_dialog_then_segment(qtbot, make_panel, liver_phantom):
    session, study = make_session(liver_phantom, supports=(8,))
    panel = make_panel(session)
    manager = panel.open_model_dialog()
    qtbot.waitExposed(manager)
    screenshot(manager, "model_manager.png")
    dialog = manager.create_model("tiny")
    qtbot.waitExposed(dialog)
    assert "--preset tiny --name tiny-test" in dialog.command()
    screenshot(dialog, "model_dialog.png")
    dialog.set_page("base")
    dialog.sd_field.edit.setText("/data/models/stable-diffusion-v1-5")
    dialog.dino_field.edit.setText("/data/models/dinov2-base")
    assert dialog.command() == (
        "sd-fsmis models create --sd /data/models/stable-diffusion-v1-5 --dinov2 /data/models/dinov2-base "
        "--name sd15-base"
    )
    screenshot(dialog, "model_dialog_base.png")
    assert not dialog.start_current()  # folders that do not exist: said so, nothing started
    assert "does not exist" in dialog.last_error and not dialog.is_running()
    dialog.set_page("tiny")
    with qtbot.waitSignal(panel.modelsListed, timeout=120_000):
        assert dialog.create_tiny("tiny-test")
        assert dialog.is_running()
    assert panel.engine_name == "tiny-test"  # the new model is chosen
    assert [panel.engine_combo.itemData(i) for i in range(2)] == ["propagation", CLASSICAL]
    panel.set_device("cpu")
    panel.batch_spin.setValue(8)
    with qtbot.waitSignal(panel.runFinished, timeout=120_000) as blocker:
        assert panel.segment()
    run = blocker.args[0]
    assert run.status == "done", run.message
    assert run.engine == "sd-fsmis" and run.model == "tiny-test" and run.device == "CPU"
    assert run.settings["batch_size"] == 8 and run.k == 1
    assert run.settings["batch_size_used"] == 8 and run.settings["dtype_used"] == "float32"
    layer = study.layer(run.result_layer_id)
    assert layer.kind == "prediction" and layer.array.shape == study.volume.shape
    # a device that is not there: a one-line message, the run marked failed
    panel.set_device("mps")
    with qtbot.waitSignal(panel.runFinished, timeout=120_000) as blocker:
        assert panel.segment()
    run = blocker.args[0]
    assert run.status == "failed" and "mps" in run.message
    assert "mps" in panel.last_error and "Traceback" not in panel.last_error


def test_closing_the_study_during_the_run_fails_the_run_cleanly(qtbot, make_panel, liver_phantom):
    session, study = make_session(liver_phantom, supports=(8,))
    panel = make_panel(session)
    panel.set_slice_range(6, 9)
    assert panel.segment()
    session.remove_study(study)  # the window stays usable: the user closes the study meanwhile
    assert panel.segment_disabled_reason() != ""
    with qtbot.waitSignal(panel.runFinished, timeout=60_000) as blocker:
        pass
    run = blocker.args[0]
    assert run.status == "failed" and "closed" in run.message and run.result_layer_id is None
    assert not panel.is_running()
