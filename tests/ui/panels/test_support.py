"""SupportPanel: add the current slice, reasons when it cannot, thumbnails, K, remove, clear, double-click."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt

from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.volume import Volume, VolumeMetadata
from sd_fsmis.ui.panels.support import ICON_SIZE, SupportPanel, thumbnail_rgb

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def scene(qtbot, liver_phantom):
    """A session with two studies (the phantom and a copy), a painted "organs" layer on each, the panel."""
    image, labels, geometry = liver_phantom
    session = Session()
    studies = []
    for name in ("Demo abdomen", "Second patient"):
        volume = Volume(image.copy(), geometry, VolumeMetadata(source_path=f"{name}.nii.gz", modality="MR"))
        study = session.add_study(Study(volume, path=f"{name}.nii.gz", name=name))
        layer = study.add_layer("organs", LabelMap(labels.copy(), geometry, {1: "liver", 4: "spleen"}))
        layer.set_region((slice(0, 2), slice(None), slice(None)), 0)  # slices 1-2 unpainted
        studies.append(study)
    panel = SupportPanel(session)
    qtbot.addWidget(panel)
    panel.resize(320, 480)
    panel.show()
    qtbot.waitExposed(panel)
    return session, studies, panel


def screenshot(widget, name: str) -> Path:
    QtWidgets.QApplication.processEvents()
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert widget.grab().save(str(path), "PNG")
    return path


def test_thumbnail_rgb_tints_the_mask_and_draws_its_outline():
    image = np.full((8, 8), 100, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    rgb = thumbnail_rgb(image, mask, (255, 0, 0))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (100, 100, 100)  # outside: grey
    assert tuple(rgb[2, 2]) == (255, 0, 0)  # the outline in full colour
    inside = rgb[3, 3]
    assert inside[0] > 100 > inside[1]  # inside: tinted


def test_add_slices_shows_k_and_thumbnails(qtbot, scene):
    session, (study, other), panel = scene
    layer = study.layer("organs")
    assert panel.k == 0 and panel.k_label.text() == "K = 0"
    assert panel.stack.currentWidget() is panel.empty_label
    assert not panel.add_button.isEnabled() and panel.add_button.toolTip() == "Open a study first"

    panel.set_context(study, layer, 0, 1)
    assert not panel.add_button.isEnabled()
    assert panel.add_button.toolTip() == "Paint liver on slice 1 first"
    panel.set_context(study, layer, 4, 1)
    assert panel.add_button.isEnabled()
    with qtbot.waitSignal(panel.supportAdded):
        panel.add_button.click()
    assert panel.k == 1 and panel.k_label.text() == "K = 1 (1-shot) · liver"
    assert len(session.support_set) == 1
    assert not panel.add_button.isEnabled()  # already a support
    assert "already a support example" in panel.add_button.toolTip()
    item = panel.list.item(0)
    assert item.text() == "liver, slice 5\nDemo abdomen"
    pixmap = item.icon().pixmap(ICON_SIZE, ICON_SIZE)
    assert not pixmap.isNull() and pixmap.width() == ICON_SIZE
    picture = pixmap.toImage()
    colours = {picture.pixelColor(x, y).name() for x in range(ICON_SIZE) for y in range(ICON_SIZE)}
    assert len(colours) > 20  # an image, with the liver's outline colour in it
    assert any(
        picture.pixelColor(x, y).red() > picture.pixelColor(x, y).green() + 60
        for x in range(64)
        for y in range(64)
    )

    # painting the slice the user is on enables the button (the panel follows the layer's edits)
    panel.set_context(study, layer, 1, 1)
    assert not panel.add_button.isEnabled()
    layer.paint_line(0, 1, [(60, 40), (70, 50)], radius=6, label=1)
    assert panel.add_button.isEnabled()
    panel.add_current_slice()
    panel.set_context(other, other.layer("organs"), 10, 1)  # another study's slice (cross-study support)
    panel.add_current_slice()
    panel.set_context(study, layer, 12, 4)
    panel.add_current_slice()
    assert panel.k == 4
    assert panel.k_label.text() == "K = 4 (4-shot) (liver 3, spleen 1)"
    assert panel.list.item(2).text() == "liver, slice 11\nSecond patient"
    assert panel.stack.currentWidget() is panel.list
    screenshot(panel, "support_panel.png")


def test_remove_clear_and_errors(qtbot, scene):
    session, (study, _other), panel = scene
    layer = study.layer("organs")
    for z in (3, 8, 13):
        panel.set_context(study, layer, z, 1)
        assert panel.add_current_slice() is not None
    assert panel.k == 3
    assert panel.list.item(2).isSelected()  # the example just added
    panel.list.setCurrentRow(1)  # a click: only that one
    assert panel.remove_button.isEnabled()
    panel.remove_button.click()
    assert panel.k == 2 and [e.slice_index for e in session.support_set] == [3, 13]
    assert panel.k_label.text() == "K = 2 (2-shot) · liver"
    # Delete key on the list removes the selection too
    panel.list.setFocus()
    panel.list.setCurrentRow(0)
    qtbot.keyClick(panel.list, Qt.Key.Key_Delete)
    assert panel.k == 1
    # a slice without the label: the core's message in a dialog, nothing added
    panel.set_context(study, layer, 0, 1)
    assert panel.add_current_slice() is None
    assert panel.last_error == "slice 1 holds no liver: paint it there first"
    boxes = [w for w in panel.findChildren(QtWidgets.QMessageBox) if w.isVisible()]
    assert boxes and boxes[-1].text() == panel.last_error
    boxes[-1].close()
    panel.clear_button.click()
    assert panel.k == 0 and len(session.support_set) == 0 and not panel.clear_button.isEnabled()
    # closing the study drops its entries and the context
    panel.set_context(study, layer, 8, 1)
    panel.add_current_slice()
    session.remove_study(study)
    assert panel.k == 0 and not panel.add_button.isEnabled()


def test_double_click_goes_to_the_support_slice(qtbot, scene):
    _session, (study, _other), panel = scene
    layer = study.layer("organs")
    panel.set_context(study, layer, 9, 1)
    panel.add_current_slice()
    QtWidgets.QApplication.processEvents()  # the list was hidden while empty: lay it out
    rect = panel.list.visualItemRect(panel.list.item(0))
    assert isinstance(rect, QtCore.QRect) and not rect.isEmpty()
    viewport = panel.list.viewport()
    with qtbot.waitSignal(panel.goToSupport) as blocker:
        # a real double-click is press, release, double-click, release (QTest's mouseDClick alone lacks the
        # first press, which item views need)
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=rect.center())
        qtbot.mouseDClick(viewport, Qt.MouseButton.LeftButton, pos=rect.center())
    assert blocker.args == [study.id, 9]
