"""Start-up of the desktop application: the QApplication, the restore offer, the main window, the self-test.

``sd-fsmis`` opens the window (and the paths given); ``--demo`` opens the generated demo study;
``--self-test`` opens the window offscreen, segments the demo study through the Segment panel's worker
twice — with the built-in propagation engine (Dice against the demo's reference must pass a threshold) and
with a tiny SD-FSMIS model built in memory with random weights (the run must finish with a well-formed
result) — and prints one line (exit code 0 when it passed). The frozen bundle's build runs it.

Start-up timing: with ``SD_FSMIS_STARTUP_REPORT=1`` the application prints
``window shown after X.XX s`` (from the start of the process) once the main window is on screen, and quits.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PySide6 import QtCore

from sd_fsmis import __version__

log = logging.getLogger(__name__)

SELF_TEST_MIN_DICE = 0.5
#: what the self-test segments the demo with (tests may run one part only)
SELF_TEST_ENGINES = ("classical", "model")
#: the built-in engine of the self-test's first part (the default without a model)
SELF_TEST_BUILTIN = "propagation"
#: environment variable: print the time from process start to the window shown, then quit
STARTUP_REPORT_ENV = "SD_FSMIS_STARTUP_REPORT"
ICON_NAME = "sd-fsmis-256.png"
_configured = False


def make_application(offscreen: bool = False):
    """The QApplication (created once), pyqtgraph in row-major order, the PySide6 reference-leak guard."""
    global _configured
    if offscreen:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets

    from sd_fsmis.ui.pyside_fixes import protect_singletons

    protect_singletons()
    if not _configured:
        import pyqtgraph as pg

        pg.setConfigOptions(imageAxisOrder="row-major")
        _configured = True
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("SD-FSMIS")
    app.setOrganizationName("SD-FSMIS")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("sd-fsmis")  # Wayland: the window belongs to the installed sd-fsmis.desktop
    icon = application_icon()
    if icon is not None:
        app.setWindowIcon(icon)
    return app


def application_icon():
    """The application's icon (a QIcon from the package's PNG sizes), or None when the files are missing."""
    from PySide6 import QtGui

    folder = Path(__file__).resolve().parent.parent / "resources"
    try:
        from importlib.resources import files

        folder = Path(str(files("sd_fsmis.resources")))
    except (ImportError, TypeError, ModuleNotFoundError):
        pass
    sizes = sorted(folder.glob("sd-fsmis-*.png"))
    if not sizes:
        return None
    icon = QtGui.QIcon()
    for path in sizes:
        icon.addFile(str(path))
    return icon


def seconds_since_process_start() -> float | None:
    """How long this process has been running (seconds); None when the system does not say.

    Linux: the start time in /proc/self/stat (clock ticks after boot) against CLOCK_BOOTTIME, both counted
    from boot (psutil's create_time adds the boot time, which /proc gives in whole seconds only: up to 1 s
    off). Elsewhere: psutil's create_time against the wall clock.
    """
    if sys.platform.startswith("linux"):
        try:
            stat = Path("/proc/self/stat").read_text()
            ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
            return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            pass
    try:
        import psutil

        return time.time() - float(psutil.Process().create_time())
    except Exception:
        return None


def _report_startup_and_quit(window, out=None) -> None:
    """``window shown after X s`` (process start to now) on ``out``, then close the window (a clean exit)."""
    from PySide6 import QtWidgets

    seconds = seconds_since_process_start()
    seconds = float("nan") if seconds is None else seconds
    print(f"window shown after {seconds:.2f} s", file=out or sys.stdout, flush=True)
    window.confirm = lambda *_: True
    window.close()
    QtWidgets.QApplication.instance().quit()


def _qt_message_to_log(mode, _context, message: str) -> None:
    """Qt's own messages go to the log file, not the terminal (the offscreen plugin's are noise)."""
    from PySide6.QtCore import QtMsgType

    if "propagateSizeHints" in message:
        return
    level = logging.ERROR if mode in (QtMsgType.QtCriticalMsg, QtMsgType.QtFatalMsg) else logging.INFO
    logging.getLogger("sd_fsmis.qt").log(level, "Qt: %s", message)


def route_qt_messages(on: bool = True):
    """Send Qt's messages to our log (``on``) or give them back to the previous handler; returns it."""
    from PySide6.QtCore import qInstallMessageHandler

    return qInstallMessageHandler(_qt_message_to_log if on else None)


