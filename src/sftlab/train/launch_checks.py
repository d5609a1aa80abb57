"""Checks of `sftlab train --nproc` launch options before any worker starts, and torchrun's own log lines kept out.

A wrong option must end in one line naming it, not in torchrun's failure report or a wait with no end: a process
count under 1 or above this machine's GPUs (CUDA) or CPU cores, a node rank outside --nnodes, and a rendezvous
port already taken on this machine (torchrun's c10d rendezvous would then wait for a store that never answers).
"""

from __future__ import annotations

import contextlib
import os

from sftlab.errors import SftlabError


def check_launch(nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None) -> None:
    """One-line errors, before any worker starts, for launch options torchrun would fail on, hang on or run badly:
    a process count under 1 or above this machine's GPUs (CUDA) or CPU cores, a node rank outside --nnodes, and
    a rendezvous port that is in use on this machine (node 0 hosts the rendezvous; torchrun would wait on it)."""
    if nproc < 1:
        raise SftlabError(f"--nproc must be at least 1, got {nproc}")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise SftlabError(f"--node-rank must be 0 .. --nnodes - 1 with --nnodes at least 1; got --nnodes {nnodes} "
                          f"--node-rank {node_rank}")
    available, what = local_slots()
    if nproc > available:
        raise SftlabError(f"--nproc {nproc}: this machine has {available} {what}; use --nproc {available} or fewer")
    if rdzv_endpoint is not None and node_rank == 0:
        _check_rendezvous_port(rdzv_endpoint)


def local_slots() -> tuple[int, str]:
    """How many training processes this machine takes: one per CUDA GPU, else one per CPU core it may use."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA GPU(s) (one process per GPU)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, "CPU core(s) available to this process (one process per core at most)"


def _check_rendezvous_port(endpoint: str) -> None:
    """Fail when `endpoint` (HOST:PORT) is malformed, or names this machine and its port is taken."""
    import errno
    import socket

    from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname, parse_rendezvous_endpoint

    try:
        host, port = parse_rendezvous_endpoint(endpoint, default_port=29400)
    except ValueError as exc:
        raise SftlabError(f"--rdzv-endpoint {endpoint}: {exc}") from None
    if not _matches_machine_hostname(host):
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise SftlabError(f"--rdzv-endpoint {endpoint}: cannot listen on port {port} ({exc.strerror})") from None
            raise SftlabError(f"--rdzv-endpoint {endpoint}: port {port} is in use on this machine; "
                              "pick a free port (the same on every machine)") from None


@contextlib.contextmanager
def quiet_torchrun():
    """torchrun's own warning and error log lines are left out (its failures become one line in `launch`);
    LOGLEVEL in the environment keeps them, as torchrun documents."""
    import logging

    if "LOGLEVEL" in os.environ:
        yield
        return
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
