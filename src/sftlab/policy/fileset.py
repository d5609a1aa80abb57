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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from sftlab.errors import SftlabError
from sftlab.io import check_output_parent

STAGE_PREFIX = ".sftlab-staging."


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
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, suffix=".tmp", dir=out))
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
    backup.mkdir()
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
        raise
