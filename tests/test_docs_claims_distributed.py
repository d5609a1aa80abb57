"""docs/distributed.md: `--nproc` runs torchrun with `--max-restarts 0`, and too many processes for the CPU cores is
refused with the documented line."""

from __future__ import annotations

import os

import pytest

from sftlab.errors import SftlabError
from sftlab.train.distributed import launch_arguments
from sftlab.train.launch_checks import check_launch


def test_a_failed_run_is_not_restarted():
    args = launch_arguments(["-m", "sftlab", "train", "run.yaml"], 2)
    assert args[args.index("--max-restarts") + 1] == "0"


def test_more_processes_than_cpu_cores_is_the_documented_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with pytest.raises(SftlabError) as refused:
        check_launch(cores + 1)
    assert str(refused.value) == (f"--nproc {cores + 1}: this machine has {cores} CPU core(s) available to this process "
                                  f"(one process per core at most); use --nproc {cores} or fewer")
