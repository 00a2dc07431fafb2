"""The synthetic abdominal MR phantom: identical on every machine, plausible anatomy, cached on disk."""

from __future__ import annotations

import numpy as np
import pytest

from sd_fsmis.core.io.demo import (
    DEMO_SHA256,
    LEFT_KIDNEY,
    LIVER,
    RIGHT_KIDNEY,
    SPLEEN,
    demo_study_paths,
    make_demo_phantom,
    open_demo,
    phantom_checksum,
)
from sd_fsmis.core.io.labelmap import LabelMap
from sd_fsmis.core.io.loader import load_volume
from sd_fsmis.core.session.state import Session


@pytest.fixture(scope="module")
def phantom():
    return make_demo_phantom()


def test_deterministic_checksum(phantom):
    volume, labels = phantom
    assert phantom_checksum(volume, labels) == DEMO_SHA256


def test_geometry_and_labels(phantom):
    volume, labels = phantom
    assert volume.shape == (48, 256, 256) and volume.array.dtype == np.int16
    assert volume.geometry.spacing == (1.5, 1.5, 6.0)
    assert volume.geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert volume.metadata.modality == "MR"
    assert {v: lb.name for v, lb in labels.labels.items()} == {
        1: "liver",
        2: "right kidney",
        3: "left kidney",
        4: "spleen",
    }
    assert labels.present_labels() == [1, 2, 3, 4]


def test_anatomy_is_plausible(phantom):
    volume, labels = phantom
    image = volume.array.astype(np.float64)
    counts = labels.voxel_counts()
    assert counts[LIVER] > 4 * counts[SPLEEN] > 0  # the liver is the large organ
    centroid = {v: np.argwhere(labels.array == v).mean(axis=0) for v in (1, 2, 3, 4)}  # (z, y, x)
    # LPS, identity direction: columns grow towards the patient's left, slices upwards
    assert centroid[LIVER][2] < 128 < centroid[SPLEEN][2]
    assert centroid[RIGHT_KIDNEY][2] < 128 < centroid[LEFT_KIDNEY][2]
    assert centroid[LIVER][0] > centroid[RIGHT_KIDNEY][0]  # the liver sits above the kidney
    for value in (1, 2, 3, 4):  # organs appear and disappear along the slices
        slices = labels.slices_with(value)
        assert slices[0] > 0 and slices[-1] < 47 and len(slices) >= 8
        areas = [(labels.array[z] == value).sum() for z in slices]
        assert max(areas) > 3 * min(areas)  # they grow and shrink smoothly, not as prisms
    mean = {v: image[labels.array == v].mean() for v in (1, 2, 3, 4)}
    assert mean[SPLEEN] > 1.4 * mean[LIVER] and mean[RIGHT_KIDNEY] > 1.3 * mean[LIVER]  # T2 contrast
    air = image[:, :10, :10]
    assert 5 < air.mean() < 60  # Rician noise floor, not zero
    assert image.max() < 2000


def test_demo_study_paths_writes_once_and_reuses(phantom):
    image_path, label_path = demo_study_paths()
    assert image_path.is_file() and label_path.is_file()
    stamp = (image_path.stat().st_mtime_ns, label_path.stat().st_mtime_ns)
    assert demo_study_paths() == (image_path, label_path)
    assert (image_path.stat().st_mtime_ns, label_path.stat().st_mtime_ns) == stamp
    volume = load_volume(image_path)
    labels = LabelMap.load(label_path, like=volume.geometry)
    assert phantom_checksum(volume, labels) == DEMO_SHA256
    assert (
        labels.labels[LIVER].name == "liver" and labels.labels[SPLEEN].colour == phantom[1].labels[4].colour
    )
    assert not [p for p in image_path.parent.iterdir() if p.name.startswith(".")]  # no temporary files
    # the GUI's --demo: the study with its labels as the reference
    session = Session()
    study = open_demo(session)
    assert session.reference is study.layer("demo labels") and session.reference.kind == "reference"
    assert study.volume.shape == (48, 256, 256)
