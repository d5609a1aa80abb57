"""Ctrl-C and SIGTERM during training: stop at the next step boundary and checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


@contextlib.contextmanager
def stop_on_sigint(flag: dict):
    """First Ctrl-C or SIGTERM sets flag['stop'] so the loop stops at the next step boundary and checkpoints; a
    second Ctrl-C interrupts at once.

    SIGTERM is what `kill`, job schedulers and container runtimes send before they kill a process, and what
    torchrun passes on to its workers (SIGINT for Ctrl-C, killing them 30 s later); it is a stop request, never
    escalated. Only rank 0 says so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop") and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not flag.get("stop") and os.environ.get("RANK", "0") == "0":
            again = "Ctrl-C again to stop at once" if signum == signal.SIGINT else "SIGTERM; Ctrl-C stops at once"
            sys.stderr.write(f"\nstopping after this step to save a checkpoint ({again})\n")
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    previous_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
