"""train.keep_freed_memory (sftlab.train.allocator): freed large tensors are reused without page faults, then undone."""

from __future__ import annotations

import ctypes
import resource

import pytest
import torch

from sftlab.train import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None or not hasattr(allocator._glibc(), "mallinfo2"),
                                reason="needs glibc 2.33+ (mallopt, malloc_trim, mallinfo2)")

SIZE = 64 * 2**20 // 4  # a 64 MiB float32 tensor: above glibc's largest dynamic mmap threshold (32 MiB)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def mmapped_bytes_while_holding(size: int) -> int:
    """How many more bytes glibc holds in mmapped blocks while an (untouched) `size`-byte tensor is alive."""
    libc = allocator._glibc()
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblkhd
    tensor = torch.empty(size, dtype=torch.uint8)
    during = libc.mallinfo2().hblkhd
    del tensor
    return during - before


def faults_of_second_allocation() -> int:
    """Minor page faults while filling a 64 MiB tensor allocated right after an equal one was freed."""
    first = torch.ones(SIZE)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(SIZE)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_freed_memory_is_reused_until_the_defaults_are_restored():
    pages = SIZE * 4 // 4096
    try:
        assert allocator.keep_freed_memory()
        assert mmapped_bytes_while_holding(512 * 2**20) == 0  # from the heap, where it stays when freed
        for _ in range(3):  # the heap grows to hold the blocks (where depends on what else is allocated)
            faults_of_second_allocation()
        # then freed pages stay mapped and are reused (with glibc's defaults every call faults all pages in)
        assert min(faults_of_second_allocation() for _ in range(3)) < pages // 100
    finally:
        assert allocator.restore_default_thresholds()
    # larger than any block freed above, so no free heap block can serve it: mmapped again, as by default
    assert mmapped_bytes_while_holding(768 * 2**20) >= 768 * 2**20


def test_training_keeps_freed_memory_and_cleanup_restores_the_defaults(tmp_path, monkeypatch):
    from sftlab.config import load_config
    from sftlab.train import run_training
    from test_plan import tiny_config

    seen = []
    monkeypatch.setattr(allocator, "keep_freed_memory",
                        lambda original=allocator.keep_freed_memory: seen.append("keep") or original())
    monkeypatch.setattr("sftlab.train.loop.restore_default_thresholds",
                        lambda original=allocator.restore_default_thresholds: seen.append("restore") or original())
    for keep in (True, False):
        cfg = load_config(None, [f"train.keep_freed_memory={str(keep).lower()}", "train.max_steps=1",
                                 f"output.dir={tmp_path / str(keep)}"], base=tiny_config(tmp_path, hidden=32))
        run_training(cfg, show_progress=False)
    assert seen == ["keep", "restore", "restore"]
    assert mmapped_bytes_while_holding(768 * 2**20) >= 768 * 2**20

