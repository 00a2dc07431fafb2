"""The fine-tune wizard end to end on CHAOS with the tiny model: checked data, a short training with a live
curve, Dice before/after, the model registered and segmenting; Stop, Resume, and the offer to resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.volume import Volume, VolumeMetadata
from sd_fsmis.ui.fine_tune.common import (
    PAGE_DATA,
    PAGE_RESULT,
    PAGE_SETTINGS,
    PAGE_TRAINING,
    TrainingFeed,
    model_name_from,
)
from sd_fsmis.ui.fine_tune.loss_plot import LossPlot, smoothed
from sd_fsmis.ui.fine_tune.wizard import FineTuneWizard

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
#: a quick run: no Dice during training, few episodes
FAST = dict(device="cpu", accumulation=1, validate_every=0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from sd_fsmis.core.model.create import create_preset_model

    return create_preset_model("tiny", out=tmp_path_factory.mktemp("base") / "tiny-base", seed=0)


@pytest.fixture
def tiny_base(tiny_folder) -> str:
    """The tiny random model in this test's (isolated) store, as "tiny-base"."""
    from sd_fsmis.paths import models_dir

    shutil.copytree(tiny_folder, models_dir() / "tiny-base")
    return "tiny-base"


@pytest.fixture
def make_wizard(qtbot):
    wizards = []

    def make(session: Session | None = None, **options) -> FineTuneWizard:
        options.setdefault("check_interrupted", False)
        wizard = FineTuneWizard(session, **options)
        wizard.confirm = lambda *_: True
        qtbot.addWidget(wizard)
        wizard.show()
        qtbot.waitUntil(lambda: not wizard.model_page.models_loading(), timeout=30_000)
        wizards.append(wizard)
        return wizard

    yield make
    for wizard in wizards:
        wizard.shutdown()


def screenshot(widget, name: str) -> None:
    QtWidgets.QApplication.processEvents()
    ARTIFACTS.mkdir(exist_ok=True)
    assert widget.grab().save(str(ARTIFACTS / name), "PNG")


def to_data_page(wizard: FineTuneWizard, model: str) -> None:
    assert wizard.model_page.select_model(model)
    assert wizard.model_page.isComplete()
    wizard.next()
    assert wizard.currentId() == PAGE_DATA


def wait_checked(qtbot, wizard: FineTuneWizard) -> None:
    qtbot.waitUntil(lambda: not wizard.data_page.checks_pending(), timeout=60_000)


def wait_training(qtbot, wizard: FineTuneWizard, timeout: int = 120_000) -> None:
    qtbot.waitUntil(lambda: not wizard.training_page.is_running(), timeout=timeout)


def wait_step(qtbot, page, step: int) -> None:
    """Until the training page has shown ``step`` (or the run ended: then say why)."""
    qtbot.waitUntil(lambda: page.last_step >= step or not page.is_running(), timeout=60_000)
    assert page.is_running(), page.status_label.text()


