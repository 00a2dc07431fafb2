"""``sd-fsmis info PATH [--json]``: the table, the JSON list, and one line with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sd_fsmis.cli import main


def run_info(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["info", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_with_several_series_as_a_table(capsys, pydicom_file):
    folder = pydicom_file("DICOMDIR").parent / "98892001"
    code, out, err = run_info(capsys, folder)
    assert code == 0
    assert f"{folder}: 3 series" in out
    assert "SmartScore - Gated 0.5 sec" in out and "Scout [" in out
    assert "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6" in out
    assert "16x16x5" in out and "0.4883 x 0.4883 x 2.5" in out
    assert "LPS" in out
    assert "warning: series 1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.2 holds images of different" in out
    assert "Traceback" not in err


def test_json_lists_every_series_with_geometry(capsys, pydicom_file):
    dicomdir = pydicom_file("DICOMDIR")
    code, out, _ = run_info(capsys, dicomdir, "--json")
    assert code == 0
    series = json.loads(out)
    assert isinstance(series, list) and len(series) == 24
    smart = next(s for s in series if s["description"] == "SmartScore - Gated 0.5 sec")
    assert smart["size"] == [16, 16, 5] and smart["modality"] == "CT" and smart["format"] == "dicomdir"
    assert smart["spacing"] == pytest.approx([0.488281, 0.488281, 2.5])
    assert len(smart["direction"]) == 9 and len(smart["origin"]) == 3
    assert smart["warnings"] == [] and smart["n_files"] == 5


def test_single_files(capsys, pydicom_file, nibabel_file):
    code, out, _ = run_info(capsys, pydicom_file("CT_small.dcm"), "--json")
    assert code == 0
    (ct,) = json.loads(out)
    assert ct["size"] == [128, 128, 1] and ct["modality"] == "CT"

    code, out, _ = run_info(capsys, nibabel_file("example4d.nii.gz"))
    assert code == 0
    assert "128x96x24x2" in out and "4-D image with 2 volumes" in out

    code, out, _ = run_info(capsys, pydicom_file("SC_rgb_rle.dcm"))
    assert code == 0 and "colour image" in out


def test_oblique_series_shows_its_direction_cosines(capsys, pydicom_file):
    folder = pydicom_file("DICOMDIR").parent / "98892003" / "MR700"
    code, out, _ = run_info(capsys, folder)
    assert code == 0
    assert "oblique" in out and "direction cosines:" in out


def test_chaos_images_folder(capsys, chaos_dir):
    code, out, _ = run_info(capsys, chaos_dir / "images", "--json")
    assert code == 0
    series = json.loads(out)
    assert len(series) == len(list((chaos_dir / "images").glob("*.nii.gz")))
    assert all(s["format"] == "nifti" and len(s["size"]) == 3 for s in series)


def _random(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(3).bytes(3000))
    return path


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


BAD = {
    "zero bytes": lambda tmp, pd, nb: (tmp / "zero.dcm").write_bytes(b"") or tmp / "zero.dcm",
    "random .dcm": lambda tmp, pd, nb: _random(tmp / "r.dcm"),
    "random .nii.gz": lambda tmp, pd, nb: _random(tmp / "r.nii.gz"),
    "truncated .nii.gz": lambda tmp, pd, nb: _truncated(nb("example4d.nii.gz"), tmp / "t.nii.gz"),
    "empty folder": lambda tmp, pd, nb: tmp,
    "RT plan": lambda tmp, pd, nb: pd("rtplan.dcm"),
    "structured report": lambda tmp, pd, nb: pd("test-SR.dcm"),
    "truncated DICOM": lambda tmp, pd, nb: pd("MR_truncated.dcm"),
    "missing": lambda tmp, pd, nb: tmp / "nothing-here",
    "DICOMDIR without images": lambda tmp, pd, nb: pd("DICOMDIR").parent / "TINY_ALPHA" / "DICOMDIR",
    "folder of non-images": lambda tmp, pd, nb: shutil.copy(pd("rtplan.dcm"), tmp) and tmp,
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_code_2(case, capsys, tmp_path, pydicom_file, nibabel_file):
    path = BAD[case](tmp_path, pydicom_file, nibabel_file)
    code, out, err = run_info(capsys, path)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sd-fsmis: error: "), err
    assert "Traceback" not in err


def test_unreadable_path(capsys, tmp_path, pydicom_file, monkeypatch):
    """Tests run as root: a permission problem is simulated where the loader asks the OS."""
    ct = tmp_path / "ct.dcm"
    shutil.copy(pydicom_file("CT_small.dcm"), ct)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **kw: Path(p) != ct and real_access(p, m, **kw))
    code, _, err = run_info(capsys, ct)
    assert code == 2 and err == f"sd-fsmis: error: {ct}: permission denied\n"


def test_missing_path_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info"])
    assert exc.value.code == 2


def test_decoder_chatter_stays_off_stdout(pydicom_file, tmp_path):
    """GDCM's JPEG codec prints to the C stdout while it picks a 12-bit decoder: stdout must stay clean."""
    code = (
        "import sys; from sd_fsmis.core.io.loader import load_volume; "
        "v = load_volume(sys.argv[1]); print('shape', v.shape)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(pydicom_file("JPEG-lossy.dcm"))],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SD_FSMIS_HOME": str(tmp_path)},
    )
    assert result.stdout == "shape (1, 1024, 256)\n"
