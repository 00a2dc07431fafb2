"""The model manager and the "New model" dialog on tiny models in the test's own store.

The Hugging Face Hub is the one boundary replaced: ``plan_download`` (file sizes) and ``download_repos`` (the
bytes) are swapped for local functions that report progress in bytes and honour Cancel, so the plan, the
disk-space refusal, the progress display and cancellation are exercised without a network.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from sd_fsmis.core.jobs import Progress
from sd_fsmis.core.model import create, download
from sd_fsmis.core.model.store import default_model_name, model_path
from sd_fsmis.core.session.state import Session
from sd_fsmis.ui.dialogs.create_model import CreateModelDialog
from sd_fsmis.ui.dialogs.model_manager import DEFAULT, NAME, ModelManagerDialog
from sd_fsmis.ui.panels.segment import SegmentPanel

MB = 1024**2


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random model saved outside the store (built once for the module)."""
    return create.create_preset_model("tiny", out=tmp_path_factory.mktemp("shared") / "colleague-model")


def put_in_store(folder: Path, name: str) -> None:
    shutil.copytree(folder, model_path(name))


def row_of(manager: ModelManagerDialog, name: str) -> int:
    return manager.model_names().index(name)


@pytest.fixture
def manager(qtbot):
    dialog = ModelManagerDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    yield dialog
    dialog.shutdown(10_000)


def test_create_a_tiny_model_through_the_dialog(qtbot, manager):
    assert manager.model_names() == [] and "No models yet" in manager.summary_label.text()
    assert not manager.rename_button.isEnabled() and not manager.delete_button.isEnabled()
    dialog = manager.create_model("tiny")
    assert dialog.page == "tiny" and "--preset tiny --name tiny-test" in dialog.command()
    assert not dialog.create_tiny("has space")  # refused before anything runs
    assert "no spaces" in dialog.last_error and not dialog.is_running()
    dialog.tiny_name.setText("tiny-a")
    with (
        qtbot.waitSignal(manager.modelCreated, timeout=60_000) as created,
        qtbot.waitSignal(manager.modelsChanged, timeout=60_000),
    ):
        assert dialog.start_current()
        assert dialog.is_running() and not dialog.create_button.isEnabled()
    assert created.args == ["tiny-a"] and dialog.created_name == "tiny-a"
    assert manager.model_names() == ["tiny-a"] and manager.selected_name() == "tiny-a"
    assert manager.table.item(0, NAME).text() == "tiny-a"
    assert "not trained" in manager.details.toPlainText() or "random weights" in manager.details.toPlainText()
    assert not dialog.is_running() and dialog.create_button.isEnabled()
    assert not dialog.create_tiny("tiny-a")  # the name is taken now
    assert "already exists" in dialog.last_error


def test_import_rename_default_delete_and_the_segment_panel_follows(qtbot, tiny_folder, tmp_path):
    put_in_store(tiny_folder, "first")
    put_in_store(tiny_folder, "second")
    panel = SegmentPanel(Session())
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: not panel.models_loading(), timeout=30_000)
    manager = panel.open_model_dialog()
    assert isinstance(manager, ModelManagerDialog)
    assert manager.model_names() == ["first", "second"]

    # import a model folder: refused when it is not one, copied in the background when it is
    assert not manager.import_folder(str(tmp_path))
    assert "config.json" in manager.last_error
    manager.ask_text = lambda _title, _label, text: text  # accept the suggested name
    with qtbot.waitSignal(panel.modelsListed, timeout=30_000):
        assert manager.import_folder(str(tiny_folder))
        assert manager.is_running()
    assert "colleague-model" in manager.model_names() and tiny_folder.is_dir()  # a copy; the source stays
    assert model_path("colleague-model").is_dir() and manager.selected_name() == "colleague-model"
    assert panel.engine_name == "colleague-model"  # the Segment panel offers and chooses it
    assert not manager.import_folder(str(tiny_folder), name="first")
    assert "already exists" in manager.last_error

    # rename
    with (
        qtbot.waitSignal(manager.modelRenamed) as renamed,
        qtbot.waitSignal(panel.modelsListed, timeout=30_000),
    ):
        assert manager.rename_selected("liver-v2")
    assert renamed.args == ["colleague-model", "liver-v2"]
    assert "liver-v2" in manager.model_names() and "colleague-model" not in manager.model_names()
    assert panel.engine_name == "liver-v2"  # the panel's choice followed the rename
    assert not manager.rename_selected("first") and "already exists" in manager.last_error

    # set the default: the store, the table's mark and the Segment panel follow
    assert manager.select("first")
    with qtbot.waitSignal(panel.modelsListed, timeout=30_000):
        assert manager.set_selected_default()
    assert default_model_name() == "first"
    assert manager.table.item(row_of(manager, "first"), DEFAULT).text() == "✓"
    assert manager.table.item(row_of(manager, "second"), DEFAULT).text() == ""
    assert not manager.default_button.isEnabled() and "first" in manager.summary_label.text()
    assert panel.engine_name == "first"

    # delete: declined keeps the model, accepted removes it
    questions = []
    manager.confirm = lambda title, text: questions.append(text) or False
    assert not manager.delete_selected()
    assert "first" in manager.model_names() and model_path("first").is_dir()
    assert "cannot be undone" in questions[0]
    manager.confirm = lambda title, text: True
    with qtbot.waitSignal(panel.modelsListed, timeout=30_000):
        assert manager.delete_selected()
    assert "first" not in manager.model_names() and not model_path("first").exists()
    assert default_model_name() is None
    assert panel.engine_combo.findData("first") < 0 and panel.engine_name != "first"


