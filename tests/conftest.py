"""Shared fixtures: real test data (CHAOS, pydicom's and nibabel's bundled files) and an isolated app home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHAOS_DIR = PROJECT_ROOT.parent / "shared" / "data" / "chaos-t2"
#: CHAOS ids, sorted as integers (fold k = sorted positions 4k..4k+4, fold 4: 16..19 and 0).
CHAOS_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)


@pytest.fixture(autouse=True)
def isolated_app_home(tmp_path_factory, monkeypatch):
    """Every test gets its own settings/models/cache/log folders: nothing touches the user's."""
    home = tmp_path_factory.mktemp("sd-fsmis-home")
    monkeypatch.setenv("SD_FSMIS_HOME", str(home))
    monkeypatch.delenv("SD_FSMIS_MODELS", raising=False)
    return home


@pytest.fixture(scope="session")
def chaos_dir() -> Path:
    """The CHAOS T2-SPIR folder in ../shared; tests that need it skip where it is absent."""
    if not (CHAOS_DIR / "images").is_dir():
        pytest.skip(f"CHAOS data not found at {CHAOS_DIR}")
    return CHAOS_DIR


def chaos_image(chaos: Path, case_id: int) -> Path:
    return chaos / "images" / f"image_{case_id}.nii.gz"


def chaos_label(chaos: Path, case_id: int) -> Path:
    return chaos / "labels" / f"label_{case_id}.nii.gz"


@pytest.fixture(scope="session")
def chaos_image_path(chaos_dir):
    """``chaos_image_path(5)``: the CHAOS image of patient 5 (read in place)."""
    return lambda case_id: chaos_image(chaos_dir, case_id)


@pytest.fixture(scope="session")
def chaos_label_path(chaos_dir):
    """``chaos_label_path(5)``: the CHAOS label map of patient 5 (read in place)."""
    return lambda case_id: chaos_label(chaos_dir, case_id)


@pytest.fixture(scope="session")
def pydicom_file():
    """``pydicom_file("CT_small.dcm")``: the path of one of pydicom's bundled test files."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> Path:
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"pydicom test file {name} not available")
        return Path(path)

    return get


@pytest.fixture(scope="session")
def nibabel_file():
    """``nibabel_file("anatomical.nii")``: the path of one of nibabel's bundled test files."""
    nibabel = pytest.importorskip("nibabel")
    data = Path(nibabel.__file__).parent / "tests" / "data"

    def get(name: str) -> Path:
        path = data / name
        if not path.exists():
            pytest.skip(f"nibabel test file {name} not available")
        return path

    return get


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread: the tiny models gain nothing from threads, and on a busy 2-core
    machine two threads are far slower than one. Training test modules use it for every test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
