"""bench/gpu_check.py (the prepared GPU run): the package layout without installation, and the summary."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_layout_imports_the_package_without_installation(gpu_check, tmp_path):
    layout = gpu_check.build_package_layout(tmp_path / "pkg")
    code = (
        "import sys\n"
        # drop the editable install's finder: only the layout may provide sd_fsmis
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(layout)!r})\n"
        "import sd_fsmis, sd_fsmis.core.errors, sd_fsmis.commands, sd_fsmis.resources\n"
        "from importlib.resources import files\n"
        "print(sd_fsmis.__file__, sd_fsmis.core.errors.__file__)\n"
        "print(any(p.name.endswith('.svg') for p in files('sd_fsmis.resources').iterdir()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    package, errors, svg = out.stdout.split()
    assert package == str(layout / "sd_fsmis" / "__init__.py")
    assert errors == str(layout / "sd_fsmis" / "core" / "errors.py")
    assert svg == "True"


def test_last_json_finds_the_last_object_in_noisy_output(gpu_check):
    text = 'loading\n{"a": 1}\nmore\n{\n "b": {"c": 2}\n}\ntrailing line\n'
    assert gpu_check._last_json(text) == {"b": {"c": 2}}
    assert gpu_check._last_json("no json here") is None


def test_gpu_test_files_are_found(gpu_check):
    files = gpu_check.gpu_test_files()
    assert files and all("mark.gpu" in f.read_text() for f in files)


def _inference_row(method, dtype, shots, seconds, speedup=None, dice=None):
    return dict(
        method=method,
        dtype=dtype,
        shots=shots,
        slices=40,
        batch=40,
        seconds=seconds,
        cpu_seconds=seconds,
        peak_bytes=2**30,
        peak_kind="GPU max allocated",
        dice_vs_reference=dice,
        speedup=speedup,
        cpu_speedup=None,
    )


def test_summary_tables_and_targets(gpu_check):
    inference = {
        "args": {"arch": "real"},
        "device": "NVIDIA H200",
        "rows": [
            _inference_row("ours (engine)", "bfloat16", 1, 0.5, 10.0, 0.99),
            _inference_row("reference way (episode per slice)", "float32", 1, 5.0),
            _inference_row("ours (engine)", "bfloat16", 3, 1.5, 4.0, 0.98),
            _inference_row("reference way (episode per slice)", "float32", 3, 6.0),
        ],
    }
    training = {
        "arch": "real",
        "machine": "NVIDIA H200",
        "rows": [
            dict(
                variant=v,
                seconds_per_step=0.2,
                estimate_seconds_per_step=0.25,
                measured_peak_gib=gib,
                peak_reserved_gib=gib + 1,
                estimate_peak_gib=gib + 0.5,
                trainable_parameters=8.6e8,
                peak_kind="GPU max allocated",
            )
            for v, gib in (("fp32", 20.0), ("bf16", 15.0), ("bf16-ckpt", 11.0), ("lora", 9.0))
        ],
    }
    document = {
        "mode": "real size",
        "total_s": 400.0,
        "budget_s": 470,
        "info": {"gpu": "NVIDIA H200", "cuda": True, "python": "3.12.3", "versions": {"torch": "2.11"}},
        "results": [
            {
                "stage": "inference",
                "status": "ok",
                "seconds": 60,
                "summary": "s",
                "data": {"bench": inference},
            },
            {"stage": "training", "status": "ok", "seconds": 90, "summary": "s", "data": {"bench": training}},
            {"stage": "train", "status": "TIMEOUT", "seconds": 200, "summary": "t", "data": {}},
        ],
    }
    json.dumps(document)
    text = gpu_check.render_summary(document, small=False)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| inference K=1 bfloat16: < 1 s/volume | 0.500 s | PASS |" in text
    assert "| inference K=3 bfloat16: < 1 s/volume | 1.500 s | FAIL |" in text
    assert "| inference K=3 bfloat16: >= 5x the reference's way | 4.0x | FAIL |" in text
    assert "| training bf16-ckpt: <= 12 GiB | 11.00 GiB | PASS |" in text
    assert "| training lora: <= 8 GiB | 9.00 GiB | FAIL |" in text
    assert "fp32" in rows and "lora" in rows
    assert text.splitlines()[-1] == "stages not ok: train"
