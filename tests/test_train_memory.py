"""sftlab.train.memory: the glibc mmap threshold is set where glibc exists, and never raises elsewhere."""

import ctypes.util
import sys

from sftlab.train.memory import limit_heap_fragmentation


def test_mmap_threshold_is_applied_on_glibc():
    applied = limit_heap_fragmentation()
    glibc = sys.platform.startswith("linux") and "libc.so.6" in (ctypes.util.find_library("c") or "libc.so.6")
    assert applied is glibc
    assert limit_heap_fragmentation(1 << 20) is glibc  # idempotent
