"""Issue 14, item 11: the viewer shows the same slice 1 (and its position in mm) for one volume read as
DICOM and as NIfTI, in the slice label and the status bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtWidgets

from sd_fsmis.ui.viewer.ortho_viewer import OrthoViewer

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def make_viewer(qtbot):
    def make(volume) -> OrthoViewer:
        widget = OrthoViewer()
        qtbot.addWidget(widget)
        widget.resize(900, 600)
        widget.show()
        qtbot.waitExposed(widget)
        widget.set_volume(volume.array, volume.geometry, modality="MR")
        return widget

    return make


def test_slice_1_is_the_same_anatomy_in_both_files(make_viewer, chaos_as_nifti_and_dicom):
    nifti, dicom = chaos_as_nifti_and_dicom
    shown = []
    for volume in (nifti, dicom):
        viewer = make_viewer(volume)
        axial = viewer.views["axial"]
        numbering = volume.slice_numbering()
        viewer.go_to_slice(numbering.index(1))  # the slice the person sees as "1"
        QtWidgets.QApplication.processEvents()
        z, y, x = viewer.crosshair_position
        status = viewer.status_text(z, y, x)
        shown.append((axial.index_label.text(), status.split(" | ")[0], axial.image_item.image.copy()))
        axial.slider.setValue(axial.slider.minimum() if not numbering.reversed else axial.slider.maximum())
        assert axial.slice_index == numbering.index(1)  # slice 1 sits at the slider's left end in both
        ARTIFACTS.mkdir(exist_ok=True)
        name = "nifti" if volume is nifti else "dicom"
        assert axial.grab().save(str(ARTIFACTS / f"slice_numbering_{name}.png"))
    (label_a, status_a, image_a), (label_b, status_b, image_b) = shown
    position = nifti.slice_numbering().position_text(nifti.slice_numbering().index(1))
    assert label_a == label_b == f"1 / 6 · {position}"
    assert status_a == status_b == f"slice 1 / 6 ({position})"
    np.testing.assert_array_equal(image_a, image_b)  # the same pixels on the screen


def test_the_help_states_the_convention(qtbot):
    from sd_fsmis.core.slice_numbering import CONVENTION
    from sd_fsmis.ui.dialogs.help import HelpDialog

    dialog = HelpDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    assert "axial slice 1 is the most inferior" in CONVENTION
    assert CONVENTION in dialog.numbering_label.text() and dialog.numbering_label.isVisible()
    ARTIFACTS.mkdir(exist_ok=True)
    assert dialog.grab().save(str(ARTIFACTS / "help_slice_numbers.png"))
