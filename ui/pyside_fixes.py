"""Work-arounds for bugs of the Qt binding that would otherwise crash the application.

PySide6 6.12.0 on Python < 3.12 returns some singletons without taking a reference to them:
``Signal.emit()`` returns ``True`` and every ``void`` method (``setValue``, ``setText``, ``update``,
``setVisible``, ...) returns ``None``, and each such call lowers that object's reference count by one.
A viewer makes thousands of these calls a second (pyqtgraph too), so ``None`` or ``True`` is soon freed
and the process aborts ("Fatal Python error: none_dealloc: deallocating None" / "bool_dealloc"); a bare
script dies after about 600 emits. Python 3.12 made these objects immortal, which hides the bug;
:func:`protect_singletons` gives them the same protection on older Pythons, only when the leak is measured
on the installed binding. Call it once at start-up, before the first window.
"""

from __future__ import annotations

import ctypes
import sys

_RESERVE = 1 << 40  # references added: far more calls than a session can make
_SINGLETONS = (None, True, False)
_applied = False


def binding_leaks_singletons() -> bool:
    """True when ``Signal.emit()`` or a void method of the installed PySide6 drops a reference."""
    from PySide6 import QtCore

    class _Probe(QtCore.QObject):
        fired = QtCore.Signal()

    probe = _Probe()
    before = [sys.getrefcount(obj) for obj in _SINGLETONS]
    for _ in range(16):
        probe.fired.emit()
        probe.setObjectName("probe")
    after = [sys.getrefcount(obj) for obj in _SINGLETONS]
    return any(a - b <= -8 for a, b in zip(after, before))


def protect_singletons() -> bool:
    """Make ``None``/``True``/``False`` effectively immortal when the binding leaks them; True if applied.

    Safe to call many times (applied once). A no-op on Python >= 3.12, where they are immortal already,
    and on interpreters other than CPython.
    """
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _applied
    if not binding_leaks_singletons():
        return False
    for singleton in _SINGLETONS:  # ob_refcnt is the first field of every CPython object
        ctypes.c_ssize_t.from_address(id(singleton)).value += _RESERVE
    _applied = True
    return True