# ------------------------------------------------------------------------------------------- pieces
def test_loss_plot_follows_steps_and_restarts_after_a_resume(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.set_total(10)
    for step, loss in enumerate([1.0, 0.8, 0.7, 0.6], start=1):
        plot.add_loss(step, loss)
    plot.add_validation(2, 0.4)
    plot.add_validation(3, float("nan"))  # nothing to plot
    plot.add_loss(3, 0.65)  # a resume from the checkpoint at step 2: steps 3.. are replaced
    plot.redraw()
    assert plot.loss_points == [(1, 1.0), (2, 0.8), (3, 0.65)]
    assert plot.validation_points == {2: 0.4}
    x, y = plot.smooth_curve.getData()
    assert list(x) == [1, 2, 3] and y[0] == pytest.approx(1.0) and 0.65 < y[-1] < 1.0
    assert smoothed(np.array([2.0, 2.0]))[1] == pytest.approx(2.0)  # debiased: no pull towards 0


def test_training_feed_keeps_every_step():
    from sd_fsmis.core.jobs import Progress

    feed = TrainingFeed()
    for step in range(1, 4):
        feed.record(Progress(step, 3, extra={"step": step, "loss": 1.0 / step}))
    feed.record(Progress(3, 3, "finished", extra={"step": 3, "validation": {"dice": 0.5}}))
    feed.record(Progress(0, 0, "loading"))  # nothing to plot
    items = feed.drain()
    assert [i["step"] for i in items] == [1, 2, 3, 3] and items[-1]["validation"]["dice"] == 0.5
    assert feed.drain() == []
    assert model_name_from("tiny base/ft 2025") == "tiny-base-ft-2025"


# ------------------------------------------------------------------------------------- end to end
def test_wizard_end_to_end_on_chaos(
    qtbot, make_wizard, tiny_base, chaos_image_path, chaos_label_path, liver_phantom, tmp_path
):
    registered: list[str] = []
    wizard = make_wizard()
    wizard.modelRegistered.connect(registered.append)
    to_data_page(wizard, tiny_base)
    screenshot(wizard, "fine_tune_1_model.png")
    data = wizard.data_page
    assert not data.isComplete() and "Add at least one volume" in data.not_ready_reason()

    # three good pairs from a manifest (with class names), and one pair whose label map belongs to another
    # volume (31 slices, the image has 37)
    manifest = tmp_path / "mine.json"
    cases = [{"image": str(chaos_image_path(i)), "label": str(chaos_label_path(i))} for i in (2, 3, 5)]
    manifest.write_text(json.dumps({"classes": {"1": "liver", "4": "spleen"}, "cases": cases}))
    good = data.add_dataset(manifest)
    assert [e.pair.name for e in good] == ["mine.json 1", "mine.json 2", "mine.json 3"]
    bad = data.add_pair(chaos_image_path(1), chaos_label_path(2), name="mismatch")
    assert not data.isComplete()  # still checking
    wait_checked(qtbot, wizard)
    assert all(entry.usable for entry in good)
    assert not bad.usable and bad.problems
    row = data.entries.index(bad)
    status = data.table.item(row, data.COL_STATUS).text()
    assert status.startswith(bad.problems[0][:40]) and data.table.item(row, data.COL_STATUS).toolTip()
    hold = data.table.item(row, data.COL_VALIDATION)
    assert not hold.flags() & Qt.ItemFlag.ItemIsUserCheckable  # the mismatched pair cannot be used at all
    # the last usable pair is held out by default (three usable pairs)
    assert [e.validation for e in good] == [False, False, True]
    assert set(data.found_classes()) == {1, 2, 3, 4}
    assert data.found_classes()[1] == (2, 1)  # liver: two training volumes, one held out
    for value in (2, 3, 4):
        data.set_class_checked(value, False)
    assert data.chosen_classes() == [1]
    assert data.isComplete()
    screenshot(wizard, "fine_tune_2_data.png")
    wizard.next()
    assert wizard.currentId() == PAGE_SETTINGS

    settings = wizard.settings_page
    settings.set_options(steps=4, checkpoint_every=2, **FAST)
    qtbot.waitUntil(lambda: not settings.estimate_running(), timeout=60_000)
    assert settings.estimate is not None, settings.estimate_error
    assert settings.estimate.total_seconds > 0 and "predicted, not measured" in settings.estimate_time.text()
    # Measure: real, timed steps of this plan on its device calibrate the time, with its range
    assert settings.measure()
    qtbot.waitUntil(lambda: not settings.measuring(), timeout=120_000)
    assert settings.calibration is not None, settings.measure_status.text()
    assert (
        "measured on the device" in settings.estimate_time.text() and " to " in settings.estimate_time.text()
    )
    assert settings.shown_estimate.seconds_per_step == pytest.approx(settings.calibration.seconds_per_step)
    assert not (Path(wizard.out_folder()) / "checkpoints").exists()  # nothing of the trial is kept
    screenshot(wizard, "fine_tune_3_settings.png")
    wizard.next()  # "Start training"
    assert wizard.currentId() == PAGE_TRAINING
    plan = wizard.plan
    assert plan.classes == [1] and plan.class_names == {1: "liver"} and plan.validation == [2]
    assert [Path(p.image).name for p in plan.pairs] == [f"image_{i}.nii.gz" for i in (2, 3, 5)]
    page = wizard.training_page
    assert page.is_running() and not page.isComplete()
    assert not wizard.button(QtWidgets.QWizard.WizardButton.BackButton).isEnabled()
    wait_training(qtbot, wizard)
    assert page.outcome == "finished", page.status_label.text()
    assert [step for step, _ in page.plot.loss_points] == [1, 2, 3, 4]
    assert page.step_label.text() == "4 / 4"
    assert page.isComplete()
    screenshot(wizard, "fine_tune_4_training.png")
    wizard.next()
    assert wizard.currentId() == PAGE_RESULT

    result = wizard.result_page
    assert result.table.rowCount() == 1 and result.table.item(0, 0).text() == "liver"
    before, after = (float(result.table.item(0, c).text()) for c in (1, 2))
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    assert float(result.table.item(0, 3).text()) == pytest.approx(after - before, abs=0.0015)
    assert result.name_edit.text() == model_name_from(Path(plan.out).name)
    result.name_edit.setText(tiny_base)  # taken
    assert "already" in result.name_problem.text() and not result.isComplete()
    result.name_edit.setText("bad name/")
    assert "letters, digits" in result.name_problem.text()
    result.name_edit.setText("liver-ft")
    result.default_check.setChecked(True)
    assert result.isComplete()
    screenshot(wizard, "fine_tune_5_result.png")
    with qtbot.waitSignal(wizard.finished, timeout=60_000):
        wizard.button(QtWidgets.QWizard.WizardButton.FinishButton).click()
    assert registered == ["liver-ft"]

    from sd_fsmis.core.model.store import list_models

    models = {m.name: m for m in list_models()}
    assert models["liver-ft"].valid and models["liver-ft"].kind == "fine-tuned"
    assert models["liver-ft"].is_default and models["liver-ft"].trained_classes == ["liver"]

    # the new model segments a study at once (the Segment panel offers it)
    from sd_fsmis.ui.panels.segment import SegmentPanel

    image, labels, geometry = liver_phantom
    session = Session()
    study = session.add_study(Study(Volume(image, geometry, VolumeMetadata(modality="MR")), name="Phantom"))
    layer = study.add_layer("liver", labels={1: "liver"})
    layer.set_region((slice(8, 9), slice(None), slice(None)), (labels[8:9] == 1).astype(np.uint8))
    session.add_support(study, layer, 8)
    panel = SegmentPanel(session)
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: not panel.models_loading(), timeout=30_000)
    assert panel.select_engine("liver-ft")
    panel.set_device("cpu")
    panel.set_slice_range(7, 9)
    with qtbot.waitSignal(panel.runFinished, timeout=120_000) as blocker:
        assert panel.segment()
    run = blocker.args[0]
    assert run.status == "done", run.message
    assert run.model == "liver-ft"
    assert study.layer(run.result_layer_id).array.shape == study.volume.shape
    panel.shutdown()


