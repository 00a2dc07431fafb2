"""An SD-FSMIS engine built in this process, never saved: the self-test's tiny random model.

:func:`register_tiny_engine` offers it through :mod:`sd_fsmis.core.engines.registry` under a name, like a
stored model: the Segment panel lists it and its worker loads it with ``load_engine(name)``. Importing this
module does not import torch; building the engine does (in the job's thread).
"""

from __future__ import annotations

from sd_fsmis.core.engines.registry import register_engine, unregister_engine

#: the name the self-test's model is offered under
SELF_TEST_ENGINE = "self-test tiny model (random weights, in memory)"


def build_tiny_engine(name: str = SELF_TEST_ENGINE, seed: int = 0, batch_size: int | None = None):
    """An :class:`~sd_fsmis.core.model.engine.SDFSMISEngine` of the ``tiny`` preset with seeded random
    weights, on the CPU in float32 (seconds to build, megabytes of memory)."""
    from sd_fsmis.core.model.engine import SDFSMISEngine
    from sd_fsmis.core.model.presets import build_random_pipeline

    return SDFSMISEngine(build_random_pipeline("tiny", seed=seed), name=name, batch_size=batch_size)


def register_tiny_engine(name: str = SELF_TEST_ENGINE, seed: int = 0, batch_size: int | None = None) -> str:
    """Offer a tiny random engine under ``name`` (built afresh each time it is chosen); returns the name.

    Undo with :func:`unregister_tiny_engine`.
    """
    register_engine(
        name,
        lambda: build_tiny_engine(name, seed=seed, batch_size=batch_size),
        label=f"{name} — tiny SD-FSMIS architecture, random weights",
    )
    return name


def unregister_tiny_engine(name: str = SELF_TEST_ENGINE) -> None:
    """Stop offering the engine registered by :func:`register_tiny_engine`."""
    unregister_engine(name)
