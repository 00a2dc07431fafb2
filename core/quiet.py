"""Keep the imaging libraries' chatter (ITK warnings, pydicom warnings, GDCM's prints) out of the output.

What matters in that chatter is reported by the loader itself, as a load warning or a StudyReadError.
Whatever ITK says at other times (a registration, a resampling) goes to the log file, never to the
terminal or a dialog (:func:`route_itk_messages_to_log`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator

import SimpleITK as sitk

log = logging.getLogger("sd_fsmis.itk")

_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple = ()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep the libraries' chatter out of the program's output while reading.

    ITK's warnings (stderr) and pydicom's Python warnings are switched off; what matters in them is
    reported as a load warning or a :class:`StudyReadError` instead. GDCM's codecs print some messages
    (e.g. "Unsupported JPEG data precision 12" while it picks the 12-bit decoder) straight to the C
    stdout: stdout is pointed at stderr meanwhile, so that ``--json`` output stays clean. Re-entrant and
    thread-safe: the first reader in switches everything off, the last one out restores it.
    """
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            caught = warnings.catch_warnings()
            caught.__enter__()
            warnings.filterwarnings("ignore", module="pydicom")
            _quiet_saved = (sitk.ProcessObject.GetGlobalWarningDisplay(), caught, _stdout_to_stderr())
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                display, caught, saved_stdout = _quiet_saved
                sitk.ProcessObject.SetGlobalWarningDisplay(display)
                caught.__exit__(None, None, None)
                _restore_stdout(saved_stdout)


def _stdout_to_stderr() -> int | None:
    """Point file descriptor 1 at stderr; return a copy of the old one (None where there is no stdout)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        return saved
    except (OSError, AttributeError, ValueError):
        return None


def _restore_stdout(saved: int | None) -> None:
    if saved is None:
        return
    try:
        _flush_c_stdio()
        os.dup2(saved, 1)
    finally:
        os.close(saved)


def _flush_c_stdio() -> None:
    """Flush the C library's stdout buffer (what GDCM printed) before stdout is pointed back."""
    # where there is no C library to call (Windows), there is nothing buffered to move
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


class _ItkLog(getattr(sitk, "LoggerBase", object)):  # SimpleITK >= 2.3
    """ITK's output window as a logger: every text ITK displays goes to the log file (DEBUG/INFO level,
    below what the console handler shows)."""

    def DisplayText(self, text: str) -> None:  # ITK's method names
        log.debug("ITK: %s", " ".join(str(text).split()))

    def DisplayErrorText(self, text: str) -> None:
        log.info("ITK error: %s", " ".join(str(text).split()))

    def DisplayWarningText(self, text: str) -> None:
        log.info("ITK warning: %s", " ".join(str(text).split()))

    def DisplayGenericOutputText(self, text: str) -> None:
        log.debug("ITK: %s", " ".join(str(text).split()))

    def DisplayDebugText(self, text: str) -> None:
        log.debug("ITK debug: %s", " ".join(str(text).split()))


_itk_logger: list = []  # the installed logger and ITK's previous one (kept alive)


def route_itk_messages_to_log() -> bool:
    """Send ITK's own messages ("WARNING: In /tmp/SimpleITK-build/...") to the log file instead of the
    terminal; once per process. False where this SimpleITK cannot (older than 2.3)."""
    if _itk_logger:
        return True
    if not hasattr(sitk, "LoggerBase"):
        return False
    logger = _ItkLog()
    _itk_logger.extend([logger, logger.SetAsGlobalITKLogger()])
    return True
