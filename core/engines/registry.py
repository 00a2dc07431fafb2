"""Which segmentation engines exist, and loading one by name: the built-in engines and the stored models.

The built-in engines are always available and need no model: ``propagation`` (the default until a model is
installed: painted slices followed through the volume, fitted to the image, stopped where the structure
ends) and ``classical`` (slice-to-slice registration, the older baseline). Everything else is an SD-FSMIS
model, loaded through :mod:`sd_fsmis.core.model` only when asked for, so that choosing a built-in engine
never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sd_fsmis.core.engines.base import SegmentationEngine
from sd_fsmis.core.engines.classical import ENGINE_NAME as CLASSICAL
from sd_fsmis.core.engines.propagation import ENGINE_LABEL as PROPAGATION_LABEL
from sd_fsmis.core.engines.propagation import ENGINE_NAME as PROPAGATION
from sd_fsmis.core.errors import ModelError

log = logging.getLogger(__name__)

CLASSICAL_LABEL = "Classical (registration) — no model needed"
#: the engines that need no model, in menu order: the first is the default without a model
BUILTIN_ENGINES = (PROPAGATION, CLASSICAL)


def is_builtin(name: str) -> bool:
    """True for an engine that needs no model ("propagation", "classical"): CPU only, no device choice."""
    return str(name).strip().lower() in BUILTIN_ENGINES


@dataclass(frozen=True)
class EngineChoice:
    """One engine a user can pick: ``name`` is what :func:`load_engine` takes, ``label`` what a menu shows."""

    name: str
    label: str
    #: "classical" (a built-in engine, no model) or "model"
    kind: str
    #: a model's folder, when it has one
    path: str | None = None


#: engines registered in this process (no folder): name -> (menu label, factory)
_registered: dict[str, tuple[str, Callable[[], SegmentationEngine]]] = {}
_registered_lock = threading.Lock()


def register_engine(name: str, factory: Callable[[], SegmentationEngine], label: str | None = None) -> None:
    """Offer an engine built in this process (the self-test's in-memory model, a plug-in) under ``name``.

    ``factory`` is called by :func:`load_engine` in the job's thread each time the engine is chosen.
    """
    key = str(name).strip()
    if not key or is_builtin(key):
        raise ValueError(f"cannot register an engine called {name!r}")
    with _registered_lock:
        _registered[key] = (label or key, factory)


def unregister_engine(name: str) -> None:
    """Forget an engine added with :func:`register_engine` (nothing happens for an unknown name)."""
    with _registered_lock:
        _registered.pop(str(name).strip(), None)


def available_engines() -> list[EngineChoice]:
    """The built-in engines first, then engines registered in this process, then the store's models."""
    choices = [
        EngineChoice(PROPAGATION, PROPAGATION_LABEL, "classical"),
        EngineChoice(CLASSICAL, CLASSICAL_LABEL, "classical"),
    ]
    with _registered_lock:
        choices.extend(EngineChoice(name, label, "model") for name, (label, _) in _registered.items())
    choices.extend(_stored_models())
    return choices


def default_engine_name() -> str:
    """The store's default model when there is one, else the built-in ``"propagation"`` engine.

    That is the model the user chose as the default (``sd-fsmis models default NAME``) while it is valid,
    and never a model merely because it is the newest (see ``sd_fsmis.core.model.store.resolve_model``).
    """
    store = _store()
    if store is not None:
        try:
            return store.resolve_model(None).name
        except ModelError:
            pass  # no model installed
        except Exception as exc:  # a broken store must not stop a segmentation
            log.warning("model store: no default model (%s)", exc)
    return PROPAGATION


def load_engine(
    name_or_dir: str, *, device: str = "auto", batch_size: int | None = None, precision: str | None = None
) -> SegmentationEngine:
    """The engine called ``name_or_dir``: ``"propagation"``, ``"classical"``, or a model's name in the store
    or its folder.

    ``precision``: "fp32", "bf16" or "fp16" for a model (None: bf16/fp16 on CUDA, fp32 elsewhere).

    Raises :class:`ModelError` when the model cannot be found or the model package is not installed.
    """
    if str(name_or_dir).strip().lower() == PROPAGATION:
        from sd_fsmis.core.engines.propagation import PropagationEngine

        return PropagationEngine()
    if str(name_or_dir).strip().lower() == CLASSICAL:
        from sd_fsmis.core.engines.classical import ClassicalEngine

        return ClassicalEngine()
    with _registered_lock:
        registered = _registered.get(str(name_or_dir).strip())
    if registered is not None:
        return registered[1]()
    text = str(name_or_dir)
    if any(sep in text for sep in ("/", "\\")) and not Path(text).expanduser().is_dir():
        # A folder that is not there: say so before importing torch (seconds) for nothing.
        raise ModelError(f"model folder not found: {text}")
    try:
        engine_module = importlib.import_module("sd_fsmis.core.model.engine")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("sd_fsmis"):
            raise ModelError(
                f"cannot load model {name_or_dir!r}: the SD-FSMIS model is not part of this installation "
                f"(use --model {PROPAGATION})"
            ) from None
        raise ModelError(f"cannot load model {name_or_dir!r}: {exc.name} is not installed") from None
    return engine_module.SDFSMISEngine.from_pretrained(
        name_or_dir, device=device, batch_size=batch_size, dtype=precision
    )


def _stored_models() -> list[EngineChoice]:
    """The valid models of ``sd_fsmis.core.model.store``; nothing where the model package is missing."""
    store = _store()
    if store is None:
        return []
    try:
        models = store.list_models()
    except Exception as exc:  # a broken store must not hide the built-in engines
        log.warning("model store not readable: %s", exc)
        return []
    out = []
    for info in models:
        if not getattr(info, "valid", True):
            continue
        detail = getattr(info, "description", "") or getattr(info, "kind", "")
        title = f"{info.name} (default)" if getattr(info, "is_default", False) else str(info.name)
        note = getattr(info, "quality_note", "")
        if note:  # an untrained or poorly validated model says so wherever it is offered
            title = f"{title} [{note}]"
        label = f"{title} — {detail}" if detail else title
        out.append(EngineChoice(str(info.name), label, "model", str(info.path)))
    return out


def _store():
    """The model store module, or None where the model package is not installed."""
    try:
        if importlib.util.find_spec("sd_fsmis.core.model.store") is None:
            return None
        return importlib.import_module("sd_fsmis.core.model.store")
    except ImportError as exc:
        log.warning("model store not available: %s", exc)
        return None