def test_stop_resume_and_the_offer_to_resume_an_interrupted_run(
    qtbot, make_wizard, tiny_base, chaos_image_path, chaos_label_path
):
    wizard = make_wizard()
    to_data_page(wizard, tiny_base)
    entry = wizard.data_page.add_pair(chaos_image_path(2), chaos_label_path(2))
    wait_checked(qtbot, wizard)
    assert entry.usable and not entry.validation  # one pair: nothing held out
    wizard.data_page.set_class_checked(4, False)
    wizard.next()
    wizard.settings_page.set_options(steps=6, checkpoint_every=1, **FAST)
    wizard.next()
    page = wizard.training_page
    assert page.is_running()

    # Pause: the run waits at a step boundary
    wait_step(qtbot, page, 1)
    page.toggle_pause()
    assert page.paused and page.pause_button.text() == "Resume"
    qtbot.wait(300)
    paused_at = page.last_step
    qtbot.wait(700)
    assert page.last_step <= paused_at + 1  # at most the step under way when Pause was pressed
    page.toggle_pause()
    assert not page.paused

    # Stop: a checkpoint at a step boundary, then Resume continues from it
    wait_step(qtbot, page, 2)
    page.stop()
    wait_training(qtbot, wizard)
    assert page.outcome == "cancelled", page.status_label.text()
    stopped = page.last_step
    assert 2 <= stopped < 6 and f"step {stopped}" in page.checkpoint_label.text()
    assert page.resume_button.isVisible() and not page.isComplete()
    screenshot(wizard, "fine_tune_4_stopped.png")
    page.resume_button.click()
    assert page.is_running()
    wait_step(qtbot, page, stopped + 1)
    page.stop()
    wait_training(qtbot, wizard)
    assert page.outcome == "cancelled"
    stopped_again = page.last_step
    assert stopped < stopped_again
    if stopped_again == 6:
        pytest.skip("the run reached its last step before Stop took effect")
    wizard.reject()  # not training: closes without asking
    assert not wizard.isVisible()

    # a new wizard offers the interrupted run, and resumes it from its checkpoint
    again = make_wizard(check_interrupted=True)
    qtbot.waitUntil(lambda: not again.interrupted_search_running(), timeout=30_000)
    banner = again.model_page
    assert banner.resume_banner.isVisible()
    assert f"step {stopped_again} of 6" in banner.resume_text.text()
    screenshot(again, "fine_tune_1_resume_offer.png")
    banner.resume_button.click()
    assert again.currentId() == PAGE_TRAINING
    assert not again.button(QtWidgets.QWizard.WizardButton.BackButton).isEnabled()
    wait_training(qtbot, again)
    assert again.training_page.outcome == "finished", again.training_page.status_label.text()
    result = again.training_result
    assert result.resumed_from == stopped_again and len(result.losses) == 6
    assert [s for s, _ in again.training_page.plot.loss_points] == list(range(1, 7))


