"""The status bar: voxel under the mouse (index, mm, value), background jobs with Cancel, compute device.

The device ("NVIDIA RTX 4090 (24.0 GiB)" or "CPU only") comes from ``core.device``, which imports torch: that
runs once in a daemon thread (:func:`start_device_probe`), and the bar polls the answer with a timer, so the
window neither waits for torch at start nor shares a Qt object with the thread.
"""

from __future__ import annotations

import logging
import threading

from PySide6 import QtCore, QtWidgets

from sd_fsmis.core.jobs import Progress
from sd_fsmis.ui.workers.job_worker import JobWorker, format_seconds
from sd_fsmis.ui.workers.open_worker import JobRunner

log = logging.getLogger(__name__)

CPU_ONLY = "CPU only"
#: warning colours of the "CPU only" label (readable on light and dark themes)
CPU_ONLY_STYLE = (
    "QLabel { color: #5c3b00; background-color: #ffd98a; border: 1px solid #c98a00; "
    "border-radius: 3px; padding: 0 6px; font-weight: bold; }"
)
CPU_ONLY_TIP = (
    "No GPU is used: torch found no CUDA (or Apple MPS) device, or this installation has a CPU-only torch.\n"
    "The built-in engines work as usual; SD-FSMIS models run, but much more slowly (minutes per volume).\n\n"
    "For GPU support: install the NVIDIA driver on this computer, and use the GPU (CUDA) build of SD-FSMIS,\n"
    "or install a CUDA build of torch into its Python environment (README: 'GPU (CUDA)')."
)
_probe_lock = threading.Lock()
_probe_thread: threading.Thread | None = None
_device_text: str | None = None


def _probe() -> None:
    global _device_text
    try:
        from sd_fsmis.core.device import describe_device, select_device

        text = describe_device(select_device("auto"))
    except Exception as exc:  # no torch, a broken driver: the built-in engines still work on the CPU
        log.warning("no compute device information: %s", exc)
        text = "CPU"
    _device_text = CPU_ONLY if text == "CPU" else text


def start_device_probe() -> None:
    """Find the compute device in the background (once per process)."""
    global _probe_thread
    with _probe_lock:
        if _probe_thread is None:
            _probe_thread = threading.Thread(target=_probe, name="device-probe", daemon=True)
            _probe_thread.start()


def device_text() -> str | None:
    """The compute device's description once known ("CPU only" without a GPU), else None."""
    return _device_text


def _eta(seconds: float | None) -> str:
    return "" if seconds is None else f" · {format_seconds(seconds)} left"


class StatusBar(QtWidgets.QStatusBar):
    """Position/value text, the running job (progress, Cancel) and the device.

    Signal ``deviceKnown(str)``: the device's description ("CPU only" without a GPU) once it is known.
    """

    deviceKnown = QtCore.Signal(str)

    def __init__(self, runner: JobRunner, parent: QtWidgets.QWidget | None = None, probe: bool = True):
        super().__init__(parent)
        self.runner = runner
        #: the device's description once known (None before the probe answers)
        self.known_device: str | None = None
        self.position = QtWidgets.QLabel()
        self.position.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.job_label = QtWidgets.QLabel()
        self.job_progress = QtWidgets.QProgressBar()
        self.job_progress.setMaximumWidth(160)
        self.job_progress.setMaximumHeight(16)
        self.job_progress.setTextVisible(False)
        self.cancel_button = QtWidgets.QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Stop opening or exporting")
        self.cancel_button.clicked.connect(self.cancel_job)
        #: True once the device probe found no GPU
        self.cpu_only = False
        self.device = QtWidgets.QLabel("Device: checking…")
        self.device.setToolTip("The compute device the SD-FSMIS model runs on")
        self.addWidget(self.position, 1)
        for widget in (self.job_label, self.job_progress, self.cancel_button):
            self.addPermanentWidget(widget)
            widget.setVisible(False)
        self.addPermanentWidget(self.device)
        runner.started.connect(self._job_started)
        runner.progressed.connect(self._job_progress)
        runner.finished.connect(self._job_finished)
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._poll_device)
        if probe:
            start_device_probe()
            self._timer.start()
            self._poll_device()
        elif device_text() is not None:
            self.set_device(device_text() or CPU_ONLY)
        else:
            self.device.setText("Device: not checked")

    # -------------------------------------------------------------------------------------- position
    def set_position(self, text: str) -> None:
        """The viewer's ``statusChanged`` text (voxel index, mm, value)."""
        self.position.setText(text)

    # ---------------------------------------------------------------------------------------- device
    def set_device(self, text: str) -> None:
        """Show the compute device; "CPU only" stands out (warning colours) and its tooltip says how to get
        GPU support."""
        cpu = text in (CPU_ONLY, "CPU")
        self.cpu_only = cpu
        self.known_device = CPU_ONLY if cpu else text
        if cpu:
            self.device.setText(f"Device: {CPU_ONLY}")
            self.device.setStyleSheet(CPU_ONLY_STYLE)
            self.device.setToolTip(CPU_ONLY_TIP)
        else:
            self.device.setText(f"Device: {text}")
            self.device.setStyleSheet("")
            self.device.setToolTip(f"SD-FSMIS models run on {text}")
        self.deviceKnown.emit(self.known_device)

    def _poll_device(self) -> None:
        text = device_text()
        if text is not None:
            self._timer.stop()
            self.set_device(text)

    # ------------------------------------------------------------------------------------------- jobs
    def _current(self) -> JobWorker | None:
        jobs = self.runner.jobs
        return jobs[-1] if jobs else None

    def _job_started(self, thread: JobWorker) -> None:
        self._show_job(thread, thread.last_progress)

    def _job_progress(self, thread: JobWorker, progress: Progress) -> None:
        if thread is self._current():
            self._show_job(thread, progress)

    def _job_finished(self, _thread: JobWorker) -> None:
        current = self._current()
        if current is None:
            for widget in (self.job_label, self.job_progress, self.cancel_button):
                widget.setVisible(False)
        else:
            self._show_job(current, current.last_progress)

    def _show_job(self, thread: JobWorker, progress: Progress | None) -> None:
        text = thread.name or "Working"
        if progress is not None and progress.total > 0:
            self.job_progress.setRange(0, 1000)
            self.job_progress.setValue(round(1000 * progress.fraction))
            text += _eta(progress.eta_s)
        else:
            self.job_progress.setRange(0, 0)  # busy indicator
        self.job_label.setText(text)
        for widget in (self.job_label, self.job_progress, self.cancel_button):
            widget.setVisible(True)

    def cancel_job(self) -> None:
        current = self._current()
        if current is not None:
            current.cancel()
            self.job_label.setText(f"{current.name}: cancelling…")
