"""Freed CPU memory reused during a segmentation: fewer page faults, and the defaults back afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sd_fsmis.core import cpu_memory
from sd_fsmis.core.cpu_memory import is_supported, reuse_freed_memory

pytestmark = pytest.mark.skipif(not is_supported(), reason="needs Linux with glibc")

# In a fresh interpreter: the main thread allocates from glibc's main arena, as `sd-fsmis segment` does (a
# test process that ran threads may have moved its main thread to another arena). A 48 MiB block is above
# glibc's largest mmap threshold (32 MiB): mmap-ed by default (glibc's mallinfo2 counts those bytes).
_MEASURE = """
import ctypes, json, torch
from sd_fsmis.core.cpu_memory import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_bytes_of_a_block():
    before = libc.mallinfo2().hblkhd
    block = torch.ones(48 * 2**20 // 4, dtype=torch.float32)
    grown = libc.mallinfo2().hblkhd - before
    del block
    return grown

outside = mmapped_bytes_of_a_block()
with reuse_freed_memory() as applied:
    with reuse_freed_memory():
        pass  # a nested use ending does not restore the defaults
    inside = mmapped_bytes_of_a_block()
after = mmapped_bytes_of_a_block()
print(json.dumps({"applied": applied, "outside": outside, "inside": inside, "after": after}))
"""


def test_large_blocks_come_from_the_heap_within_the_block_and_not_after():
    run = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=120)
    if "mallinfo2" in run.stderr:
        pytest.skip("glibc without mallinfo2 (before 2.33)")
    assert run.returncode == 0, run.stderr
    mmapped = json.loads(run.stdout.strip().splitlines()[-1])
    assert mmapped["applied"]
    assert mmapped["outside"] >= 48 * 2**20  # glibc's default: mmap-ed, unmapped when freed
    assert mmapped["inside"] == 0  # from the heap, kept for reuse when freed
    assert mmapped["after"] >= 48 * 2**20  # the defaults are back


def test_nested_uses_restore_only_when_the_last_ends():
    with reuse_freed_memory():
        with reuse_freed_memory():
            assert cpu_memory._users == 2
        assert cpu_memory._users == 1
    assert cpu_memory._users == 0


def test_disabled_it_does_nothing():
    with reuse_freed_memory(enabled=False) as applied:
        assert not applied
        assert cpu_memory._users == 0
