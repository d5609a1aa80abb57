"""Ctrl-C (and, under a multi-process launch, SIGTERM) during training: stop at the next step boundary."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from sftlab.train.distributed import world_size


@contextlib.contextmanager
def stop_on_sigint(flag: dict):
    """First Ctrl-C sets flag['stop'] so the loop stops at the next step boundary; a second one interrupts at once.

    torchrun passes the signal it gets on to its workers (SIGINT for Ctrl-C) and kills them 30 s later; a
    worker also treats SIGTERM (`kill` of the launcher) as a stop request, never escalated. Only rank 0 says so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop") and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not flag.get("stop") and os.environ.get("RANK", "0") == "0":
            sys.stderr.write("\nstopping after this step to save a checkpoint (Ctrl-C again to stop at once)\n")
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    previous_term = signal.signal(signal.SIGTERM, handler) if world_size() > 1 else None
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