def test_open_studies_with_painted_masks_become_training_pairs(qtbot, make_wizard, tiny_base, liver_phantom):
    image, labels, geometry = liver_phantom
    session = Session()
    painted = session.add_study(
        Study(Volume(image, geometry, VolumeMetadata(modality="MR")), name="Phantom A")
    )
    layer = painted.add_layer("organs", labels={1: "liver", 2: "right kidney"})
    layer.replace_array(labels.astype(np.uint8).copy())
    session.add_study(Study(Volume(image, geometry), name="Unpainted"))  # no mask: not offered
    wizard = make_wizard(session)
    to_data_page(wizard, tiny_base)
    data = wizard.data_page
    assert data.add_studies_button.isEnabled()
    assert [s.name for s, _ in data.studies_with_masks()] == ["Phantom A"]
    assert data.add_open_studies()
    wait_checked(qtbot, wizard)
    (entry,) = data.entries
    assert entry.origin == "study" and entry.usable, entry.problems
    assert Path(entry.pair.image).parent.parent == wizard.out_folder()  # <run>/data/
    assert Path(entry.pair.image).is_file() and Path(entry.pair.label).is_file()
    assert 1 in entry.check.classes and data.class_name(1) == "liver"
    assert data.isComplete()


def test_main_window_models_menu_and_quitting_while_training(qtbot, tiny_base, liver_phantom, tmp_path):
    from sd_fsmis.core.training.run_folder import checkpoint_dirs
    from sd_fsmis.ui.application import make_application
    from sd_fsmis.ui.settings import AppSettings
    from sd_fsmis.ui.window.main_window import MainWindow

    make_application()
    image, labels, geometry = liver_phantom
    session = Session()
    study = session.add_study(Study(Volume(image, geometry, VolumeMetadata(modality="MR")), name="Phantom"))
    study.add_layer("liver", labels={1: "liver"}).replace_array((labels == 1).astype(np.uint8))
    window = MainWindow(
        session,
        settings=AppSettings(),
        probe_device=False,
        save_settings=False,
        autosave_folder=tmp_path / "autosave",
    )
    qtbot.addWidget(window)
    asked: list[str] = []
    window.confirm = lambda title, text: asked.append(text) or True
    window.show()
    menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Models")
    assert [a.text() for a in menu.actions()] == ["&Fine-tune on my data…", "&Model manager…"]
    manager = window.open_model_manager()
    assert manager.isVisible()
    manager.close()

    window.actions_.models["fine_tune"].trigger()
    wizard = window.fine_tune_wizard
    assert wizard is not None and wizard.isVisible() and wizard.session is session
    assert window.open_fine_tune() is wizard  # one wizard at a time
    qtbot.waitUntil(lambda: not wizard.model_page.models_loading(), timeout=30_000)
    to_data_page(wizard, tiny_base)
    assert wizard.data_page.add_open_studies()
    wait_checked(qtbot, wizard)
    assert wizard.data_page.isComplete(), wizard.data_page.not_ready_reason()
    wizard.next()
    wizard.settings_page.set_options(steps=1000, checkpoint_every=1000, **FAST)
    wizard.next()
    wait_step(qtbot, wizard.training_page, 1)
    assert window.fine_tuning()

    # quitting asks, then stops the run at a step boundary with a checkpoint
    window.close()
    assert any("fine-tuning is running" in text for text in asked)
    assert not window.isVisible()
    assert wizard.training_page.worker.wait(0)  # the thread had ended when close() returned
    qtbot.waitUntil(lambda: not wizard.is_training(), timeout=5_000)  # its last signals arrive
    assert wizard.training_page.outcome == "cancelled"
    out = Path(wizard.plan.out)
    assert checkpoint_dirs(out) and not (out / "finished.json").exists()


