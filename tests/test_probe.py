"""The plan probe measures on the malloc `sftlab train` would use, and starts from an empty jemalloc heap."""

import subprocess
import sys

import pytest

from sftlab import jemalloc
from sftlab.plan.probe import probe_environment, purge_jemalloc


def test_the_probe_process_runs_on_jemalloc_where_training_would(monkeypatch):
    environ = {"PATH": "/bin", "MALLOC_CONF": "narenas:2"}
    assert probe_environment("system", environ) == environ
    monkeypatch.setattr(jemalloc, "resolve_allocator", lambda setting: "/opt/lib/libjemalloc.so.2")
    env = probe_environment("auto", environ)
    assert env["LD_PRELOAD"] == "/opt/lib/libjemalloc.so.2" and env["PATH"] == "/bin"
    assert env["MALLOC_CONF"] == f"{jemalloc.MALLOC_CONF},narenas:2"
    monkeypatch.setattr(jemalloc, "resolve_allocator", lambda setting: None)
    assert probe_environment("auto", environ) == environ


def test_purge_is_a_no_op_without_jemalloc():
    if jemalloc.loaded_jemalloc():
        pytest.skip("this test process itself runs on jemalloc")
    assert purge_jemalloc() is False


def test_purge_returns_jemallocs_freed_pages_to_the_kernel():
    library = jemalloc.find_jemalloc()
    if library is None:
        pytest.skip("no jemalloc library (apt install libjemalloc2)")
    code = """
import numpy as np
from sftlab.plan.probe import purge_jemalloc
def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) // 1024
arrays = [np.ones(2**20) for _ in range(40)]  # 320 MiB in 8 MiB blocks
del arrays
freed = rss()
print(purge_jemalloc(), freed - rss())
"""
    env = jemalloc.exec_environment(library, {"PATH": "/usr/bin:/bin"})  # decay off: freed pages stay resident
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    purged, returned_mib = done.stdout.split()
    assert purged == "True" and int(returned_mib) > 250, done.stdout + done.stderr