def test_a_broken_model_is_greyed_with_its_problem(manager):
    folder = model_path("half-copied")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    manager.refresh()
    item = manager.table.item(row_of(manager, "half-copied"), NAME)
    assert item.text() == "half-copied (broken)" and "cannot be used" in item.toolTip()
    assert manager.select("half-copied")
    assert not manager.default_button.isEnabled() and manager.delete_button.isEnabled()
    assert "Problem" in manager.details.toPlainText()


# ------------------------------------------------------------------------------------ Hub download
def fake_plan(needed: int, free: int):
    def plan_download(repo_id: str, allow_patterns: list[str], **_kw: object) -> download.DownloadPlan:
        return download.DownloadPlan(
            repo_id, "abc", [("model.safetensors", needed)], needed, 0, needed, free, "/fake/hf-cache"
        )

    return plan_download


def slow_download(calls: list):
    """Stands in for the network: reports 1 MB every 20 ms of 400 MB, stops when cancelled."""

    def download_repos(repos, *, progress=None, cancel=None, **_kw):
        calls.append([repo for repo, _patterns, _what in repos])
        total, done, start = 400 * MB, 0, time.perf_counter()
        while done < total:
            cancel.raise_if_cancelled()
            if time.perf_counter() - start > 20:
                raise RuntimeError("the test never cancelled the fake download")
            done += MB
            progress(Progress(done, total, "model.safetensors", time.perf_counter() - start))
            time.sleep(0.02)
        raise RuntimeError("the fake download is meant to be cancelled")

    return download_repos


@pytest.fixture
def hub_dialog(qtbot):
    dialog = CreateModelDialog(page="base")
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.set_hub_source(True)
    dialog.base_name.setText("sd15-hub")
    yield dialog
    dialog.shutdown(10_000)


def test_download_shows_bytes_and_cancel_leaves_no_model(qtbot, monkeypatch, hub_dialog):
    calls: list = []
    monkeypatch.setattr(download, "plan_download", fake_plan(200 * MB, 50 * 1024 * MB))
    monkeypatch.setattr(create, "download_repos", slow_download(calls))
    dialog = hub_dialog
    assert dialog.command() == (
        "sd-fsmis models create --sd stable-diffusion-v1-5/stable-diffusion-v1-5 "
        "--dinov2 facebook/dinov2-base --name sd15-hub"
    )
    questions = []
    dialog.confirm = lambda title, text: questions.append(text) or True
    assert dialog.start_current()
    qtbot.waitUntil(lambda: "MB/s" in dialog.status_label.text(), timeout=15_000)
    assert "400.0 MB" in dialog.status_label.text() and "left" in dialog.status_label.text()
    assert "400.0 MB" in questions[0] and "50.0 GB are free" in questions[0]  # both repos planned
    assert dialog.phase == "download" and dialog.progress_bar.value() > 0 and dialog.cancel_button.isEnabled()
    assert calls == [["stable-diffusion-v1-5/stable-diffusion-v1-5", "facebook/dinov2-base"]]
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=10_000)
    assert "missing ones are fetched" in dialog.status_label.text() and dialog.last_error == ""
    assert dialog.create_button.isEnabled() and not dialog.cancel_button.isEnabled()
    assert not dialog.progress_bar.isVisible() and dialog.tabs.isEnabled()
    assert not model_path("sd15-hub").exists() and dialog.created_name == ""

    # closing while downloading asks first: "no" keeps it running, "yes" stops it
    assert dialog.start_current()
    qtbot.waitUntil(lambda: dialog.phase == "download" and dialog.progress_bar.value() > 0, timeout=15_000)
    dialog.confirm = lambda title, text: False
    dialog.close()
    assert dialog.isVisible() and dialog.is_running()
    dialog.confirm = lambda title, text: True
    dialog.close()
    assert not dialog.isVisible()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=10_000)
    assert not model_path("sd15-hub").exists()


def test_a_download_that_does_not_fit_is_not_started(qtbot, monkeypatch, hub_dialog):
    calls: list = []
    monkeypatch.setattr(download, "plan_download", fake_plan(3 * 1024 * MB, 1024 * MB))
    monkeypatch.setattr(create, "download_repos", slow_download(calls))
    dialog = hub_dialog
    dialog.confirm = lambda title, text: pytest.fail("a download that does not fit must not be offered")
    assert dialog.start_current()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=15_000)
    assert "Not enough disk space" in dialog.last_error and "6.0 GB" in dialog.last_error
    assert "1.0 GB are free" in dialog.last_error and "not started" in dialog.status_label.text()
    assert calls == [] and dialog.create_button.isEnabled()
    assert not model_path("sd15-hub").exists()


def test_hub_ids_and_names_are_checked_before_anything_runs(hub_dialog):
    assert not hub_dialog.download_base("../local", "facebook/dinov2-base", "sd15-hub")
    assert "Hub id" in hub_dialog.last_error and not hub_dialog.is_running()
    assert not hub_dialog.download_base("a/b", "c/d", "bad/name")
    assert "no spaces" in hub_dialog.last_error
