"""What a run reports while it trains: a tqdm bar, `metrics.jsonl` rows and TensorBoard scalars.

Where stderr is no terminal (`sftlab train ... 2> train.log`, a CI job, a batch scheduler) tqdm draws nothing, so the
run prints a plain line instead (`step 13/30: loss 1.6752, lr 5.67e-05, 489 tokens/s`) for the first logged step,
then at most every `PLAIN_LINE_EVERY_S` seconds, and for the last step; `--no-progress` turns these off too.
tokens/s is the tokens of the optimizer steps since the last written row over the seconds those steps took: set-up,
evaluations, checkpoints and step callbacks in between do not count.

`metrics.jsonl` holds one JSON object per logged optimizer step (step, loss, lr, grad_norm, tokens_per_s,
supervised_tokens, epoch; under train.precision fp16 also loss_scale, the scale the step's backward used, and
skipped, true when its gradients overflowed and the optimizer step was skipped: such a step always gets a row) and
one per evaluation (`"eval": true` plus the validation metrics).
On resume the rows written after the checkpoint's step are dropped so the file reads as one run; a last line cut short
(a run killed mid-write) is dropped with them, and any other broken line is a one-line error naming it
(`read_metrics_rows`, which `sftlab report` and the board use too).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.io import atomic_write_jsonl, read_text

METRICS_FILE = "metrics.jsonl"


def keep_rows_up_to(run_dir: Path, step: int) -> None:
    """Rewrite `metrics.jsonl` (atomically) without the rows logged after `step`."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    atomic_write_jsonl(path, [row for row in read_metrics_rows(path) if row["step"] <= step])


def _row(path: Path, number: int, line: str, last: bool) -> dict | None:
    """One parsed metrics row (None for a cut-short last line); a one-line SftlabError for a bad one."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        if last:
            return None
        raise SftlabError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise SftlabError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        got = "no field 'step'" if "step" not in row else f"field 'step' is {json.dumps(step)}"
        raise SftlabError(f"{path}:{number}: {got}; expected a whole-number step (0 or more) in every row")
    return row


def read_metrics_rows(path: Path) -> list[dict]:
    """The rows of a `metrics.jsonl` in file order ([] when it does not exist). A last line without its newline (the
    run is writing it, or was killed mid-write) is skipped; any other line that is not a JSON object with a
    whole-number `step`, or text that is not UTF-8, is a one-line SftlabError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    text = read_text(path)
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _row(path, number, line, last=number == len(lines) and not text.endswith("\n"))
        if row is not None:
            rows.append(row)
    return rows


PLAIN_LINE_EVERY_S = 30.0  # without a terminal, a progress line for the first written row, then at most this often


class RunLog:
    """Progress bar + JSON lines + TensorBoard for one run, from `start_step` to `total_steps`."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, tensorboard: bool, show_bar: bool = True):
        from tqdm.auto import tqdm

        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         disable=None if show_bar else True, file=sys.stderr)
        self._window_tokens = 0
        self._window_seconds = 0.0
        self._total = total_steps
        self._plain = show_bar and bool(self._bar.disable)  # stderr is no terminal (a log file): lines, not a bar
        self._last_line: float | None = None

    def message(self, text: str) -> None:
        """A line for the user, printed above the progress bar."""
        self._bar.write(text, file=sys.stderr)

    def count_tokens(self, tokens: int, seconds: float) -> None:
        """Add one optimizer step's tokens and the seconds it took to the throughput window."""
        self._window_tokens += tokens
        self._window_seconds += seconds

    def step(self, row: dict, write: bool) -> None:
        """Advance the bar; when `write`, also log `row` plus tokens/s since the last written row."""
        self._bar.update(1)
        if not write:
            return
        now = time.perf_counter()
        row = dict(row, tokens_per_s=round(self._window_tokens / max(self._window_seconds, 1e-9), 1))
        self._window_tokens, self._window_seconds = 0, 0.0
        self._bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        self._write(row)
        if self._plain and (self._last_line is None or now - self._last_line >= PLAIN_LINE_EVERY_S
                            or row["step"] >= self._total):
            self._last_line = now
            print(f"step {row['step']}/{self._total}: loss {row['loss']:.4f}, lr {row['lr']:.3g}, "
                  f"{row['tokens_per_s']:.0f} tokens/s", file=sys.stderr, flush=True)
        if self._writer is not None:
            for key in ("loss", "lr", "tokens_per_s", "grad_norm", "loss_scale"):
                if row.get(key) is not None:
                    self._writer.add_scalar(f"train/{key}", row[key], row["step"])

    def evaluation(self, step: int, metrics: dict) -> None:
        """Log one validation result."""
        self._write({"step": step, "eval": True, **metrics})
        self.message(f"step {step} eval: " + ", ".join(f"{key}={value:.4g}" for key, value in metrics.items()
                                                       if isinstance(value, (int, float))))
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._writer.add_scalar(f"eval/{key}", value, step)

    def _write(self, row: dict) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._bar.close()
        self._file.close()
        if self._writer is not None:
            self._writer.close()


class SilentLog:
    """The log of a process other than the main one in a multi-process run: it writes nothing."""

    def message(self, text: str) -> None:
        """Dropped: only the main process talks to the user."""

    def count_tokens(self, tokens: int, seconds: float) -> None:
        """Dropped: the main process counts every rank's tokens (they are summed per step)."""

    def step(self, row: dict, write: bool) -> None:
        """Dropped: the main process writes the metrics rows."""

    def evaluation(self, step: int, metrics: dict) -> None:
        """Dropped: the main process writes the evaluation rows."""

    def close(self) -> None:
        """Nothing to close."""
