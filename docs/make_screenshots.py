"""Screenshots of the application for README (``make screenshots``), made from the demo study offscreen.

1. ``main-window.png``: the demo study, the liver painted on three slices as supports, segmented with the
   default built-in engine; the prediction (solid contour) over the reference (dashed contour).
2. ``compare.png``: the Compare tab with the disagreement map on the image.
3. ``fine-tune-wizard.png``: the fine-tune wizard's data page with the demo image and its label map as a
   training pair.
4. ``cohort.png``: "Segment a folder of studies" on three copies of the demo and a damaged file.

Run it after any change to what these show, look at the PNGs, then commit them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
OUT = Path(__file__).resolve().parent / "images"


def main() -> int:
    os.environ.setdefault("SD_FSMIS_HOME", tempfile.mkdtemp(prefix="sd-fsmis-screenshots-"))
    import numpy as np
    from PySide6 import QtCore

    from sd_fsmis.core.io.demo import demo_image_path, demo_label_path
    from sd_fsmis.ui.application import _wait, make_application
    from sd_fsmis.ui.settings import AppSettings
    from sd_fsmis.ui.window.main_window import MainWindow

    app = make_application(offscreen=True)
    window = MainWindow(None, settings=AppSettings(), probe_device=False, save_settings=False, autosave=False)
    window.confirm = lambda *_: True
    window.resize(1500, 940)
    window.show()
    session = window.session
    window.open_demo()
    _wait(lambda: session.active_study is not None and not window.runner.busy, 120, "the demo study")
    reference, layer = session.reference, window.active_layer
    value = reference.label_value("liver") or 1
    slices = reference.label_map.slices_with(value)
    label = layer.selected_label
    for z in (slices[len(slices) // 6], slices[len(slices) // 2], slices[5 * len(slices) // 6]):
        window.viewer.go_to_slice(z)
        plane = np.where(reference.array[z] == value, label, 0).astype(layer.array.dtype)
        layer.set_region((slice(z, z + 1), slice(None), slice(None)), plane[None], "paint")
        window.add_support_slice()
    panel = window.segment_panel
    panel.segment()
    _wait(lambda: not panel.is_running(), 300, "the segmentation")
    run = session.runs[-1] if len(session.runs) else None
    middle = slices[len(slices) // 2] + 3
    window.viewer.go_to_slice(middle)
    window.docks["Segment"].raise_()
    app.processEvents()
    OUT.mkdir(parents=True, exist_ok=True)
    shots = []

    def grab(widget, name: str) -> None:
        for _ in range(10):
            app.processEvents()
            time.sleep(0.02)
        path = OUT / name
        widget.grab().save(str(path))
        shots.append(path)

    grab(window, "main-window.png")
    window.docks["Compare"].raise_()
    compare = window.compare_panel
    compare.confusion_check.setChecked(True)
    _wait(lambda: not compare.is_busy() if hasattr(compare, "is_busy") else True, 60, "the comparison")
    grab(window, "compare.png")
    compare.confusion_check.setChecked(False)
    wizard = window.open_fine_tune()
    wizard.resize(1000, 720)
    wizard.next()
    data = wizard.data_page
    data.add_pair(demo_image_path(), demo_label_path(), name="demo")  # as "Add image + label…" does
    _wait(lambda: len(data.entries) > 0 and not data.checks_pending(), 120, "the wizard's check of the pair")
    grab(wizard, "fine-tune-wizard.png")
    wizard.close()
    # a folder of studies: copies of the demo (the same image, so the same volume) and a damaged file
    trial = Path(tempfile.mkdtemp(prefix="sd-fsmis-trial-"))
    (trial / "scans").mkdir()
    for k in (1, 2, 3):
        (trial / "scans" / f"patient_{k:03d}.nii.gz").symlink_to(demo_image_path())
    (trial / "scans" / "patient_004.nii.gz").write_bytes(b"truncated transfer" * 15)
    cohort = window.segment_folder_of_studies()
    cohort.queries_edit.setText(str(trial / "scans"))
    cohort.out_edit.setText(str(trial / "livers"))
    cohort.start()
    _wait(lambda: not cohort.is_running(), 300, "the folder of studies")
    grab(cohort, "cohort.png")
    cohort.close()
    shutil.rmtree(trial, ignore_errors=True)
    window.close()
    dice = f", Dice {run.dice:.3f}" if run is not None and run.dice is not None else ""
    print(f"wrote {', '.join(p.name for p in shots)} to {OUT}{dice}")
    QtCore.QTimer.singleShot(0, app.quit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
