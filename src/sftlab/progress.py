"""Whether sftlab draws progress bars here: `sftlab train --no-progress` (`run_training(show_progress=False)`)
turns off every bar of the run, the tokenising bar of data preparation as well as the training bar."""

from __future__ import annotations

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
