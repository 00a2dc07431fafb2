"""Reuse of freed CPU memory during a segmentation (Linux with glibc; elsewhere nothing changes).

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
gives it back with ``munmap`` when freed. An SD-FSMIS decode on the CPU allocates and frees tens of such
blocks per query slice (VAE activations of 33 to 270 MiB): every one is faulted in again page by page and
zeroed by the kernel, about 12 % of the CPU time of a decode (measured: 3.4 s of 27 s of system time for 4
slices at 256 px, 1.8 million page faults; with reuse 0.5 s and 0.27 million). PyTorch's CUDA allocator
caches freed blocks for the same reason; on the CPU it relies on ``malloc``.

:func:`reuse_freed_memory` keeps freed blocks in the process for the duration of the block
(``mallopt(M_MMAP_MAX, 0)``: large blocks come from the heap; ``M_TRIM_THRESHOLD`` high: freed memory is
not handed back at once), then restores mmap for large blocks and hands the free memory back to the system
(``malloc_trim``). Nested and concurrent uses are counted: the settings are restored when the last ends.
Restored values: mmap threshold 32 MiB and trim threshold 64 MiB, which is where glibc's own dynamic
thresholds end up once a large block was freed (setting any of them switches the dynamic adjustment off).

Limits: a thread other than the main one usually allocates from its own glibc arena, whose heaps hold at
most 64 MiB: larger blocks are still mmap-ed there (the GUI segments in a worker thread and gains less than
``sd-fsmis segment`` and the benchmark, which segment in the main thread). glibc's heap may still give
some freed pages back, so the saving is large but not total.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: glibc's defaults for the values restored after a block (see the module docstring)
DEFAULT_MMAP_MAX = 65536
RESTORED_MMAP_THRESHOLD = 32 * 2**20
RESTORED_TRIM_THRESHOLD = 64 * 2**20
#: while reusing: free memory handed back to the system only beyond this much at the heap's top
REUSE_TRIM_THRESHOLD = 2**62

_lock = threading.Lock()
_users = 0
_libc: ctypes.CDLL | None = None
_libc_checked = False


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else None."""
    global _libc, _libc_checked
    if not _libc_checked:
        _libc_checked = True
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):
                _libc = None
    return _libc


def is_supported() -> bool:
    """Whether :func:`reuse_freed_memory` does anything on this system."""
    return _glibc() is not None


def _mallopt(libc: ctypes.CDLL, param: int, value: int) -> None:
    value = min(value, 2**31 - 1)  # mallopt takes an int
    if libc.mallopt(param, value) != 1:
        log.debug("mallopt(%d, %d) refused", param, value)


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed large CPU blocks are reused instead of unmapped; yields whether it applies."""
    global _users
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        _users += 1
        if _users == 1:
            _mallopt(libc, M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD)
            _mallopt(libc, M_MMAP_MAX, 0)
    try:
        yield True
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _mallopt(libc, M_MMAP_MAX, DEFAULT_MMAP_MAX)
                _mallopt(libc, M_MMAP_THRESHOLD, RESTORED_MMAP_THRESHOLD)
                _mallopt(libc, M_TRIM_THRESHOLD, RESTORED_TRIM_THRESHOLD)
                libc.malloc_trim(0)