def test_the_data_list_is_there_again_when_the_wizard_is_reopened(
    qtbot, make_wizard, chaos_label_path, tmp_path
):
    """The pairs, with the held-out choice, are remembered in the settings (saved at once); a pair whose
    files are gone is left out."""
    from sd_fsmis.ui.settings import AppSettings

    settings_file = tmp_path / "settings.json"
    settings = AppSettings()
    first = make_wizard(settings=settings, save_settings=False)
    images = [chaos_label_path(i).parent.parent / "images" / f"image_{i}.nii.gz" for i in (1, 2, 3)]
    for image, i in zip(images, (1, 2, 3)):
        first.data_page.add_pair(image, chaos_label_path(i))
    wait_checked(qtbot, first)
    first.data_page.set_validation(first.data_page.entries[0], True)
    first.data_page.set_validation(first.data_page.entries[2], False)
    first.data_page.set_self_supervised(True)  # and a volume without a label map
    first.data_page.add_pair(images[1], "", name="unlabelled")
    wait_checked(qtbot, first)
    settings.save(settings_file)
    gone = tmp_path / "gone.nii.gz"
    saved = AppSettings.load(settings_file)
    assert saved.fine_tune_self_supervised
    saved.fine_tune_pairs.append({"image": str(gone), "label": str(gone), "name": "gone"})
    second = make_wizard(settings=saved, save_settings=False)
    wait_checked(qtbot, second)
    entries = second.data_page.entries
    assert second.data_page.self_supervised()
    assert [e.pair.image for e in entries] == [*(str(p) for p in images), str(images[1])]
    assert [e.validation for e in entries] == [True, False, False, False]
    assert entries[-1].pair.label == "" and entries[-1].usable


