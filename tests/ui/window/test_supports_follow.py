"""Issue 14, item 2: the structure and the supports Segment uses follow what the person just painted.

The scenario of the issue: study A has three liver supports; the person opens study B, paints the right
kidney on a slice and presses S. The Structure selector must switch to the right kidney, K must count the
one support of study B, Segment must say what it will do before it runs, and supports of another study are
only used after a confirmation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.session.support_choice import choose_supports, preferred_structure
from sd_fsmis.core.volume import Volume, VolumeMetadata
from sd_fsmis.ui.window.main_window import MainWindow

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LIVER, RIGHT_KIDNEY = 1, 2


def two_studies(liver_phantom) -> tuple[Session, Study, Study]:
    """Study A (patient A) with liver painted on slices 3, 8, 12, all supports; study B (patient B), new."""
    image, labels, geometry = liver_phantom
    session = Session()
    studies = []
    for name, patient in (("Patient A", "A-001"), ("Patient B", "B-002")):
        meta = VolumeMetadata(source_path=f"{name}.nii.gz", modality="MR", patient_id=patient)
        studies.append(
            session.add_study(Study(Volume(image.copy(), geometry, meta), path=f"{name}.nii.gz", name=name))
        )
    a, b = studies
    layer = a.add_layer("mask", labels={LIVER: "liver", RIGHT_KIDNEY: "right kidney"})
    for z in (3, 8, 12):
        layer.set_region(
            (slice(z, z + 1), slice(None), slice(None)), (labels[z : z + 1] == LIVER).astype(np.uint8)
        )
        session.add_support(a, layer, z)
    return session, a, b


@pytest.fixture
def window_with(qtbot, make_window):
    windows = []

    def make(session: Session) -> MainWindow:
        window = make_window(session)
        qtbot.waitUntil(lambda: not window.segment_panel.models_loading(), timeout=60_000)
        windows.append(window)
        return window

    yield make
    for window in windows:
        assert window.segment_panel.shutdown(30_000)


def paint_right_kidney_and_press_s(window: MainWindow, qtbot, study: Study, liver_phantom) -> int:
    """On study B: a mask with the right kidney selected, painted on the slice shown; then the S key."""
    _image, labels, _geometry = liver_phantom
    z = int(np.argmax((labels == RIGHT_KIDNEY).reshape(labels.shape[0], -1).sum(axis=1)))
    window.session.set_active_study(study)
    layer = study.add_layer("mask", labels={LIVER: "liver", RIGHT_KIDNEY: "right kidney"})
    layer.selected_label = RIGHT_KIDNEY
    window.viewer.go_to_slice(z)
    layer.set_region(
        (slice(z, z + 1), slice(None), slice(None)),
        np.where(labels[z : z + 1] == RIGHT_KIDNEY, RIGHT_KIDNEY, 0).astype(np.uint8),
    )
    QtWidgets.QApplication.processEvents()
    view = window.viewer.views["axial"]
    view.graphics.setFocus()
    qtbot.keyClick(view.graphics, Qt.Key.Key_S)
    return z


def test_pressing_s_on_a_new_study_switches_the_structure_and_its_supports(window_with, qtbot, liver_phantom):
    session, _a, b = two_studies(liver_phantom)
    window = window_with(session)
    panel = window.segment_panel
    assert panel.label_name == "liver"  # study A's liver: the only structure so far
    z = paint_right_kidney_and_press_s(window, qtbot, b, liver_phantom)
    assert [(e.study_id, e.label_name, e.slice_index) for e in session.support_set][-1] == (
        b.id,
        "right kidney",
        z,
    )
    assert panel.label_name == "right kidney"
    assert panel.k_label.text() == "K = 1 (1-shot) from this study"
    assert panel.plan_text() == "right kidney, 1 support from this study, propagation"
    assert panel.plan_label.text() == "Will segment: right kidney, 1 support from this study, propagation"
    assert panel.plan_label.isVisible()
    assert panel.select_engine("classical")
    assert panel.plan_text() == "right kidney, 1 support from this study, classical"
    # Segment runs on study B with its own right kidney only: no confirmation needed, no liver used
    asked: list[str] = []
    panel._confirm_other_studies = lambda choice: asked.append(choice.label_name) or False
    with qtbot.waitSignal(panel.runFinished, timeout=120_000) as finished:
        assert panel.segment()
    run = finished.args[0]
    assert not asked
    assert run.status == "done" and run.label_name == "right kidney" and run.k == 1
    assert [s["study_id"] for s in run.supports] == [b.id]
    ARTIFACTS.mkdir(exist_ok=True)
    window.docks["Segment"].raise_()
    QtWidgets.QApplication.processEvents()
    assert panel.grab().save(str(ARTIFACTS / "segment_panel_follows_painting.png"))


def test_supports_of_another_patient_need_a_confirmation(window_with, qtbot, liver_phantom):
    session, a, b = two_studies(liver_phantom)
    window = window_with(session)
    panel = window.segment_panel
    session.set_active_study(b)  # study B has no support: study A's liver is what there is
    QtWidgets.QApplication.processEvents()
    assert panel.label_name == "liver"
    assert panel.k_label.text() == "K = 3 (3-shot) from another patient (Patient A)"
    assert panel.plan_text() == "liver, 3 supports from another patient (Patient A), propagation"
    asked = []
    panel._confirm_other_studies = lambda choice: asked.append(choice.where()) or False
    runs = len(session.runs)
    assert not panel.segment()  # the person said No: nothing runs
    assert asked == ["3 supports from another patient (Patient A)"] and len(session.runs) == runs
    # back on study A, its own liver: no question
    session.set_active_study(a)
    QtWidgets.QApplication.processEvents()
    assert panel.plan_text() == "liver, 3 supports from this study, propagation"


def test_other_studies_supports_are_offered_not_mixed_in(window_with, qtbot, liver_phantom):
    """Both studies have liver supports: this study's are used; the others only when ticked."""
    session, _a, b = two_studies(liver_phantom)
    _image, labels, _geometry = liver_phantom
    layer = b.add_layer("liver", labels={LIVER: "liver"})
    layer.set_region((slice(8, 9), slice(None), slice(None)), (labels[8:9] == LIVER).astype(np.uint8))
    session.add_support(b, layer, 8)
    window = window_with(session)
    panel = window.segment_panel
    session.set_active_study(b)
    QtWidgets.QApplication.processEvents()
    assert panel.plan_text() == "liver, 1 support from this study, propagation"
    assert panel.other_check.isVisible() and panel.other_check.text() == "Also use the 3 from other studies"
    panel.other_check.setChecked(True)
    assert panel.plan_text() == (
        "liver, 4 supports: 1 from this study, 3 from another patient (Patient A), propagation"
    )
    assert panel.support_choice().from_other_studies


