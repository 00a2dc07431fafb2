"""Change signals for core objects (a minimal psygnal / napari-events): connect, disconnect, emit.

Core objects (a study, a label layer, the support set, the runs) announce their changes through
:class:`Signal` s; the Qt widgets connect to them and redraw. A signal calls its receivers synchronously on
the thread that emits (the GUI re-emits through a Qt signal when a core object changes on a worker thread).

Bound methods are held by weak reference, so a widget that is deleted stops receiving without having to
disconnect; plain functions and lambdas are held strongly (a weak reference to a lambda would die at once).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

Callback = Callable[..., Any]


class Signal:
    """One kind of change. ``connect(callback)``, ``emit(*args)`` calls every connected callback in order.

    A callback that raises does not stop the others: every receiver is called, then the first exception
    is re-raised (so tests see it; the core state was changed before the signal was emitted, consistently).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._receivers: list[Callable[[], Callback | None]] = []
        self._blocked = 0

    def connect(self, callback: Callback) -> Callback:
        """Call ``callback(*args)`` on every :meth:`emit`; returns it (usable as a decorator).

        Connecting the same callback twice has no effect.
        """
        if not callable(callback):
            raise TypeError(f"{callback!r} is not callable")
        if self.is_connected(callback):
            return callback
        if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
            ref: Callable[[], Callback | None] = weakref.WeakMethod(callback)  # type: ignore[arg-type]
        else:
            ref = _StrongRef(callback)
        self._receivers.append(ref)
        return callback

    def disconnect(self, callback: Callback | None = None) -> None:
        """Stop calling ``callback`` (every receiver when None). Unknown callbacks are ignored."""
        if callback is None:
            self._receivers.clear()
            return
        self._receivers = [r for r in self._receivers if (c := r()) is not None and c != callback]

    def is_connected(self, callback: Callback) -> bool:
        return any((c := r()) is not None and c == callback for r in self._receivers)

    def __len__(self) -> int:
        """Number of live receivers."""
        return sum(1 for r in self._receivers if r() is not None)

    def emit(self, *args: Any) -> None:
        """Call every live receiver with ``args``, in connection order, on the calling thread."""
        if self._blocked:
            return
        first_error: BaseException | None = None
        dead = False
        for ref in list(self._receivers):
            callback = ref()
            if callback is None:
                dead = True
                continue
            try:
                callback(*args)
            except Exception as exc:
                log.exception("receiver %r of signal %r failed", callback, self.name)
                if first_error is None:
                    first_error = exc
        if dead:
            self._receivers = [r for r in self._receivers if r() is not None]
        if first_error is not None:
            raise first_error

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """Within the block, :meth:`emit` does nothing (for bulk updates that announce once at the end)."""
        self._blocked += 1
        try:
            yield
        finally:
            self._blocked -= 1

    def __repr__(self) -> str:
        return f"Signal({self.name!r}, receivers={len(self)})"


class _StrongRef:
    """A callable "reference" that always returns its object (same interface as a weakref)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Callback) -> None:
        self.obj = obj

    def __call__(self) -> Callback:
        return self.obj


class Events:
    """A named group of signals, napari style: ``layer.events.data.connect(cb)``.

    ``Events("data", "opacity")`` has the attributes ``data`` and ``opacity``; :attr:`any` additionally
    fires after each of them with ``(name, *args)``, for observers that want every change (the autosave).
    """

    def __init__(self, *names: str) -> None:
        self._names = tuple(names)
        self.any = Signal("any")
        for name in names:
            if name == "any" or name.startswith("_"):
                raise ValueError(f"reserved event name {name!r}")
            setattr(self, name, _GroupSignal(name, self.any))

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, name: str) -> Signal:
        if name not in self._names:
            raise KeyError(name)
        return getattr(self, name)

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """Block every signal of the group (including :attr:`any`)."""
        with contextlib.ExitStack() as stack:
            for name in self._names:
                stack.enter_context(self[name].blocked())
            stack.enter_context(self.any.blocked())
            yield

    def __getattr__(self, name: str) -> Signal:  # only reached for unknown names: a clear message
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"no event {name!r}; this group has {', '.join(self._names) or 'none'}")


class _GroupSignal(Signal):
    """A signal of an :class:`Events` group: after its receivers, the group's ``any`` signal fires."""

    def __init__(self, name: str, any_signal: Signal) -> None:
        super().__init__(name)
        self._any = any_signal

    def emit(self, *args: Any) -> None:
        if self._blocked:
            return
        try:
            super().emit(*args)
        finally:
            self._any.emit(self.name, *args)
