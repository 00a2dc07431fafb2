"""Device selection, default precision and description (core/device.py)."""

from __future__ import annotations

import pytest
import torch

from sd_fsmis.core.device import default_dtype, describe_device, select_device
from sd_fsmis.core.errors import DeviceError


def test_cpu_and_auto():
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert describe_device(torch.device("cpu")) == "CPU"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_device_error_in_one_line():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="was asked for but") as info:
            select_device(name)
        assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_unknown_device_and_precision():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        select_device("tpu")
    with pytest.raises(DeviceError, match="unknown precision"):
        default_dtype(torch.device("cpu"), "fp8")
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU"):
        default_dtype(torch.device("cpu"), "fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults():
    device = select_device("cuda")
    assert device.type == "cuda"
    assert default_dtype(device) in (torch.bfloat16, torch.float16)
    assert "GiB" in describe_device(device)
