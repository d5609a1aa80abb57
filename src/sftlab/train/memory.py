"""Keep the training process's resident memory close to what its tensors need (glibc heap fragmentation).

glibc serves allocations above a *dynamic* threshold from the heap and raises that threshold (up to
32 MB) each time a large mmapped block is freed. Training frees and re-allocates activation tensors of
a few MB every step, so after the first step they come from the heap, which fragments and keeps freed
pages resident. Fixing the threshold at 1 MB (`mallopt(M_MMAP_THRESHOLD)`) sends every large tensor
to mmap, whose pages go back to the system when freed. On the W1 benchmark this cut the peak RSS of a
bf16 training step by about 30% at no measured speed cost (docs/benchmarks.md). A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def limit_heap_fragmentation(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; True when it was applied (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
