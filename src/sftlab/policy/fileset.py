"""Outputs that appear as a set: the files of one `build-data` or `evaluate` run replace the earlier run's together.

    with file_set(out_dir, last=("manifest.json",)) as stage:   # a hidden staging directory inside out_dir
        atomic_write_jsonl(stage / "a.jsonl", rows)
        atomic_write_json(stage / "manifest.json", manifest)
    # here out_dir/a.jsonl and out_dir/manifest.json are the new ones, or (on any error) both the old ones

`sftlab.io.atomic_dir` would replace the whole directory, but these output directories hold other things (the
baselines report goes to `<data>/baselines` by default, a user may keep notes beside the files), so only the files
written to the stage are swapped. The swap moves the old files aside, renames the new ones in (by name, the `last`
ones after the others, so that a manifest describing the set lands last) and puts the old ones back if a rename
fails.

A writer killed outright (kill -9, power loss) cannot clean up: it leaves its staging directory
(`.sftlab-staging.HOST-PID.*.tmp`), and when it died during the swap, `out_dir` holds part of the new set and the
old namesakes wait in the stage's `.old`. The next `file_set` on `out_dir` first deals with every stale staging
directory there (`stale_stage`: its writer's process, named in it, is not running on this machine, or nothing in
it changed for `STALE_AFTER_S`, one hour): one whose swap had begun (it has `.old`; a swap begins only once the
block has written the whole set, and a swap that fails and is rolled back removes its `.old`) has the swap finished,
so `out_dir` holds that whole set; one without is removed, leaving `out_dir` as it was (`recover_stale`). The
readers of these directories (`evaluate`, the demo's training config) open their files by name, and the board's
list of data files skips hidden directories, so a staging directory is never taken for output.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from sftlab.errors import SftlabError
from sftlab.io import check_output_parent

STAGE_PREFIX = ".sftlab-staging."
STALE_AFTER_S = 3600  # a staging directory unchanged for this long is stale, whoever wrote it
_STAGE_NAME = re.compile(r"\.sftlab-staging\.(?P<host>[A-Za-z0-9_-]*)-(?P<pid>[0-9]+)\.\w+\.tmp")


@contextlib.contextmanager
def file_set(out_dir: str | Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A staging directory inside `out_dir` (created if needed); once the block ends without an error, the files
    written into it replace their namesakes in `out_dir` together. On an error nothing in `out_dir` changes (an
    `out_dir` this call created is removed again). The staging directory is removed either way."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SftlabError(f"{out} is a file; expected an output directory")
    check_output_parent(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not created:
        recover_stale(out, last)
    stage = Path(tempfile.mkdtemp(prefix=_stage_prefix(), suffix=".tmp", dir=out))
    try:
        yield stage
        _publish(stage, out, last)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:  # a failed first run leaves no empty output directory behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out: Path, last: tuple[str, ...]) -> None:
    """Move the files of `stage` into `out`, all or none: old namesakes wait in `stage/.old` until every new file is
    in place, and go back if a rename fails."""
    names = sorted((path.name for path in stage.iterdir() if path.is_file()), key=lambda name: (name in last, name))
    backup = stage / ".old"
    backup.mkdir(exist_ok=True)  # exists already when `recover_stale` finishes a killed writer's swap
    moved_aside, placed = [], []
    try:
        for name in names:
            if (out / name).is_file():
                os.replace(out / name, backup / name)
                moved_aside.append(name)
        for name in names:
            os.replace(stage / name, out / name)
            placed.append(name)
    except BaseException:
        for name in placed:
            with contextlib.suppress(OSError):
                os.unlink(out / name)
        for name in moved_aside:
            with contextlib.suppress(OSError):
                os.replace(backup / name, out / name)
        with contextlib.suppress(OSError):  # rolled back: no `.old` tells `recover_stale` to finish this swap
            backup.rmdir()
        raise


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def _stage_prefix() -> str:
    """The start of this process's staging directory names: `.sftlab-staging.HOST-PID.`."""
    return f"{STAGE_PREFIX}{_host()}-{os.getpid()}."


def _running(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def stale_stage(stage: Path, now: float | None = None) -> bool:
    """Whether `stage`, a staging directory, was left by a writer that is gone: the process named in it (by this
    machine's name and a pid) is not running, or neither it nor anything in it (or in its `.old`) changed for
    `STALE_AFTER_S` seconds (a staging directory of another machine or an older sftlab, or a reused pid)."""
    match = _STAGE_NAME.fullmatch(stage.name)
    if match and match["host"] == _host() and not _running(int(match["pid"])):
        return True
    changed = [stage.lstat().st_mtime]
    for folder in (stage, stage / ".old"):
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            changed += [entry.stat(follow_symlinks=False).st_mtime for entry in entries]
    return (time.time() if now is None else now) - max(changed) > STALE_AFTER_S


def recover_stale(out: Path, last: tuple[str, ...] = ()) -> list[Path]:
    """Finish or remove the stale staging directories (`stale_stage`) that killed writers left in `out`: one with
    `.old` had begun its swap, which is completed (its files in by name, `last` ones after the others; the old
    files go); one without is removed. Each is first touched and renamed to a staging name of this process, so two
    writers never recover the same one (nor does it look idle under that name). One that cannot be finished (a
    rename fails) stays as it is. Returns the staging directories dealt with."""
    done = []
    for stage in sorted(out.glob(STAGE_PREFIX + "*")):
        try:
            if stage.is_symlink() or not stage.is_dir() or not stale_stage(stage):
                continue
            mine = out / f"{_stage_prefix()}{secrets.token_hex(6)}.tmp"
            os.utime(stage)  # fresh under its new name too, so no other writer takes it for stale meanwhile
            os.rename(stage, mine)
        except OSError:  # gone meanwhile (another writer took it), or unreadable
            continue
        try:
            if (mine / ".old").is_dir():
                _publish(mine, out, last)
        except OSError:
            continue
        shutil.rmtree(mine, ignore_errors=True)
        done.append(stage)
    return done
