"""The status bar's device label: "CPU only" stands out and says how to get GPU support."""

from __future__ import annotations

from sd_fsmis.ui.panels.status_bar import CPU_ONLY_STYLE, StatusBar
from sd_fsmis.ui.workers.open_worker import JobRunner


def test_cpu_only_is_a_warning_with_a_tooltip_and_a_gpu_is_plain(qtbot):
    runner = JobRunner()
    bar = StatusBar(runner, probe=False)
    qtbot.addWidget(bar)
    bar.set_device("CPU")
    assert bar.cpu_only and bar.device.text() == "Device: CPU only"
    assert bar.device.styleSheet() == CPU_ONLY_STYLE and "background-color" in CPU_ONLY_STYLE
    tip = bar.device.toolTip()
    assert "NVIDIA driver" in tip and "CUDA" in tip and "built-in engines" in tip
    bar.set_device("NVIDIA H200 (139.8 GiB)")
    assert not bar.cpu_only and bar.device.text() == "Device: NVIDIA H200 (139.8 GiB)"
    assert bar.device.styleSheet() == "" and "NVIDIA H200" in bar.device.toolTip()


def test_the_segment_panel_says_what_automatic_means_on_this_machine(qtbot):
    from sd_fsmis.core.session.state import Session
    from sd_fsmis.ui.settings import AppSettings
    from sd_fsmis.ui.window.main_window import MainWindow

    window = MainWindow(
        Session(), settings=AppSettings(), autosave=False, probe_device=False, save_settings=False
    )
    qtbot.addWidget(window)
    combo = window.segment_panel.device_combo
    window.status.set_device("CPU")
    assert combo.itemText(combo.findData("auto")) == "Automatic (CPU only: no GPU found)"
    assert "No GPU was found" in combo.toolTip()
    window.status.set_device("NVIDIA H200 (139.8 GiB)")
    assert combo.itemText(combo.findData("auto")) == "Automatic (NVIDIA H200 (139.8 GiB))"
    window.confirm = lambda *_: True
    window.close()
