"""Start-up of the desktop application: the QApplication, the restore offer, the main window, the self-test.

``sd-fsmis`` opens the window (and the paths given); ``--demo`` opens the generated demo study;
``--self-test`` opens the window offscreen, segments the demo study through the Segment panel's worker
and checks the Dice against the demo's reference, printing one line (exit code 0 when it passed).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sd_fsmis import __version__

log = logging.getLogger(__name__)

SELF_TEST_MIN_DICE = 0.5
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
    return app


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

    from sd_fsmis.core.autosave import folder_state, restore
    from sd_fsmis.ui.workers import JobWorker

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
    app = make_application()
    route_qt_messages()
    from sd_fsmis.core.session import Session
    from sd_fsmis.ui.main_window import MainWindow

    session = offer_restore() or Session()
    window = MainWindow(session)
    window.show()
    if session.warnings:
        window.show_error("Session restored with notes", "\n".join(session.warnings))
    if demo:
        window.open_demo()
    if paths:
        window.open_paths(paths)
    return app.exec()


# ------------------------------------------------------------------------------------------- self-test
class SelfTestError(Exception):
    """A step of the self-test failed; its message says which."""


def run_self_test(timeout_s: float = 600.0, out=None) -> int:
    """Open the window offscreen, segment the demo study like a user would, check Dice > 0.5; print a line."""
    out = out or sys.stdout
    app = make_application(offscreen=True)
    previous_handler = route_qt_messages()
    from sd_fsmis.core.session import Session
    from sd_fsmis.ui.main_window import MainWindow
    from sd_fsmis.ui.settings import AppSettings

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
    runs_before = len(session.runs)
    panel = window.segment_panel
    if not panel.select_engine("classical"):
        raise SelfTestError("the classical engine is not offered by the Segment panel")
    panel.set_slice_range(first, last)
    if not panel.segment():  # the Segment button's path: its worker thread, then Session.add_result
        raise SelfTestError(f"the Segment button did not start: {panel.last_error}")
    _wait(lambda: not panel.is_running(), timeout_s, "the segmentation")
    runs = list(session.runs)
    if len(runs) <= runs_before:
        raise SelfTestError("no run was recorded")
    run = runs[-1]
    if run.status != "done":
        raise SelfTestError(f"the segmentation {run.status}: {run.message}")
    _, result = session.find_layer(run.result_layer_id)
    voxels = int((result.array > 0).sum())
    if voxels == 0:
        raise SelfTestError("the segmentation is empty")
    if run.dice is None or run.dice <= SELF_TEST_MIN_DICE:
        raise SelfTestError(f"Dice {run.dice} vs the demo reference is not above {SELF_TEST_MIN_DICE}")
    return (
        f"self-test passed: demo study, slices {first + 1}-{last + 1} segmented with the classical engine "
        f"({run.k}-shot, {voxels} voxels), liver Dice {run.dice:.3f} vs the reference"
    )
