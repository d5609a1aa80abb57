"""Whether sftlab draws progress bars here: `sftlab train --no-progress` (`run_training(show_progress=False)`)
turns off every bar of the run, the tokenising bar of data preparation as well as the training bar; and `say`, the
one-line progress notes of slow phases (auto's scoring, the planner's strategies), on stderr."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar

_SHOWN: ContextVar[bool] = ContextVar("sftlab_progress_bars", default=True)


def bars_shown() -> bool:
    """False inside `progress_bars(False)`, else True."""
    return _SHOWN.get()


@contextmanager
def progress_bars(shown: bool):
    """Within the block, `bars_shown()` is `shown`."""
    token = _SHOWN.set(shown)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def say(line: str) -> None:
    """A progress line on stderr (stdout carries only a command's result), flushed at once."""
    print(line, file=sys.stderr, flush=True)
