"""Atomic writes: the target is either the old file or the complete new one."""

from __future__ import annotations

import pytest

from sd_fsmis.core.io.atomic import atomic_path, atomic_write_text


def test_write_and_replace(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failure_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_text("old")
    with pytest.raises(OSError), atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz"), "writers choose the format by extension"
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


def test_new_files_get_the_umask_mode_not_0600(tmp_path):
    import os

    target = tmp_path / "a.txt"
    atomic_write_text(target, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
