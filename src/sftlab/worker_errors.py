"""One error line for a failed `sftlab train --nproc N` run, instead of one from every process and the launcher.

The launcher (`sftlab.train.distributed.launch`) gives its workers a directory in `SFTLAB_WORKER_ERRORS`;
a worker that ends with an sftlab error records it there (`record`) instead of printing it. When the run
fails, `summary` picks the line to show: the error that caused it (a bad data line, say) from the lowest
rank that had one, prefixed with its rank only when ranks disagree; else, when the first process to fail
was killed by a signal, that; else a rank's report that another process stopped answering (a hang); else
the first failure's exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from sftlab.errors import SftlabError

ENV = "SFTLAB_WORKER_ERRORS"


class LostContact(SftlabError):
    """A collective failed because another process died or hung (a consequence, not a cause)."""


def record(exc: SftlabError) -> bool:
    """In a worker of `sftlab train --nproc`, write the error for the launcher and return True; else False."""
    directory = os.environ.get(ENV)
    if not directory or not Path(directory).is_dir():
        return False
    rank = int(os.environ.get("RANK", "0"))
    entry = {"rank": rank, "message": str(exc), "lost_contact": isinstance(exc, LostContact)}
    part = Path(directory) / f"{rank}.json.part"
    part.write_text(json.dumps(entry), encoding="utf-8")
    part.replace(Path(directory) / f"{rank}.json")
    return True


@contextlib.contextmanager
def collecting():
    """A directory the workers started inside this block record their errors in (set in the environment)."""
    previous = os.environ.get(ENV)
    with tempfile.TemporaryDirectory(prefix="sftlab-worker-errors-") as directory:
        os.environ[ENV] = directory
        try:
            yield Path(directory)
        finally:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous


def summary(directory: Path, first: tuple[int, int, str | None], failed: int) -> str:
    """The one line for a failed run; `first` is the earliest failure (rank, exit code, signal name or None)."""
    entries = sorted((_read(path) for path in directory.glob("*.json")), key=lambda entry: entry["rank"])
    causes = [entry for entry in entries if not entry["lost_contact"]]
    if causes:
        if len({entry["message"] for entry in causes}) == 1:
            return causes[0]["message"]
        return f"rank {causes[0]['rank']}: {causes[0]['message']}"
    rank, code, signal = first
    lost = [entry for entry in entries if entry["lost_contact"]]
    if lost and not signal:
        return lost[0]["message"]
    how = f"was killed by {signal}" if signal else f"exited with code {code}"
    return f"training process rank {rank} {how}; the other processes were stopped ({failed} failed in all)"


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
