"""Autosave and restore: a simulated crash right after an autosave loses nothing; damaged folders raise
a clear UserError; only changed layers are written again; the debounce and the exit marker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.session.autosave import (
    MANIFEST,
    AutosaveScheduler,
    SessionRestoreError,
    folder_state,
    restore,
    session_dir,
)
from sd_fsmis.core.session.runs import Run
from sd_fsmis.core.session.state import Session


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _write_volume(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100, 20, (6, 32, 40)).astype(np.float32))
    image.SetSpacing((1.2, 1.2, 5.0))
    image.SetOrigin((-20.0, 10.0, 3.0 * seed))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def painted_session(tmp_path):
    """Two studies opened from NIfTI, painted masks, supports from both, a finished run, a reference."""
    session = Session()
    a = session.open_study(_write_volume(tmp_path / "a.nii.gz", 1))
    b = session.open_study(_write_volume(tmp_path / "b.nii.gz", 2), activate=False)
    liver = a.add_layer("liver", labels={1: "liver", 2: "spleen"})
    liver.paint_line(0, 2, [(5, 5), (5, 25)], radius=3, label=1)
    liver.paint_line(0, 3, [(20, 30)], radius=4, label=2)
    liver.opacity = 0.7
    truth = np.zeros(a.volume.shape, np.uint8)
    truth[1:4, 2:9, 2:30] = 1
    reference = a.add_layer("truth", LabelMap.from_array(truth, a.geometry, {1: "liver"}), kind="reference")
    other = b.add_layer("atlas", labels={1: "liver"})
    other.paint_line(0, 4, [(10, 10)], radius=5)
    session.add_support(a, liver, 2)
    session.add_support(b, other, 4)
    session.set_reference(reference)
    session.runs.add(
        Run(
            engine="classical",
            query_study_id=a.id,
            label_name="liver",
            k=2,
            status="done",
            duration_s=1.5,
            result_layer_id=liver.id,
            result_layer_name=liver.name,
            settings={"assignment": "all"},
        )
    )
    session.set_active_study(b)
    return session


def _state(session: Session) -> dict:
    """What must survive a crash, comparable with ==."""
    return {
        "studies": [
            (
                s.id,
                s.path,
                s.name,
                s.active_layer.id if s.active_layer else None,
                [
                    (
                        layer.id,
                        layer.name,
                        layer.kind,
                        layer.opacity,
                        layer.visible,
                        layer.array.tobytes(),
                        layer.array.dtype.str,
                        {v: (lb.name, lb.colour) for v, lb in layer.labels.items()},
                    )
                    for layer in s.layers
                ],
            )
            for s in session.studies
        ],
        "active": session.active_study.id,
        "reference": session.reference.id if session.reference else None,
        "supports": [e.to_dict() for e in session.support_set],
        "runs": [r.to_dict() for r in session.runs],
    }


def test_crash_right_after_an_autosave_loses_nothing(painted_session, tmp_path):
    folder = tmp_path / "session"
    scheduler = AutosaveScheduler(painted_session, folder)
    scheduler.mark_running()
    report = scheduler.save_now()
    assert report.masks_written == 3 and (folder / MANIFEST).is_file()
    # the process dies here: no clean exit; the next start sees it
    state = folder_state(folder)
    assert state.has_session and not state.clean_exit and state.studies == 2
    restored = restore(folder)
    assert _state(restored) == _state(painted_session)
    assert restored.warnings == []
    entry = restored.support_set[0]
    assert entry.thumbnail.shape == (64, 64) and entry.thumbnail_mask.any()
    # the restored session keeps working: paint, undo, save again
    layer = restored.studies[0].layer("liver")
    assert layer.modified  # still unsaved to the user's own file
    layer.paint_line(0, 0, [(1, 1)], radius=0)
    layer.undo()
    AutosaveScheduler(restored, folder).save_now()
    assert _state(restore(folder)) == _state(painted_session)


def test_only_changed_layers_are_written_and_old_files_removed(painted_session, tmp_path):
    folder = tmp_path / "session"
    scheduler = AutosaveScheduler(painted_session, folder)
    scheduler.save_now()
    files_before = set((folder / "masks").iterdir())
    assert len([f for f in files_before if f.name.endswith(".nii.gz")]) == 3
    layer = painted_session.studies[0].layer("liver")
    layer.paint_line(0, 5, [(1, 1)], radius=1)
    report = scheduler.save_now()
    assert report.masks_written == 1
    files_after = set((folder / "masks").iterdir())
    assert len([f for f in files_after if f.name.endswith(".nii.gz")]) == 3
    assert len(files_after - files_before) == 2  # the new mask and its label table
    assert _state(restore(folder)) == _state(painted_session)
    assert scheduler.save_now().masks_written == 0  # nothing changed


def test_debounce_every_few_seconds_of_change(painted_session, tmp_path):
    clock = FakeClock()
    scheduler = AutosaveScheduler(painted_session, tmp_path / "s", interval_s=3, clock=clock)
    assert not scheduler.pending and scheduler.seconds_until_due() is None
    layer = painted_session.studies[0].layers[0]
    layer.paint_line(0, 1, [(3, 3)], radius=1)  # the session's modified event arms the scheduler
    assert scheduler.pending and not scheduler.due()
    clock.now += 2.0
    layer.paint_line(0, 1, [(4, 4)], radius=1)  # continued painting does not postpone the save
    assert scheduler.seconds_until_due() == pytest.approx(1.0)
    assert scheduler.maybe_save() is None
    clock.now += 1.0
    assert scheduler.due()
    assert scheduler.maybe_save() is not None
    assert not scheduler.pending and scheduler.maybe_save() is None
    layer.opacity = 0.1  # display properties are saved too
    assert scheduler.pending
    scheduler.close()


def test_clean_exit_marker(painted_session, tmp_path):
    folder = tmp_path / "session"
    scheduler = AutosaveScheduler(painted_session, folder)
    assert not folder_state(folder).has_session
    scheduler.mark_running()
    painted_session.studies[0].layers[0].opacity = 0.2
    scheduler.mark_clean_exit()  # saves what is pending, then removes the marker
    state = folder_state(folder)
    assert state.has_session and state.clean_exit and not state.offer_restore
    assert restore(folder).studies[0].layers[0].opacity == 0.2


def test_default_folder_is_in_the_data_dir(isolated_app_home):
    assert session_dir() == isolated_app_home / "data" / "session"
    assert not folder_state().has_session


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no saved session"),
        ("{not json", "damaged"),
        ('{"format": "something else"}', "not an sd-fsmis session"),
        ('{"format": "sd-fsmis session", "version": 99, "studies": []}', "newer version"),
        ('{"format": "sd-fsmis session", "version": 1}', "no study list"),
        ('{"format": "sd-fsmis session", "version": 1, "studies": [{"path": "x"}]}', "damaged"),
        ('{"format": "sd-fsmis session", "version": 1, "studies": [7]}', "damaged"),
    ],
)
def test_bad_folders_raise_a_user_error(tmp_path, content, message):
    folder = tmp_path / "session"
    folder.mkdir()
    if content is not None:
        (folder / MANIFEST).write_text(content)
    with pytest.raises(SessionRestoreError, match=message) as info:
        restore(folder)
    assert isinstance(info.value, UserError)
    folder_state(folder)  # never raises


def test_missing_pieces_are_skipped_with_warnings(painted_session, tmp_path):
    folder = tmp_path / "session"
    AutosaveScheduler(painted_session, folder).save_now()
    doc = json.loads((folder / MANIFEST).read_text())
    # a damaged mask file of study a, and study b's image gone
    victim = folder / doc["studies"][0]["layers"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:100])
    Path(doc["studies"][1]["path"]).unlink()
    restored = restore(folder)
    assert len(restored.studies) == 1 and len(restored.warnings) == 3
    assert [layer.name for layer in restored.studies[0].layers] == ["truth"]
    assert len(restored.support_set) == 0  # both supports lost their layer or study
    assert any("could not be re-opened" in w for w in restored.warnings)
    # nothing at all restorable: a clear error
    Path(doc["studies"][0]["path"]).unlink()
    with pytest.raises(SessionRestoreError, match="could not be restored"):
        restore(folder)


def test_interrupted_run_is_marked_failed(painted_session, tmp_path):
    folder = tmp_path / "session"
    run = painted_session.runs.start(engine="sd-fsmis", query_study_id=painted_session.studies[0].id)
    AutosaveScheduler(painted_session, folder).save_now()
    restored = restore(folder)
    assert restored.runs.get(run.id).status == "failed"
    assert "interrupted" in restored.runs.get(run.id).message
