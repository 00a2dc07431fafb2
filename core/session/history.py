"""Undo/redo of edits to a 3-D label array, storing only the regions that changed.

An edit is recorded as one or more patches: a 3-D region ``(z, y, x)`` of the array with its values
before and after (zlib-compressed when larger than a few kilobytes; masks compress very well). A whole
brush stroke (press ... release) or any multi-part operation is grouped into one step
(:meth:`History.group`), so Ctrl+Z undoes it at once. A new edit clears the redo steps (Ctrl+Shift+Z).
The history keeps ``max_steps`` steps (100 by default) within ``max_bytes`` of memory; the oldest go first.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sd_fsmis.core.session.events import Events

Region = tuple[slice, slice, slice]

DEFAULT_MAX_STEPS = 100
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Patches up to this many bytes are kept raw (compressing them would cost more time than memory saved).
COMPRESS_ABOVE_BYTES = 4096


def normalize_region(region: Region, shape: tuple[int, ...]) -> Region:
    """``region`` with explicit integer bounds inside ``shape`` (step 1)."""
    if len(region) != 3:
        raise ValueError(f"a region has three slices (z, y, x), got {region!r}")
    out = []
    for s, n in zip(region, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError("regions must have step 1")
        out.append(slice(start, max(start, stop)))
    return tuple(out)  # type: ignore[return-value]


def union_regions(a: Region | None, b: Region | None) -> Region | None:
    """The smallest region holding both (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


class _Blob:
    """An array stored raw or zlib-compressed."""

    __slots__ = ("compressed", "data", "dtype", "shape")

    def __init__(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values)
        self.shape = values.shape
        self.dtype = values.dtype
        raw = values.tobytes()
        self.compressed = len(raw) > COMPRESS_ABOVE_BYTES
        self.data: bytes | np.ndarray = zlib.compress(raw, 1) if self.compressed else values.copy()

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.compressed else self.data.nbytes  # type: ignore[union-attr]

    def array(self) -> np.ndarray:
        if self.compressed:
            return np.frombuffer(zlib.decompress(self.data), dtype=self.dtype).reshape(self.shape)  # type: ignore[arg-type]
        return self.data  # type: ignore[return-value]


@dataclass
class Patch:
    """One changed region with its values before and after."""

    region: Region
    before: _Blob
    after: _Blob

    @property
    def nbytes(self) -> int:
        return self.before.nbytes + self.after.nbytes


@dataclass
class Step:
    """One undoable step: a name ("brush", "fill", ...) and its patches in the order they were made."""

    name: str
    patches: list[Patch] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.patches)

    @property
    def region(self) -> Region | None:
        """The union of the step's regions (what a view must redraw after undo/redo)."""
        out: Region | None = None
        for p in self.patches:
            out = union_regions(out, p.region)
        return out


class History:
    """Undo/redo stack for one 3-D label array.

    Record an edit with :meth:`record` (the region and its values *before*; the values after are read from
    the array), or group several edits into one step with ``with history.group("brush"): ...``.
    ``events.changed`` fires (no arguments) whenever what can be undone or redone changes.
    """

    def __init__(
        self, array: np.ndarray, *, max_steps: int = DEFAULT_MAX_STEPS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_steps < 1:
            raise ValueError("the history must keep at least one step")
        self.array = array
        self.max_steps = int(max_steps)
        self.max_bytes = int(max_bytes)
        self._undo: deque[Step] = deque()
        self._redo: list[Step] = []
        self._open: Step | None = None
        self._depth = 0
        self.events = Events("changed")

    # ------------------------------------------------------------------------------------------- queries
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_name(self) -> str | None:
        """Name of the step Ctrl+Z would undo ("brush", "fill", ...)."""
        return self._undo[-1].name if self._undo else None

    @property
    def redo_name(self) -> str | None:
        return self._redo[-1].name if self._redo else None

    @property
    def undo_count(self) -> int:
        return len(self._undo)

    @property
    def redo_count(self) -> int:
        return len(self._redo)

    @property
    def nbytes(self) -> int:
        """Memory held by the stored regions (compressed size where compressed)."""
        return sum(s.nbytes for s in self._undo) + sum(s.nbytes for s in self._redo)

    # ----------------------------------------------------------------------------------------- recording
    def record(self, region: Region, before: np.ndarray, name: str = "edit") -> bool:
        """Record that ``array[region]`` changed from ``before`` to its current values.

        Inside :meth:`group` the change joins the open step; otherwise it is a step of its own. A region
        whose values did not change is not recorded. Returns True when something was recorded.
        """
        region = normalize_region(region, self.array.shape)
        after = self.array[region]
        before = np.asarray(before)
        if before.shape != after.shape:
            raise ValueError(f"'before' has shape {before.shape}, the region {after.shape}")
        if np.array_equal(before, after):
            return False
        patch = Patch(region, _Blob(before), _Blob(after))
        if self._open is not None:
            self._open.patches.append(patch)
            return True
        self._push(Step(name, [patch]))
        return True

    @contextlib.contextmanager
    def group(self, name: str = "edit") -> Iterator[Step]:
        """Make every :meth:`record` inside the block one undo step (nested groups join the outer one)."""
        self.begin_group(name)
        try:
            yield self._open  # type: ignore[misc]
        finally:
            self.end_group()

    def begin_group(self, name: str = "edit") -> None:
        """Start grouping (a brush stroke's press); pair with :meth:`end_group` (its release)."""
        if self._depth == 0:
            self._open = Step(name)
        self._depth += 1

    def end_group(self) -> bool:
        """Close the group; returns True when the group recorded something (and became a step)."""
        if self._depth == 0:
            return False
        self._depth -= 1
        if self._depth > 0:
            return False
        step, self._open = self._open, None
        if step is None or not step.patches:
            return False
        self._push(step)
        return True

    @property
    def grouping(self) -> bool:
        return self._depth > 0

    def _push(self, step: Step) -> None:
        self._undo.append(step)
        self._redo.clear()
        self._trim()
        self.events.changed.emit()

    def _trim(self) -> None:
        while len(self._undo) > self.max_steps:
            self._undo.popleft()
        total = self.nbytes
        while total > self.max_bytes and len(self._undo) > 1:
            total -= self._undo.popleft().nbytes

    # ---------------------------------------------------------------------------------------- undo, redo
    def undo(self) -> Region | None:
        """Put back the values before the last step; returns the region changed (None: nothing to undo)."""
        if self._depth:
            raise RuntimeError("cannot undo while an edit (a stroke) is in progress")
        if not self._undo:
            return None
        step = self._undo.pop()
        for patch in reversed(step.patches):
            self.array[patch.region] = patch.before.array()
        self._redo.append(step)
        self.events.changed.emit()
        return step.region

    def redo(self) -> Region | None:
        """Apply again the last undone step; returns the region changed (None: nothing to redo)."""
        if self._depth:
            raise RuntimeError("cannot redo while an edit (a stroke) is in progress")
        if not self._redo:
            return None
        step = self._redo.pop()
        for patch in step.patches:
            self.array[patch.region] = patch.after.array()
        self._undo.append(step)
        self._trim()
        self.events.changed.emit()
        return step.region

    def clear(self) -> None:
        """Forget every step (e.g. after the array was replaced wholesale without undo)."""
        self._undo.clear()
        self._redo.clear()
        self._open = None
        self._depth = 0
        self.events.changed.emit()
