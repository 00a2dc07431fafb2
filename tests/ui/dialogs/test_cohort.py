"""The cohort dialog: "Segment all open studies" (results as layers and runs) and "Segment a folder of
studies" (masks and run record on disk), per-study states, Cancel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.io.loader import load_volume
from sd_fsmis.core.session.state import Session
from sd_fsmis.core.session.study import Study
from sd_fsmis.core.volume import Volume, VolumeMetadata
from sd_fsmis.ui.dialogs.cohort import FOLDER, OPEN, CohortChoice, CohortDialog

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _phantom_session(liver_phantom, count: int = 3) -> Session:
    """``count`` open studies of the phantom; the first has the liver painted on slice 8 as support."""
    image, labels, geometry = liver_phantom
    session = Session()
    for k in range(count):
        volume = Volume(image.copy(), geometry, VolumeMetadata(source_path=f"phantom{k}.nii.gz"))
        session.add_study(Study(volume, path=f"phantom{k}.nii.gz", name=f"Phantom {k + 1}"))
    first = session.studies[0]
    layer = first.add_layer("liver", labels={1: "liver"})
    layer.set_region((slice(8, 9), slice(None), slice(None)), (labels[8:9] == 1).astype(np.uint8))
    session.add_support(first, layer, 8)
    return session


def _dialog(qtbot, session: Session, mode: str) -> CohortDialog:
    dialog = CohortDialog(session, CohortChoice(engine="propagation", label_name="liver"), mode)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def _screenshot(widget, name: str) -> None:
    from PySide6 import QtWidgets

    QtWidgets.QApplication.processEvents()
    ARTIFACTS.mkdir(exist_ok=True)
    assert widget.grab().save(str(ARTIFACTS / name), "PNG")


def test_all_open_studies_become_layers_and_runs(qtbot, liver_phantom):
    session = _phantom_session(liver_phantom)
    _, labels, _ = liver_phantom
    dialog = _dialog(qtbot, session, OPEN)
    assert [r[:2] for r in dialog.row_texts()] == [[f"Phantom {k}", "waiting"] for k in (1, 2, 3)]
    assert dialog.start()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=120_000)
    assert [r[1] for r in dialog.row_texts()] == ["done"] * 3
    assert "3 segmented, 0 failed" in dialog.status_label.text()
    runs = list(session.runs)
    assert len(runs) == 3 and all(r.status == "done" for r in runs)
    assert {r.query_study_id for r in runs} == {s.id for s in session.studies}
    for study in session.studies:
        (prediction,) = [layer for layer in study.layers if layer.kind == "prediction"]
        truth = labels == 1
        mask = prediction.array > 0
        assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.8
    _screenshot(dialog, "cohort-open-studies.png")


def test_cancel_leaves_the_studies_unchanged(qtbot, liver_phantom):
    session = _phantom_session(liver_phantom, count=2)
    dialog = _dialog(qtbot, session, OPEN)
    assert dialog.start()
    dialog.cancel()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=60_000)
    runs = list(session.runs)
    assert len(runs) == 2 and all(r.status in ("done", "cancelled") for r in runs)
    for run in runs:
        study = session.study(run.query_study_id)
        has_layer = any(layer.kind == "prediction" for layer in study.layers)
        assert has_layer == (run.status == "done")


def test_a_folder_of_studies_writes_masks_and_records_a_bad_one(qtbot, tmp_path, chaos_dir):
    volume = load_volume(chaos_dir / "images/image_5.nii.gz")
    session = Session()
    study = session.add_study(Study(volume, path=str(chaos_dir / "images/image_5.nii.gz"), name="image 5"))
    truth = LabelMap.load(chaos_dir / "labels/label_5.nii.gz", like=volume.geometry).binary(1)
    layer = study.add_layer("liver", labels={1: "liver"})
    z = int(np.flatnonzero(truth.any(axis=(1, 2))).mean())
    layer.set_region((slice(z, z + 1), slice(None), slice(None)), truth[z : z + 1].astype(np.uint8))
    session.add_support(study, layer, z)
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "image_2.nii.gz").symlink_to(chaos_dir / "images/image_2.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"damaged" * 50)
    dialog = _dialog(qtbot, session, FOLDER)
    assert not dialog.start_button.isEnabled()
    dialog.queries_edit.setText(str(folder))
    dialog.out_edit.setText(str(tmp_path / "masks"))
    assert dialog.start()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=180_000)
    assert [r[:2] for r in dialog.row_texts()] == [["broken", "failed"], ["image_2", "done"]]
    assert "not a NIfTI file" in dialog.row_texts()[0][4]
    assert (tmp_path / "masks/image_2.nii.gz").is_file()
    lines = (tmp_path / "masks/run-record.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["study"] for line in lines) == ["broken", "image_2"]
    assert "1 segmented, 1 failed" in dialog.status_label.text()
    _screenshot(dialog, "cohort-folder.png")
    # the results are runs of the runs table, under "All studies"; a double-click asks to open one
    from sd_fsmis.ui.panels.runs_table import STUDY_COLUMN, RunsTable

    runs = {r.settings["study_name"]: r for r in session.runs}
    assert runs["image_2"].status == "done" and runs["broken"].status == "failed"
    assert runs["image_2"].settings["mask"] == str(tmp_path / "masks/image_2.nii.gz")
    assert runs["image_2"].label_name == "liver" and runs["image_2"].k == 1
    table = RunsTable(session)
    qtbot.addWidget(table)
    assert table.table.rowCount() == 0  # the active study's runs only
    table.all_studies_check.setChecked(True)
    names = sorted(table.row_values(r)[STUDY_COLUMN] for r in range(table.table.rowCount()))
    assert names == ["broken (not open)", "image_2 (not open)"]
    asked = []
    table.openRequested.connect(asked.append)
    for row in range(table.table.rowCount()):
        table.table.itemDoubleClicked.emit(table.table.item(row, 0))
    assert asked == [runs["image_2"].id]  # the failed one has no mask to open
    assert dialog.start()  # again: image_2 was done with the same settings
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=180_000)
    assert dialog.row_texts()[1][1] == "skipped (done before)"
