"""Destinations: never an input (same path, link, hard link, a file of an input folder), checked before the
work (missing, read-only, full), a write failure in one line naming the user's path, no folder left behind."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import pytest

from sd_fsmis.core.errors import UserError
from sd_fsmis.core.io.atomic import atomic_path, atomic_write_text
from sd_fsmis.core.io.destinations import (
    Inputs,
    OutputError,
    check_destination,
    check_destination_folder,
)


@pytest.fixture
def study(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    image = folder / "ct.nii.gz"
    image.write_bytes(b"image")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    for i in range(3):
        (dicom / f"IM{i}").write_bytes(b"slice")
    return image, dicom


def test_an_input_is_refused_by_path_link_hard_link_and_folder_membership(tmp_path, study):
    image, dicom = study
    inputs = Inputs().add(image, "the query study").add(dicom, "the DICOM study")
    (tmp_path / "link.nii.gz").symlink_to(image)
    os.link(image, tmp_path / "hard.nii.gz")
    for target in (
        image,
        tmp_path / "study" / ".." / "study" / "ct.nii.gz",
        tmp_path / "link.nii.gz",
        tmp_path / "hard.nii.gz",
        dicom / "IM1",
        dicom,
    ):
        with pytest.raises(OutputError, match="refusing to write over an input") as exc:
            check_destination(target, inputs, option="--out")
        assert "\n" not in str(exc.value)
    assert inputs.owner(tmp_path / "mask.nii.gz") is None
    assert inputs.owner(dicom / "new_mask.nii.gz") is None  # a new file beside the slices overwrites nothing
    check_destination(tmp_path / "mask.nii.gz", inputs)


def test_a_mask_input_protects_its_label_table_too(tmp_path):
    mask = tmp_path / "support.nii.gz"
    mask.write_bytes(b"x")
    (tmp_path / "support.labels.json").write_text("{}")
    inputs = Inputs().add(mask, "the support mask")
    with pytest.raises(OutputError, match="label table of the support mask"):
        check_destination(tmp_path / "support.nii", inputs, also=[tmp_path / "support.labels.json"])


def test_missing_read_only_and_full_destinations_are_refused_before_the_work(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match="does not exist"):
        check_destination(tmp_path / "nowhere" / "mask.nii.gz", option="--out")
    with pytest.raises(OutputError, match="is a folder"):
        check_destination(tmp_path)
    real_access = os.access
    monkeypatch.setattr(  # tests run as root: the OS would let root write anyway
        os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path) else real_access(p, mode, **kw)
    )
    with pytest.raises(OutputError, match="not writable"):
        check_destination(tmp_path / "mask.nii.gz", option="--out")
    monkeypatch.setattr(os, "access", real_access)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(OutputError, match="not enough free space") as exc:
        check_destination(tmp_path / "mask.nii.gz", size_hint=50 * 2**20)
    assert isinstance(exc.value, UserError) and isinstance(exc.value, OSError)
    check_destination(tmp_path / "mask.nii.gz")  # no size given: nothing to compare


def test_a_read_only_file_system_is_found_by_a_probe(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match="read-only"):
        check_destination_folder(tmp_path / "predictions", option="--save-predictions")


def test_output_folder_may_be_new_but_its_parent_must_exist(tmp_path):
    check_destination_folder(tmp_path / "new")
    assert not (tmp_path / "new").exists()  # checked, not created
    with pytest.raises(OutputError, match="does not exist"):
        check_destination_folder(tmp_path / "a" / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_destination_folder(tmp_path / "file")


def test_a_failed_write_names_the_target_and_leaves_no_folder_it_created(tmp_path):
    target = tmp_path / "predictions" / "fold0" / "pred_1.nii.gz"
    with pytest.raises(OutputError) as exc, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    message = str(exc.value)
    assert message == f"{target}: cannot be written (no space left on the disk)"
    assert ".tmp" not in message
    assert list(tmp_path.iterdir()) == []  # neither predictions/ nor fold0/ is left behind
    atomic_write_text(tmp_path / "predictions" / "a.json", "{}")
    with pytest.raises(OutputError), atomic_path(tmp_path / "predictions" / "fold1" / "b.json"):
        raise OSError(errno.EIO, "Input/output error")
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["a.json"]
