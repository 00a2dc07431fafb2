"""On a CUDA GPU: bf16 (the default there) agrees with fp32; the engine sizes its batch to free memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def test_bf16_on_cuda_matches_fp32(phantom, make_request):
    from sd_fsmis.core.model.engine import SDFSMISEngine
    from sd_fsmis.core.model.presets import build_random_pipeline

    volume, mask = phantom
    request = make_request(volume, mask, shots=(2, 3))
    fp32 = SDFSMISEngine(build_random_pipeline("tiny").to("cuda", torch.float32))
    bf16 = SDFSMISEngine(build_random_pipeline("tiny").to("cuda", torch.bfloat16))
    a, b = fp32.segment(request), bf16.segment(request)
    assert b.info["dtype"] == "bfloat16"
    assert np.abs(a.soft - b.soft).max() < 0.05
    assert _dice(a.mask, b.mask) > 0.9
    assert fp32.pipeline.bank.is_empty and bf16.pipeline.bank.is_empty
    assert 1 <= bf16.auto_batch_size(1000) <= 64


def test_cuda_batch_equals_single_slices_in_fp32(phantom):
    from sd_fsmis.core.model.presets import build_random_pipeline

    volume, mask = phantom
    pipe = build_random_pipeline("tiny").to("cuda", torch.float32)
    batched = pipe.segment_slices([volume[2]], [mask], volume)
    single = np.concatenate([pipe.segment_slices([volume[2]], [mask], volume[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)


def test_random_pipeline_built_on_cuda_runs_there(phantom):
    from sd_fsmis.core.model.presets import build_random_pipeline

    volume, mask = phantom
    pipe = build_random_pipeline("tiny", device="cuda")
    assert {p.device.type for m in pipe.modules.values() for p in m.parameters()} == {"cuda"}
    again = build_random_pipeline("tiny", device="cuda")  # the same seed on the same device: the same weights
    for a, b in zip(pipe.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)
    soft = pipe.to("cuda", torch.bfloat16).segment_slices([volume[2]], [mask], volume[:3])
    assert soft.shape == volume[:3].shape and np.isfinite(soft).all()
