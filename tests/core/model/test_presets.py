"""Random-weight presets: where they are built."""

from __future__ import annotations

import torch


def test_built_on_the_cpu_explicitly_equals_the_default():
    from sd_fsmis.core.model.presets import build_random_pipeline

    default = build_random_pipeline("tiny", seed=3)
    explicit = build_random_pipeline("tiny", seed=3, device="cpu")
    for name, module in default.modules.items():
        for a, b in zip(module.state_dict().values(), explicit.modules[name].state_dict().values()):
            assert a.device.type == "cpu" and torch.equal(a, b), name
