"""Keep memory freed during training inside the process (glibc malloc), so large tensors reuse warm pages.

glibc serves an allocation above its mmap threshold (128 KiB, rising with use to at most 32 MiB) with
fresh pages from the kernel and unmaps them when it is freed. A training step allocates and frees
many tensors larger than that (the head's logits chunks, attention scores, MLP activations), so each
step pays for the kernel to zero every 4 KiB page again on first touch. On a W1 bf16 step (2 Zen 5
cores) that was 50,000-160,000 page faults and 0.1-0.7 s of system time in a 1.9-2.4 s step.

`keep_freed_memory` raises the mmap threshold to 1 GiB and the trim threshold to 2 GiB
(`train.keep_freed_memory`, on by default), so blocks freed in one step stay in the heap for the
next: the same steps then took 1.82-1.89 s with no page faults, and peak RSS was unchanged (2.46 vs 2.45 GiB;
docs/speed-work.md). `restore_default_thresholds` puts glibc's default thresholds back and returns
the free heap to the kernel (`malloc_trim`); the training loop's cleanup calls it. Elsewhere than Linux
with glibc both do nothing and say so by returning False. In a process on jemalloc (`train.allocator`,
`sftlab.jemalloc`) they act on glibc's malloc, which jemalloc has replaced (harmless); the run log names
the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEPT_MMAP_THRESHOLD = 1 << 30
KEPT_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's defaults (fixed from then on: mallopt turns the dynamic rule off)
DEFAULT_TRIM_THRESHOLD = 128 * 1024


@functools.cache
def _glibc():
    """glibc's handle when this process runs on it, else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc only (musl has mallopt as a stub that does nothing)
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Raise malloc's mmap and trim thresholds; True when glibc took both."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, KEPT_MMAP_THRESHOLD)) and \
        bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD))


def restore_default_thresholds() -> bool:
    """glibc's default thresholds again, and the free top of the heap handed back to the kernel."""
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD)) and \
        bool(libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD))
    libc.malloc_trim(0)
    return done