def _ask_restore(state) -> bool:
    from PySide6 import QtWidgets

    what = f"{state.studies} stud{'y' if state.studies == 1 else 'ies'}" if state.studies else "the session"
    when = f", saved {state.saved_at.replace('T', ' ')[:19]}" if state.saved_at else ""
    answer = QtWidgets.QMessageBox.question(
        None,
        "Restore the previous session?",
        "SD-FSMIS did not quit normally last time.\n\n"
        f"Restore the previous session ({what}{when}) with its masks, support examples and runs?\n\n"
        "No starts an empty session (the saved one is replaced at the next autosave).",
    )
    return answer == QtWidgets.QMessageBox.StandardButton.Yes


def offer_restore(folder: str | os.PathLike[str] | None = None, ask: Callable[[object], bool] = _ask_restore):
    """After a crash, ask whether to restore the autosaved session; the restored Session, or None.

    The restore (re-opening the studies) runs in a worker thread behind a busy dialog; a failure is shown
    in a dialog (one line, no traceback) and gives None.
    """
    from PySide6 import QtCore, QtWidgets

    from sd_fsmis.core.session.autosave import folder_state, restore
    from sd_fsmis.ui.workers.job_worker import JobWorker

    state = folder_state(folder)
    if not state.offer_restore or not ask(state):
        return None
    worker = JobWorker(lambda progress, cancel: restore(folder), name="restore")
    dialog = QtWidgets.QProgressDialog("Restoring the previous session…", "", 0, 0)
    dialog.setCancelButton(None)
    dialog.setWindowTitle("SD-FSMIS")
    dialog.setMinimumDuration(300)
    loop = QtCore.QEventLoop()
    worker.done.connect(loop.quit)
    worker.start()
    loop.exec()
    dialog.close()
    if worker.outcome == "finished":
        return worker.result
    message = worker.error[0] if worker.error else "the session could not be restored"
    QtWidgets.QMessageBox.warning(None, "Restore failed", message)
    return None


def _no_display() -> bool:
    """True on Linux/BSD without X11 or Wayland, where Qt would abort instead of opening a window."""
    if not sys.platform.startswith(("linux", "freebsd")) or os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_application(paths: list[str] | None = None, demo: bool = False, self_test: bool = False) -> int:
    """Create the QApplication and the main window; return the exit code."""
    if self_test:
        return run_self_test()
    if _no_display():
        print(
            "sd-fsmis: error: no display to open the window on (DISPLAY and WAYLAND_DISPLAY are unset); "
            "use the sub-commands (sd-fsmis --help) on a headless machine",
            file=sys.stderr,
        )
        return 2
    from sd_fsmis.ui.platform_check import xcb_problem

    problem = xcb_problem()
    if problem:
        print(f"sd-fsmis: error: {problem}", file=sys.stderr)
        return 2
    app = make_application()
    route_qt_messages()
    from sd_fsmis.core.session.state import Session
    from sd_fsmis.ui.window.main_window import MainWindow

    session = offer_restore() or Session()
    window = MainWindow(session)
    window.show()
    if os.environ.get(STARTUP_REPORT_ENV):
        from PySide6 import QtCore

        # once the event loop has painted the window
        QtCore.QTimer.singleShot(0, lambda: _report_startup_and_quit(window))
    if session.warnings:
        window.show_error("Session restored with notes", "\n".join(session.warnings))
    if demo:
        window.open_demo()
    if paths:
        window.open_paths(paths)
    opener = FileOpenFilter(window)  # macOS: files opened from the Finder arrive as events, not arguments
    app.installEventFilter(opener)
    try:
        return app.exec()
    finally:
        app.removeEventFilter(opener)


