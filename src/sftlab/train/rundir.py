"""A run's output directory: checked for a fresh run or a resume, and the previous run's entries set aside by
--overwrite until the new run's setup has succeeded (then deleted; put back if it fails).

    checkpoint = prepare_output_dir(out_dir, resume, overwrite)    # the checkpoint to resume from, or None
    with replacing_previous_run(out_dir):
        ...                                                        # build the session
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.io import check_output_parent
from sftlab.checkpoints import CHECKPOINTS, SIDECAR, incomplete_checkpoints, latest_checkpoint

RUN_ENTRIES = (CHECKPOINTS, "best", "model", "tensorboard", "metrics.jsonl", "metrics.json", "config.yaml",
               "data_stats.json", "trainable.json", "importance.png")
# Where --overwrite keeps the previous run's entries until the new run's setup has succeeded (`replacing_previous_run`).
PREVIOUS_RUN = ".sftlab-previous-run"


def prepare_output_dir(out_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check the output directory for a fresh run or a resume; return the checkpoint to resume from."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SftlabError(f"output.dir {out_dir} is a file; expected a directory")
    try:
        check_output_parent(out_dir)
    except SftlabError as exc:
        raise SftlabError(f"output.dir {exc}") from None
    occupied = out_dir.exists() and any(out_dir.iterdir())
    if (out_dir / PREVIOUS_RUN).is_dir() and not overwrite:  # an --overwrite killed before its setup ended
        raise SftlabError(f"output.dir {out_dir}: {PREVIOUS_RUN}/ holds the entries of a run that an interrupted "
                          "--overwrite set aside; move them back into output.dir to keep that run, or pass "
                          "--overwrite to discard them")
    if resume:
        checkpoint = latest_checkpoint(out_dir)
        if checkpoint is None:
            instead = "--overwrite instead of --resume to start it again" if occupied else "the run without --resume"
            partial = [f"{path.name} has no {SIDECAR}" for path in incomplete_checkpoints(out_dir)]
            which = f"no complete checkpoint in {out_dir / CHECKPOINTS}: {', '.join(partial)}" if partial else \
                f"no checkpoint in {out_dir / CHECKPOINTS}"
            raise SftlabError(f"--resume: {which}; start {instead}")
        return checkpoint
    if occupied:
        if not overwrite:
            raise SftlabError(f"output.dir {out_dir} already exists and is not empty; "
                              "pass --overwrite to start over or --resume to continue it")
        held = out_dir / PREVIOUS_RUN
        shutil.rmtree(held, ignore_errors=True)
        held.mkdir()
        for name in RUN_ENTRIES:  # only what a run writes; never other files the user keeps there
            if (out_dir / name).exists():
                (out_dir / name).replace(held / name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a read-only or virtual file system (/proc), no permission
        raise SftlabError(f"output.dir {out_dir}: cannot create it ({exc.strerror or exc})") from None
    return None


@contextlib.contextmanager
def replacing_previous_run(out_dir: Path, main: bool = True, created: bool = False):
    """Around a run's setup: the previous run that --overwrite set aside (`prepare_output_dir`) is deleted once the
    setup has succeeded, and put back as it was when it fails (bad data, a model that does not load). When it
    fails, an output directory this run `created` goes again if it holds nothing."""
    held = out_dir / PREVIOUS_RUN
    try:
        yield
    except BaseException:
        if main and held.is_dir():
            for entry in held.iterdir():
                target = out_dir / entry.name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
                entry.replace(target)
            shutil.rmtree(held, ignore_errors=True)
        if main and created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    if main:
        shutil.rmtree(held, ignore_errors=True)
