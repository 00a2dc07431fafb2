"""The ``sd-fsmis`` entry point: sub-commands, exit codes, one-line errors, paths and logging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sd_fsmis import __version__, paths
from sd_fsmis.cli import COMMAND_MODULES, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_every_command_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMAND_MODULES:
        assert name in out


def test_unknown_command_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "sd-fsmis: error:" in err
    assert "Traceback" not in err


def test_internal_error_prints_one_line_and_logs_the_traceback(monkeypatch, capsys, isolated_app_home):
    from sd_fsmis import cli
    from sd_fsmis.logs import setup_logging

    setup_logging()

    def boom(args):
        raise ZeroDivisionError("division by zero")

    assert cli._dispatch(boom, None) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sd-fsmis: internal error: ZeroDivisionError")
    log_text = (Path(isolated_app_home) / "logs" / "sd-fsmis.log").read_text()
    assert "Traceback" in log_text and "ZeroDivisionError" in log_text


def test_user_error_exit_code_two(capsys):
    from sd_fsmis import cli
    from sd_fsmis.core.errors import StudyReadError

    def bad(args):
        raise StudyReadError("x.nii.gz: the file is empty\n(0 bytes)")

    assert cli._dispatch(bad, None) == 2
    err = capsys.readouterr().err
    assert err == "sd-fsmis: error: x.nii.gz: the file is empty (0 bytes)\n"


def test_cancel_exit_code(capsys):
    from sd_fsmis import cli
    from sd_fsmis.core.errors import JobCancelled

    def cancelled(args):
        raise JobCancelled()

    assert cli._dispatch(cancelled, None) == 130


def test_paths_follow_sd_fsmis_home(isolated_app_home):
    home = Path(isolated_app_home)
    assert paths.data_dir() == home / "data"
    assert paths.models_dir() == home / "data" / "models"
    assert paths.log_dir() == home / "logs"
    assert paths.cache_dir() == home / "cache"


def test_hf_home_is_set_before_hugging_face_is_imported(tmp_path):
    """A fresh interpreter: importing sd_fsmis points HF_HOME into the app's data dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME",)}
    env["SD_FSMIS_HOME"] = str(tmp_path)
    code = (
        "import sys, os, sd_fsmis; "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules; "
        "import huggingface_hub.constants as c; print(os.environ['HF_HOME']); print(c.HF_HOME)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    assert lines[0] == lines[1] == str(tmp_path / "data" / "huggingface")


def test_info_command_does_not_import_torch(tmp_path):
    """Light commands start fast: building the parser must not import torch."""
    env = dict(os.environ, SD_FSMIS_HOME=str(tmp_path))
    code = "import sys; from sd_fsmis.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
