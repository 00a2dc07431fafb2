"""Signals: connect, emit on the calling thread, disconnect, weak bound methods, blocking, groups."""

from __future__ import annotations

import gc

import pytest

from sd_fsmis.core.session.events import Events, Signal


def test_emit_calls_receivers_in_order_with_arguments():
    signal = Signal("changed")
    calls = []
    signal.connect(lambda *a: calls.append(("first", a)))
    signal.connect(lambda *a: calls.append(("second", a)))
    signal.emit(1, "x")
    assert calls == [("first", (1, "x")), ("second", (1, "x"))]


def test_connect_twice_is_once_and_disconnect_stops_calls():
    signal = Signal()
    calls = []

    def receiver(value):
        calls.append(value)

    assert signal.connect(receiver) is receiver
    signal.connect(receiver)
    signal.emit(1)
    signal.disconnect(receiver)
    signal.emit(2)
    assert calls == [1]
    signal.disconnect(receiver)  # unknown: ignored
    assert len(signal) == 0


def test_bound_methods_are_weak():
    class Widget:
        def __init__(self):
            self.seen = []

        def on_change(self, value):
            self.seen.append(value)

    signal = Signal()
    widget = Widget()
    signal.connect(widget.on_change)
    signal.emit(1)
    assert widget.seen == [1]
    del widget
    gc.collect()
    assert len(signal) == 0
    signal.emit(2)  # no error: the dead receiver is skipped


def test_blocked_and_receiver_errors():
    signal = Signal()
    calls = []
    signal.connect(lambda v: calls.append(v))
    with signal.blocked():
        signal.emit("hidden")

    def broken(_):
        raise RuntimeError("boom")

    signal.connect(broken)
    signal.connect(lambda v: calls.append(("after", v)))
    with pytest.raises(RuntimeError, match="boom"):
        signal.emit("shown")
    assert calls == ["shown", ("after", "shown")]  # the receivers after the broken one still ran


def test_event_group_any_and_receiver_disconnecting_itself():
    events = Events("data", "name")
    seen = []
    events.any.connect(lambda *a: seen.append(a))

    def once(value):
        seen.append(("once", value))
        events.data.disconnect(once)

    events.data.connect(once)
    events.data.emit(5)
    events.data.emit(6)
    events.name.emit("liver")
    assert seen == [("once", 5), ("data", 5), ("data", 6), ("name", "liver")]
    with events.blocked():
        events.name.emit("spleen")
    assert len(seen) == 4
    with pytest.raises(AttributeError, match="no event 'opacity'"):
        events.opacity  # noqa: B018
    with pytest.raises(ValueError):
        Events("any")
