"""Bound the memory jemalloc keeps but no tensor uses, by purging it between optimizer steps when it grows large.

`sftlab.jemalloc` runs training on jemalloc with its decay off: freed pages stay in the process for the next
step, which spares the kernel zeroing them again (W1 1939 against 3045 tokens/s with the default decay). On most
runs the next step reuses them and resident memory stays flat. On full fine-tuning of Gemma 3 270M (8 x 256
tokens, bf16 autocast over float32 weights) it does not: the live heap stayed at 2.25 GiB between steps while
resident memory grew by about 0.3 GiB a step (7.9 GiB after 3 steps, 11.2 after 15, 14.6 after 30), which a long
run would take until it ran out of memory. Any finite decay bounds it but slows every step (250 against 365
tokens/s there, docs/speed-work.md, fifteenth round).

`SlackGuard.after_step()` reads jemalloc's resident bytes (`stats.resident`) after each step. The resident memory
after the second step, when every kind of step has run once and the pages a step frees are there to be reused, is
the run's baseline; when a later step leaves more than `GROWTH_LIMIT` of it (and at least `GROWTH_FLOOR` bytes)
above it, every unused page is returned to the kernel (`arena.<all>.purge`): the next step pays for fresh pages,
and the steps after reuse warm ones again. In a process not on jemalloc (glibc, another allocator, a platform
without `mallctl`) it does nothing.
"""

from __future__ import annotations

import ctypes

GROWTH_LIMIT = 0.1  # purge when resident memory is this share above the baseline (after the second step)
GROWTH_FLOOR = 512 * 2**20  # ... and at least this many bytes above it
_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL


def jemalloc_mallctl():
    """jemalloc's `mallctl` when this process runs on jemalloc (preloaded or linked), else None."""
    try:
        function = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                         ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def resident_bytes(mallctl) -> int | None:
    """jemalloc's resident bytes (active pages, metadata and unused dirty pages), refreshed first; None when it
    keeps no statistics."""
    epoch = ctypes.c_uint64(1)
    size = ctypes.c_size_t(ctypes.sizeof(epoch))
    if mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), size.value):
        return None
    value, size = ctypes.c_size_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
    if mallctl(b"stats.resident", ctypes.byref(value), ctypes.byref(size), None, 0):
        return None
    return value.value


def purge_unused_pages(mallctl) -> None:
    """Return jemalloc's unused pages (this thread's cache flushed first, then every arena's) to the kernel."""
    for name in (b"thread.tcache.flush", f"arena.{_ALL_ARENAS}.purge".encode()):
        mallctl(name, None, None, None, 0)


class SlackGuard:
    """After each optimizer step: purge jemalloc's unused pages when resident memory has grown (module docstring)."""

    def __init__(self):
        self.mallctl = jemalloc_mallctl()
        self.steps = 0
        self.baseline: int | None = None
        self.purges = 0

    def after_step(self) -> bool:
        """Purge when resident memory is over the limit; True when it did."""
        self.steps += 1
        resident = resident_bytes(self.mallctl) if self.mallctl is not None and self.steps >= 2 else None
        if resident is None:
            return False
        if self.baseline is None:
            self.baseline = resident
        if resident - self.baseline <= max(GROWTH_FLOOR, GROWTH_LIMIT * self.baseline):
            return False
        purge_unused_pages(self.mallctl)
        self.purges += 1
        return True

    def line(self) -> str:
        """The run log's note on the first purge."""
        return (f"resident memory grew more than {GROWTH_LIMIT:.0%} above its size after step 2 "
                f"({self.baseline / 2**30:.2f} GiB); jemalloc's unused pages were returned to the system, as they will "
                "be whenever that happens again (sftlab.heap_slack)")
