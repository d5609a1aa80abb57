"""sftlab.heap_slack: jemalloc's unused pages purged between steps once resident memory outgrows its baseline."""

import ctypes
import os
import subprocess
import sys

import pytest

from sftlab.jemalloc import find_jemalloc
from sftlab import heap_slack


class FakeJemalloc:
    """A `mallctl` stand-in: answers `stats.resident` from a list and records purges."""

    def __init__(self, resident: list[int]):
        self.resident, self.calls = iter(resident), []

    def __call__(self, name, old, old_size, new, new_size):
        self.calls.append(name)
        if name == b"stats.resident":
            ctypes.cast(old, ctypes.POINTER(ctypes.c_size_t))[0] = next(self.resident)
        return 0


def test_purges_only_when_resident_memory_outgrows_the_baseline_after_step_two():
    gib = 2**30
    guard = heap_slack.SlackGuard()
    guard.mallctl = FakeJemalloc([8 * gib, int(8.5 * gib), int(8.9 * gib), 8 * gib])
    purged = [guard.after_step() for _ in range(5)]
    # step 1 not read; step 2 sets the baseline (8 GiB); the limit is 10% of it (0.8 GiB) since that beats the floor
    assert purged == [False, False, False, True, False]
    assert guard.baseline == 8 * gib and guard.purges == 1
    assert guard.mallctl.calls.count(b"arena.4096.purge") == 1 and b"thread.tcache.flush" in guard.mallctl.calls
    assert "8.00 GiB" in guard.line()


def test_small_runs_stay_under_the_floor():
    guard = heap_slack.SlackGuard()
    guard.mallctl = FakeJemalloc([2**30, 2**30 + 400 * 2**20])  # +400 MiB: above 10% but under 512 MiB
    assert [guard.after_step() for _ in range(3)] == [False, False, False]


def test_without_jemalloc_it_does_nothing():
    guard = heap_slack.SlackGuard()
    if guard.mallctl is not None:
        pytest.skip("this test process runs on jemalloc")
    assert [guard.after_step() for _ in range(3)] == [False, False, False] and guard.purges == 0


@pytest.mark.skipif(find_jemalloc() is None, reason="no jemalloc library on this machine")
def test_on_jemalloc_the_counters_read_and_a_purge_returns_pages():
    code = ("import ctypes\nfrom sftlab import heap_slack as h\n"
            "m = h.jemalloc_mallctl()\nassert m is not None\n"
            "blocks = [ctypes.create_string_buffer(64 * 2**20) for _ in range(4)]\n"
            "before = h.resident_bytes(m)\ndel blocks\n"
            "assert m(b'arena.4096.purge', None, None, None, 0) == 0\n"
            "after = h.resident_bytes(m)\nprint(before, after)\nassert after < before - 200 * 2**20\n")
    env = {**os.environ, "LD_PRELOAD": find_jemalloc(), "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
