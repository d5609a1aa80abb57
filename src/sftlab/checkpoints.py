"""Where a run's step checkpoints are and which of them are complete: path functions only (no torch), so the
report and the board read them as training does (`sftlab.train.checkpoint` writes and loads them).

    OUT/checkpoints/step-N/sftlab_state.json    a complete checkpoint carries the sidecar (written last, through
                                                `sftlab.io.atomic_dir`); a step directory without it is partial
"""

from __future__ import annotations

import re
from pathlib import Path

SIDECAR = "sftlab_state.json"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Every `step-N` directory under the run's checkpoints, complete or not, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    found = [(int(match.group(1)), child) for child in (root.iterdir() if root.is_dir() else [])
             if (match := _STEP_DIR.match(child.name))]
    return sorted(found)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints (those with a sidecar), oldest first."""
    return [(step, path) for step, path in step_dirs(run_dir) if (path / SIDECAR).is_file()]


def incomplete_checkpoints(run_dir: Path, after: int = -1) -> list[Path]:
    """Step directories after step `after` without a sidecar (not written by sftlab as they are: a partial copy, a
    deleted sidecar), oldest first."""
    return [path for step, path in step_dirs(run_dir) if step > after and not (path / SIDECAR).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None
