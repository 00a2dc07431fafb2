"""Run records: one per segmentation, so that runs (1-shot vs 3-shot, two models...) can be compared.

A :class:`Run` says which engine/model segmented which study with which support slices and settings, on
which device, when, how long it took, which layer holds the result and its Dice against a reference.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone

from sd_fsmis.core.session.events import Events
from sd_fsmis.core.session.layers import new_id

RUN_STATUSES = ("running", "done", "cancelled", "failed")


def now_iso() -> str:
    """The current time, ISO 8601 with the local UTC offset (seconds)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class Run:
    """One segmentation run (immutable; :class:`RunList` replaces it when it changes)."""

    engine: str
    query_study_id: str
    label_name: str = ""
    model: str = ""  # model name and version, where the engine has one
    k: int = 0
    #: the support entries used: ``{"study_id", "layer_id", "slice_index", "label_value", "label_name"}``
    supports: tuple[dict, ...] = ()
    settings: dict = field(default_factory=dict)
    device: str = ""
    started_at: str = field(default_factory=now_iso)
    duration_s: float | None = None
    status: str = "running"
    message: str = ""
    result_layer_id: str | None = None
    result_layer_name: str = ""
    reference_layer_id: str | None = None
    dice: float | None = None
    id: str = field(default_factory=new_id)

    def __post_init__(self) -> None:
        if self.status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["supports"] = [dict(s) for s in self.supports]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Run:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["supports"] = tuple(dict(s) for s in kwargs.get("supports", ()))
        kwargs["settings"] = dict(kwargs.get("settings") or {})
        return cls(**kwargs)

    @property
    def awaits_its_study(self) -> bool:
        """A finished run of a study segmented from its file (``Session.record_file_run``) whose study is
        not open here yet: its mask can be opened on it."""
        return not self.query_study_id and self.status == "done" and bool(self.settings.get("mask"))


class RunList:
    """The session's runs, oldest first.

    Events: ``added(run)``, ``changed(run)``, ``removed(run)``, ``any``.
    """

    def __init__(self) -> None:
        self._runs: list[Run] = []
        self._clock: dict[str, float] = {}
        self.events = Events("added", "changed", "removed")

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs))

    def __getitem__(self, index: int) -> Run:
        return self._runs[index]

    def get(self, run_id: str) -> Run:
        for run in self._runs:
            if run.id == run_id:
                return run
        raise KeyError(f"no run {run_id!r}")

    def add(self, run: Run) -> Run:
        if any(r.id == run.id for r in self._runs):
            raise ValueError(f"a run with id {run.id} is already recorded")
        self._runs.append(run)
        if run.status == "running":
            self._clock[run.id] = time.monotonic()
        self.events.added.emit(run)
        return run

    def start(self, **fields_: object) -> Run:
        """Record a run that starts now (status "running"); :meth:`finish` stamps its duration."""
        return self.add(Run(**fields_))  # type: ignore[arg-type]

    def update(self, run_id: str, **changes: object) -> Run:
        """Replace fields of a run (e.g. its Dice once a reference is set)."""
        old = self.get(run_id)
        new = replace(old, **changes)  # type: ignore[arg-type]
        self._runs[self._runs.index(old)] = new
        self.events.changed.emit(new)
        return new

    def finish(self, run_id: str, *, status: str = "done", **changes: object) -> Run:
        """Mark a run done (or cancelled/failed) and stamp its duration since :meth:`start`."""
        started = self._clock.pop(run_id, None)
        if started is not None and "duration_s" not in changes:
            changes["duration_s"] = round(time.monotonic() - started, 3)
        return self.update(run_id, status=status, **changes)

    def remove(self, run_id: str) -> None:
        run = self.get(run_id)
        self._runs.remove(run)
        self._clock.pop(run_id, None)
        self.events.removed.emit(run)

    def to_list(self) -> list[dict]:
        return [r.to_dict() for r in self._runs]
