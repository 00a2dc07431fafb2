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


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom_series(
    folder: Path,
    values,
    *,
    uid: str = "1.2.826.0.1.3680043.8.498.100",
    positions: list[float] | None = None,
    offsets: list[tuple[float, float, float]] | None = None,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: tuple[float, float, float] = (-20.0, -30.0, 10.0),
    spacing: tuple[float, float] = (0.8, 0.9),
    extra: dict | None = None,
) -> list[Path]:
    """Write ``values`` [z, y, x] as one CT DICOM file per slice (SimpleITK), slice ``i`` at
    ``origin + positions[i] * normal + offsets[i]`` (mm); ``extra``: ``{i: {"gggg|eeee": value}}``."""
    import numpy as np
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    positions = list(range(len(values))) if positions is None else positions
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for i, (plane, z) in enumerate(zip(values, positions)):
        image = sitk.GetImageFromArray(np.ascontiguousarray(plane))
        image.SetSpacing(spacing)
        position = np.asarray(origin) + z * normal + (np.asarray(offsets[i]) if offsets else 0.0)
        tags = {
            "0008|0016": CT_IMAGE_STORAGE,
            "0008|0018": f"{uid}.{i + 1}",
            "0008|0060": "CT",
            "0008|103e": "test series",
            "0010|0010": "Test^Patient",
            "0010|0020": "TEST-001",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": uid,
            "0020|0052": "1.2.826.0.1.3680043.8.498.2",
            "0020|0013": str(i + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation),
            "0028|1052": "0",
            "0028|1053": "1",
        }
        tags.update((extra or {}).get(i, {}))
        for key, value in tags.items():
            if value is None:
                continue
            image.SetMetaData(key, value)
        path = folder / f"slice_{i + 1:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def dicom_series_writer():
    """``dicom_series_writer(folder, values, positions=..., offsets=...)``: a CT series written here."""
    return write_dicom_series


#: 6 slices of CHAOS patient 1 through the liver, 64 x 64 in-plane
NUMBERING_CROP = (slice(12, 18), slice(96, 160), slice(80, 144))


@pytest.fixture(scope="session")
def chaos_as_nifti_and_dicom(chaos_image_path, tmp_path_factory):
    """CHAOS patient 1, cropped, written as a NIfTI (stored feet to head, as the CHAOS file) and as a DICOM
    series whose column direction points anterior (as the NIfTI's), so that its slice normal points to
    the feet and GDCM stacks it head first: the two files store the slices in opposite orders."""
    import numpy as np
    import SimpleITK as sitk

    from sd_fsmis.core.geometry import Geometry
    from sd_fsmis.core.io.loader import load_volume

    folder = tmp_path_factory.mktemp("numbering")
    image = sitk.ReadImage(str(chaos_image_path(1)))
    z, y, x = NUMBERING_CROP
    cropped = image[x.start : x.stop, y.start : y.stop, z.start : z.stop]  # SimpleITK slices keep positions
    cropped = sitk.Cast(sitk.Round(cropped), sitk.sitkInt16)
    nifti = folder / "chaos1.nii.gz"
    sitk.WriteImage(cropped, str(nifti))
    g = Geometry.from_image(cropped)
    d = np.asarray(g.direction).reshape(3, 3)
    row, col = d[:, 0], d[:, 1]
    normal = np.cross(row, col)  # (0, 0, -1): towards the feet
    step = d[:, 2] * g.spacing[2]  # slice k lies at origin + k * step (towards the head)
    positions = [float(np.dot(k * step, normal)) for k in range(g.size[2])]
    write_dicom_series(
        folder / "dicom",
        sitk.GetArrayFromImage(cropped),
        orientation=(*row, *col),
        origin=g.origin,
        spacing=g.spacing[:2],
        positions=positions,
    )
    return load_volume(nifti), load_volume(folder / "dicom")