class FileOpenFilter(QtCore.QObject):
    """Opens the file of a QFileOpenEvent (a document double-clicked in the macOS Finder) in the window."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.window = window

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QtCore.QEvent.Type.FileOpen and event.file():
            self.window.open_paths([event.file()])
            return True
        return False


# ------------------------------------------------------------------------------------------- self-test
class SelfTestError(Exception):
    """A step of the self-test failed; its message says which."""


def run_self_test(timeout_s: float = 600.0, out=None) -> int:
    """Open the window offscreen, segment the demo study like a user would, check Dice > 0.5; print a line."""
    out = out or sys.stdout
    app = make_application(offscreen=True)
    previous_handler = route_qt_messages()
    from sd_fsmis.core.session.state import Session
    from sd_fsmis.ui.settings import AppSettings
    from sd_fsmis.ui.window.main_window import MainWindow

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sd-fsmis-self-test-") as folder:
        window = MainWindow(
            Session(),
            settings=AppSettings(),
            autosave_folder=Path(folder),
            probe_device=False,
            save_settings=False,
        )
        window.confirm = lambda *_: True
        window.resize(1400, 900)
        window.show()
        try:
            text = _self_test_steps(window, timeout_s)
            code = 0
        except SelfTestError as exc:
            text, code = f"self-test FAILED: {exc}", 1
        except Exception as exc:  # a bug: keep the traceback in the log, one line here
            log.exception("self-test crashed")
            text, code = f"self-test FAILED: internal error: {type(exc).__name__}: {exc}", 1
        finally:
            window.close()
            window.deleteLater()
            app.processEvents()
            from PySide6.QtCore import qInstallMessageHandler

            qInstallMessageHandler(previous_handler)
    print(f"{text} ({time.perf_counter() - start:.1f} s)", file=out, flush=True)
    return code


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    from PySide6 import QtCore

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SelfTestError(f"timed out waiting for {what}")
        QtCore.QCoreApplication.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.01)


def _self_test_steps(window, timeout_s: float) -> str:
    import numpy as np

    session = window.session
    window.open_demo()
    _wait(lambda: session.active_study is not None and not window.runner.busy, timeout_s, "the demo study")
    reference, layer = session.reference, window.active_layer
    if window.segment_panel is None or window.support_panel is None:
        raise SelfTestError("the Segment and Support panels are not installed")
    if reference is None or layer is None or layer.kind == "reference":
        raise SelfTestError("the demo study did not open with its reference and a mask to paint on")
    label = layer.selected_label
    ref_value = reference.label_value("liver") or 1
    slices = reference.label_map.slices_with(ref_value)
    if len(slices) < 5:
        raise SelfTestError("the demo reference has no liver")
    # paint the liver on its top, middle and bottom slices (as a user traces it) and add them as support
    supports = (slices[2], slices[len(slices) // 2], slices[-3])
    first, last = supports[0] - 2, supports[-1] + 2  # segment from just below to just above the supports
    for z in supports:
        window.viewer.go_to_slice(z)
        plane = np.where(reference.array[z] == ref_value, label, 0).astype(layer.array.dtype)
        layer.set_region((slice(z, z + 1), slice(None), slice(None)), plane[None], "paint")
        if window.add_support_slice() is None:
            reason = window.support_panel.last_error
            raise SelfTestError(f"slice {z + 1} could not be added as support: {reason}")
    if len(session.support_set) != 3:
        raise SelfTestError(f"expected 3 support examples, got {len(session.support_set)}")
    parts = []
    if "classical" in SELF_TEST_ENGINES:
        parts.append(_self_test_classical(window, first, last, timeout_s))
    if "model" in SELF_TEST_ENGINES:
        middle = supports[1]
        parts.append(_self_test_model(window, label, (middle - 1, middle + 1), timeout_s))
    return "self-test passed: demo study, " + "; ".join(parts)


def _segment_with_panel(window, slices: tuple[int, int], timeout_s: float, what: str):
    """Press Segment for ``slices`` with the panel's chosen engine (its worker thread, then
    Session.add_result), wait, and return the finished run and its result layer; ``what`` names the job
    in failure messages."""
    session, panel = window.session, window.segment_panel
    runs_before = len(session.runs)
    panel.set_slice_range(*slices)
    if not panel.segment():
        raise SelfTestError(f"the Segment button did not start {what}: {panel.last_error}")
    _wait(lambda: not panel.is_running(), timeout_s, what)
    runs = list(session.runs)
    if len(runs) <= runs_before:
        raise SelfTestError(f"no run was recorded for {what}")
    run = runs[-1]
    if run.status != "done":
        raise SelfTestError(f"{what} {run.status}: {run.message}")
    _, result = session.find_layer(run.result_layer_id)
    return run, result


def _self_test_classical(window, first: int, last: int, timeout_s: float) -> str:
    """Segment slices ``first``..``last`` with the built-in default engine (no model); its Dice must pass
    the threshold."""
    panel = window.segment_panel
    if not panel.select_engine(SELF_TEST_BUILTIN):
        raise SelfTestError(f"the {SELF_TEST_BUILTIN} engine is not offered by the Segment panel")
    run, result = _segment_with_panel(window, (first, last), timeout_s, "the segmentation")
    voxels = int((result.array > 0).sum())
    if voxels == 0:
        raise SelfTestError("the segmentation is empty")
    if run.dice is None or run.dice <= SELF_TEST_MIN_DICE:
        raise SelfTestError(f"Dice {run.dice} vs the demo reference is not above {SELF_TEST_MIN_DICE}")
    return (
        f"slices {first + 1}-{last + 1} segmented with the built-in {SELF_TEST_BUILTIN} engine "
        f"({run.k}-shot, {voxels} voxels), liver Dice {run.dice:.3f} vs the reference"
    )


def _self_test_model(window, label: int, slices: tuple[int, int], timeout_s: float) -> str:
    """Segment ``slices`` with a tiny SD-FSMIS model built in memory (random weights) through the panel.

    Random weights give no meaningful Dice: what is checked is that the model runs in the application
    (torch, diffusers and transformers load; the job finishes) and that its result is well-formed.
    """
    import numpy as np

    from sd_fsmis.core.model.in_memory import register_tiny_engine, unregister_tiny_engine

    session, panel = window.session, window.segment_panel
    study_shape = tuple(session.active_study.volume.array.shape)
    name = register_tiny_engine()
    try:
        panel.refresh_models()
        _wait(lambda: not panel.models_loading(), timeout_s, "the list of models")
        if not panel.select_engine(name):
            raise SelfTestError("the in-memory SD-FSMIS model is not offered by the Segment panel")
        panel.set_device("cpu")
        run, result = _segment_with_panel(
            window, slices, timeout_s, "the segmentation with the SD-FSMIS model"
        )
    finally:
        unregister_tiny_engine(name)
        panel.select_engine(SELF_TEST_BUILTIN)
    if result is None or tuple(result.array.shape) != study_shape:
        shape = None if result is None else result.array.shape
        raise SelfTestError(f"the model's result has the shape {shape}, not the study's {study_shape}")
    values = {int(v) for v in np.unique(result.array)}
    if not values <= {0, int(label)}:
        raise SelfTestError(f"the model's result holds values {sorted(values)}, not only 0 and {label}")
    outside = np.ones(study_shape[0], bool)
    outside[slices[0] : slices[1] + 1] = False
    if result.array[outside].any():
        raise SelfTestError("the model's result has voxels outside the slices it was asked to segment")
    dtype = run.settings.get("dtype_used") or run.settings.get("dtype")  # what the engine really used
    if not run.device or not dtype:
        raise SelfTestError(
            f"the model's run does not record its device and dtype ({run.device!r}, {dtype!r})"
        )
    voxels = int((result.array > 0).sum())
    return (
        f"slices {slices[0] + 1}-{slices[1] + 1} segmented with a tiny SD-FSMIS model built in memory "
        f"(random weights, {run.device}, {dtype}, {voxels} voxels)"
    )
