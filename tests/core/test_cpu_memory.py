"""Freed CPU memory reused during a segmentation: fewer page faults, and the defaults back afterwards."""

from __future__ import annotations

import resource

import pytest
import torch

from sd_fsmis.core import cpu_memory
from sd_fsmis.core.cpu_memory import is_supported, reuse_freed_memory

pytestmark = pytest.mark.skipif(not is_supported(), reason="needs Linux with glibc")

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): always mmap-ed by default


def _page_faults_of_big_blocks(count: int = 4) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        block = torch.empty(BLOCK // 4, dtype=torch.float32)
        block.fill_(1.0)  # touch every page
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_blocks_are_reused_within_the_block_and_not_after():
    outside = _page_faults_of_big_blocks()
    with reuse_freed_memory() as applied:
        assert applied
        _page_faults_of_big_blocks(1)  # the first block is faulted in once
        inside = _page_faults_of_big_blocks()
    after = _page_faults_of_big_blocks()
    pages = 4 * BLOCK // resource.getpagesize()
    assert outside > pages // 2  # every block faulted in again (huge pages would make this fewer)
    assert inside < outside // 4
    assert after > pages // 2  # large blocks are mmap-ed (and given back) again


def test_nested_uses_restore_only_when_the_last_ends():
    with reuse_freed_memory():
        with reuse_freed_memory():
            assert cpu_memory._users == 2
        assert cpu_memory._users == 1
        _page_faults_of_big_blocks(1)
        assert _page_faults_of_big_blocks() < 4 * BLOCK // resource.getpagesize() // 4
    assert cpu_memory._users == 0


def test_disabled_it_does_nothing():
    with reuse_freed_memory(enabled=False) as applied:
        assert not applied
        assert cpu_memory._users == 0