def test_choice_rules_without_a_window(liver_phantom):
    session, a, b = two_studies(liver_phantom)
    entries = list(session.support_set)
    assert preferred_structure(entries, b.id, "liver") == "liver"  # nothing painted on B: keep
    _image, labels, _geometry = liver_phantom
    layer = b.add_layer("kidney", labels={RIGHT_KIDNEY: "Right kidney"})
    z = int(np.argmax((labels == RIGHT_KIDNEY).reshape(labels.shape[0], -1).sum(axis=1)))
    layer.set_region(
        (slice(z, z + 1), slice(None), slice(None)),
        np.where(labels[z : z + 1] == RIGHT_KIDNEY, RIGHT_KIDNEY, 0).astype(np.uint8),
    )
    session.add_support(b, layer, z)
    entries = list(session.support_set)
    assert preferred_structure(entries, b.id, "liver") == "Right kidney"  # B has its own: that one
    assert preferred_structure(entries, a.id, "Right kidney") == "liver"
    choice = choose_supports(entries, b.id, "right kidney", session.studies_by_id())
    assert choice.k == 1 and choice.here == 1 and not choice.from_other_studies
    liver_on_b = choose_supports(entries, b.id, "liver", session.studies_by_id())
    assert liver_on_b.k == 3 and liver_on_b.here == 0 and liver_on_b.other_patient
    assert all(e.label_name == "liver" for e in liver_on_b.entries)  # never another structure