def test_self_supervised_volumes_without_labels(qtbot, make_wizard, tiny_base, chaos_dir, tmp_path):
    """“My volumes have no labels”: images alone are usable, the supervoxels are previewed on a slice, a
    held-out volume with a label map gives the Dice, without one the held-out episode loss is shown."""
    folder = tmp_path / "unlabelled"
    (folder / "images").mkdir(parents=True)
    for i in (2, 3, 5):  # links to the CHAOS images: read in place, no label maps
        (folder / "images" / f"image_{i}.nii.gz").symlink_to(chaos_dir / "images" / f"image_{i}.nii.gz")
    wizard = make_wizard()
    to_data_page(wizard, tiny_base)
    data = wizard.data_page
    assert data.add_dataset(folder) == [] and "--source supervoxels" in data.error.text()  # labels mode
    data.set_self_supervised(True)
    assert data.title() == data.SELF_SUPERVISED_TITLE and data.preview_box.isVisible()
    entries = data.add_dataset(folder)
    assert len(entries) == 3 and not data.error.text()
    wait_checked(qtbot, wizard)
    assert all(e.usable for e in entries) and [e.validation for e in entries] == [False, False, True]
    assert data.table.item(0, data.COL_LABEL).text() == "—"
    assert data.isComplete()  # no class to choose: the supervoxels are the classes
    assert "no Dice can be measured" in data.summary.text()
    # the preview: the supervoxels of the first volume on a slice, computed in a worker and cached
    qtbot.waitUntil(
        lambda: not data.preview_running() and data.preview_image.pixmap() is not None, timeout=60_000
    )
    assert not data.preview_image.pixmap().isNull(), data.preview_caption.text()
    assert "supervoxels here" in data.preview_caption.text() and "unlabelled 2" in data.preview_caption.text()
    from sd_fsmis.paths import cache_dir

    assert len(list((cache_dir() / "supervoxels").glob("*.npz"))) == 1
    # back in labels mode the same volumes are not usable, and say why
    data.set_self_supervised(False)
    assert not data.isComplete() and "no label map" in entries[0].problems[0]
    data.set_self_supervised(True)
    assert data.isComplete()

    # a held-out volume with a label map gives the Dice (on the classes it holds)
    labelled = data.add_pair(chaos_dir / "images" / "image_8.nii.gz", chaos_dir / "labels" / "label_8.nii.gz")
    wait_checked(qtbot, wizard)
    data.set_validation(entries[2], False)
    data.set_validation(labelled, True)
    assert "Dice is measured on the 1 held-out volume with a label map" in data.summary.text()
    assert data.chosen_classes() == [1, 2, 3, 4]
    screenshot(wizard, "fine_tune_2_data_self_supervised.png")
    plan = wizard.build_plan()
    assert plan.self_supervised and plan.measures_dice and plan.labelled_validation == [3]
    config = plan._config()
    assert config.source == "supervoxels" and config.dice_validation and config.supervoxel_cache

    # without a labelled held-out volume: a short run shows the held-out episode loss and says why no Dice
    data.remove_entry(labelled)
    data.set_validation(entries[2], True)
    wizard.next()
    settings = wizard.settings_page
    settings.set_options(steps=2, checkpoint_every=2, **FAST)
    qtbot.waitUntil(lambda: not settings.estimate_running(), timeout=60_000)
    wizard.next()
    assert wizard.currentId() == PAGE_TRAINING
    assert not wizard.plan.measures_dice and wizard.plan.warnings()
    page = wizard.training_page
    wait_training(qtbot, wizard)
    assert page.outcome == "finished", page.status_label.text()
    assert page.plot.heldout_points and not page.plot.validation_points
    assert "no Dice can be measured" in page.validation_label.text()
    assert "held-out episode loss" in page.validation_label.text()
    assert "register the model" in page.status_label.text()
    page.plot.redraw()
    screenshot(wizard, "fine_tune_4_training_self_supervised.png")
    wizard.next()
    assert wizard.currentId() == PAGE_RESULT
    assert "No Dice can be measured" in wizard.result_page.note.text()
    assert "Held-out episode loss" in wizard.result_page.note.text()
    assert not any(p.name != "images" for p in folder.iterdir())  # nothing written into the data folder
