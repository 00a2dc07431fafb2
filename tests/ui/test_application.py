"""Start-up: the QApplication set-up, settings, the restore offer, ``--demo`` and paths, ``--self-test``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyqtgraph as pg
from PySide6 import QtWidgets

from sd_fsmis.core.session.autosave import AutosaveScheduler, folder_state
from sd_fsmis.core.session.state import Session
from sd_fsmis.ui import application
from sd_fsmis.ui.settings import MAX_RECENT, AppSettings, settings_path


def test_make_application_sets_row_major_once(qapp):
    app = application.make_application()
    assert app is QtWidgets.QApplication.instance()
    assert pg.getConfigOption("imageAxisOrder") == "row-major"
    assert app.applicationName() == "SD-FSMIS"


def test_settings_round_trip_and_damaged_file(tmp_path):
    settings = AppSettings()
    for i in range(MAX_RECENT + 3):
        settings.add_recent(f"/data/case{i}.nii.gz")
    settings.add_recent("/data/case5.nii.gz")
    assert len(settings.recent_files) == MAX_RECENT and settings.recent_files[0] == "/data/case5.nii.gz"
    settings.brush_radius = 7.0
    settings.save()
    assert settings_path().is_file()
    loaded = AppSettings.load()
    assert loaded.recent_files == settings.recent_files and loaded.brush_radius == 7.0
    settings_path().write_text("{not json", "utf-8")
    assert AppSettings.load() == AppSettings()
    settings_path().write_text(json.dumps({"brush_radius": "big", "crosshair": False}), "utf-8")
    odd = AppSettings.load()
    assert odd.brush_radius == 5.0 and odd.crosshair is False


def test_no_restore_offer_without_a_crash(qapp, tmp_path):
    asked = []
    assert application.offer_restore(tmp_path / "none", ask=lambda s: asked.append(s) or True) is None
    assert not asked


def _crashed_session_folder(folder: Path, demo_cache: Path) -> Session:
    session = Session()
    study = session.open_study(demo_cache)
    layer = study.add_layer("Segmentation", labels={1: "liver"})
    layer.paint_line(0, 20, [(100, 100), (110, 120)], radius=5)
    scheduler = AutosaveScheduler(session, folder)
    scheduler.mark_running()
    scheduler.save_now()
    return session  # no mark_clean_exit: a crash


def test_restore_declined_and_accepted(qapp, tmp_path, demo_cache):
    folder = tmp_path / "session"
    original = _crashed_session_folder(folder, demo_cache)
    assert folder_state(folder).offer_restore
    assert application.offer_restore(folder, ask=lambda s: False) is None
    restored = application.offer_restore(folder, ask=lambda s: True)
    assert isinstance(restored, Session)
    painted = original.studies[0].layer("Segmentation").array
    assert (restored.studies[0].layer("Segmentation").array == painted).all()


def test_a_damaged_session_is_one_line_in_a_dialog(qapp, tmp_path, demo_cache, monkeypatch):
    folder = tmp_path / "session"
    _crashed_session_folder(folder, demo_cache)
    (folder / "manifest.json").write_text("{damaged", "utf-8")
    shown = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "warning", lambda *args: shown.append(args[2]))
    assert application.offer_restore(folder, ask=lambda s: True) is None
    assert shown and "damaged" in shown[0] and "\n" not in shown[0] and "Traceback" not in shown[0]


def test_run_application_opens_the_demo_and_the_paths(qapp, demo_cache, monkeypatch):
    windows = []

    def fake_exec(app):
        window = next(w for w in QtWidgets.QApplication.topLevelWidgets() if type(w).__name__ == "MainWindow")
        windows.append(window)
        assert window.wait_idle(60_000)
        window.confirm = lambda *_: True
        window.close()
        return 0

    monkeypatch.setattr(QtWidgets.QApplication, "exec", fake_exec)
    monkeypatch.setattr(application, "offer_restore", lambda: None)
    assert application.run_application([str(demo_cache)], demo=True) == 0
    (window,) = windows
    assert len(window.session.studies) == 2  # the demo and the path
    assert window.session.reference is not None  # the demo's labels
    assert settings_path().is_file()  # saved on close
    window.deleteLater()


def test_self_test_passes_through_the_command_line(qapp, demo_cache, capsys):
    from sd_fsmis.cli import main

    code = main(["--self-test"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    assert len(out) == 1 and out[0].startswith("self-test passed") and "Dice" in out[0]
    # both engines ran: the built-in default (Dice checked) and the tiny SD-FSMIS model built in memory
    assert "propagation engine" in out[0] and "tiny SD-FSMIS model built in memory" in out[0]
    assert "CPU, float32" in out[0]
    from sd_fsmis.core.engines.registry import available_engines
    from sd_fsmis.core.model.in_memory import SELF_TEST_ENGINE

    assert SELF_TEST_ENGINE not in {c.name for c in available_engines()}  # not offered after the test


def test_self_test_fails_when_the_model_cannot_run(qapp, demo_cache, monkeypatch):
    from sd_fsmis.core.model import in_memory

    def broken(*_args, **_kwargs):
        raise RuntimeError("no torch in this bundle")

    monkeypatch.setattr(in_memory, "build_tiny_engine", broken)
    monkeypatch.setattr(application, "SELF_TEST_ENGINES", ("model",))  # the built-in part is tested above
    out = io.StringIO()
    assert application.run_self_test(out=out) == 1
    text = out.getvalue()
    assert text.startswith("self-test FAILED: the segmentation with the SD-FSMIS model failed")
    assert "no torch in this bundle" in text and "\n" not in text.strip()


def test_self_test_reports_a_failure_with_a_message(qapp, demo_cache, monkeypatch):
    monkeypatch.setattr(application, "SELF_TEST_MIN_DICE", 1.01)  # an impossible target
    monkeypatch.setattr(application, "_self_test_steps", _fail_fast)
    out = io.StringIO()
    assert application.run_self_test(out=out) == 1
    assert out.getvalue().startswith("self-test FAILED: ")


def _fail_fast(window, timeout_s):
    raise application.SelfTestError("the demo study did not open")


def test_no_display_is_one_clear_message(monkeypatch, capsys):
    from sd_fsmis.ui import application

    monkeypatch.setattr(application.sys, "platform", "linux")
    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    assert application.run_application() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no display" in err[0]


def test_startup_report_prints_the_time_and_closes_cleanly(tmp_path):
    """``SD_FSMIS_STARTUP_REPORT=1 sd-fsmis``: one line with the time to the window, then a clean exit.

    In a child process: the application's own event loop runs and quits there (quitting the tests' shared
    QApplication would stop the worker threads of every later test).
    """
    import os
    import subprocess
    import sys

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", **{application.STARTUP_REPORT_ENV: "1"})
    done = subprocess.run(
        [sys.executable, "-m", "sd_fsmis"], env=env, capture_output=True, encoding="utf-8", timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("window shown after ") and out[0].endswith(" s")
    seconds = float(out[0].split()[3])
    assert 0 < seconds < 300
    assert not folder_state().offer_restore  # a clean exit: no restore offer next time


def test_seconds_since_process_start_counts_this_process():
    import subprocess
    import sys

    code = (
        "import time; time.sleep(0.5); from sd_fsmis.ui.application import seconds_since_process_start as s; "
        "print(s())"
    )
    seconds = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8").stdout
    )
    assert 0.5 <= seconds < 30  # the sleep, Python's start and the import: measured from the process start


def test_application_icon_has_the_sizes(qapp):
    icon = application.application_icon()
    assert icon is not None and not icon.isNull()
    assert {s.width() for s in icon.availableSizes()} >= {16, 32, 256}
    assert not qapp.windowIcon().isNull()
