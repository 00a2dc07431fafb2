"""The self-test's in-memory engine: offered and loaded by name like a stored model, then forgotten."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_fsmis.core.engines.registry import available_engines, load_engine
from sd_fsmis.core.errors import ModelError
from sd_fsmis.core.model.engine import SDFSMISEngine
from sd_fsmis.core.model.in_memory import SELF_TEST_ENGINE, register_tiny_engine, unregister_tiny_engine


def test_registered_tiny_engine_is_offered_and_loaded_by_name():
    name = register_tiny_engine(seed=3, batch_size=2)
    try:
        assert name == SELF_TEST_ENGINE
        choice = next(c for c in available_engines() if c.name == name)
        assert choice.kind == "model" and "random weights" in choice.label and choice.path is None
        engine = load_engine(name)
        assert isinstance(engine, SDFSMISEngine) and engine.name == name and engine.batch_size == 2
        assert engine.device.type == "cpu" and engine.dtype == torch.float32
        again = load_engine(name)  # built afresh each time, from the same seed
        first = next(engine.pipeline.unet.parameters())
        assert again is not engine and torch.equal(first, next(again.pipeline.unet.parameters()))
        assert not np.isnan(first.detach().numpy()).any()
    finally:
        unregister_tiny_engine(name)
    assert name not in {c.name for c in available_engines()}
    with pytest.raises(ModelError):
        load_engine(name)
