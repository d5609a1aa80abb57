"""Whether sftlab draws progress bars here: `sftlab train --no-progress` (`run_training(show_progress=False)`)
turns off every bar of the run, the tokenising bar of data preparation as well as the training bar; and `say`, the
one-line progress notes of slow phases (auto's scoring, the planner's strategies), on stderr; `example_bar`, the bar
of a slow pass over many examples (deduplication, data stats' token lengths); `count_bar`, a bar updated by hand
that appears only once its pass has run `BAR_DELAY_S` (evaluation's scoring passes, `sftlab generate`'s answers)."""

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


def example_bar(examples, what: str):
    """`examples` with a progress bar on stderr when it is a terminal and `bars_shown()`: near-duplicate detection or
    tokenizing a few hundred thousand examples takes minutes."""
    from tqdm.auto import tqdm

    return tqdm(examples, desc=what, unit="examples", dynamic_ncols=True, disable=None if bars_shown() else True)


BAR_DELAY_S = 1.0  # a pass shorter than this draws no bar (a policy API request, a small validation set)


def count_bar(total: int, desc: str, unit: str, initial: int = 0):
    """A tqdm bar of `total` `unit` (from `initial`: a resumed pass) on stderr when it is a terminal and
    `bars_shown()`, drawn once the pass has run `BAR_DELAY_S` and cleared when done, so it leaves no line behind."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
                delay=BAR_DELAY_S, disable=None if bars_shown() else True)
