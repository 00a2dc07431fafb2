"""Fixtures shared by the GUI tests: the demo study on disk and a small phantom in memory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sd_fsmis.core.geometry import Geometry

#: 16 slices through the liver of the demo phantom
LIVER_SLICES = (22, 38)


@pytest.fixture(scope="session")
def liver_phantom() -> tuple[np.ndarray, np.ndarray, Geometry]:
    """The demo phantom cropped to 16 slices through the liver, halved in-plane (16 x 128 x 128).

    Built once per run; the arrays are read-only so that no test can change what the next one sees.
    """
    from sd_fsmis.core.io.demo import make_demo_phantom

    z0, z1 = LIVER_SLICES
    volume, labels = make_demo_phantom()
    g = volume.geometry
    image = np.ascontiguousarray(volume.array[z0:z1, ::2, ::2])
    label_array = np.ascontiguousarray(labels.array[z0:z1, ::2, ::2])
    for array in (image, label_array):
        array.setflags(write=False)
    z, y, x = image.shape
    geometry = Geometry(
        size=(x, y, z),
        spacing=(g.spacing[0] * 2, g.spacing[1] * 2, g.spacing[2]),
        origin=(g.origin[0], g.origin[1], g.origin[2] + z0 * g.spacing[2]),
        direction=g.direction,
    )
    return image, label_array, geometry


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> Path:
    """The demo study generated once for the run, copied into each test's own cache by ``demo_cache``."""
    from sd_fsmis.core.io.demo import demo_folder, demo_study_paths

    home = tmp_path_factory.mktemp("demo-home")
    old = os.environ.get("SD_FSMIS_HOME")
    os.environ["SD_FSMIS_HOME"] = str(home)
    try:
        demo_study_paths()
        return demo_folder()
    finally:
        if old is None:
            del os.environ["SD_FSMIS_HOME"]
        else:
            os.environ["SD_FSMIS_HOME"] = old


@pytest.fixture
def demo_cache(demo_files) -> Path:
    """The demo image path in this test's (isolated) cache folder."""
    from sd_fsmis.core.io.demo import demo_folder, demo_image_path

    shutil.copytree(demo_files, demo_folder(), dirs_exist_ok=True)
    return demo_image_path()
