"""sftlab.io's atomic writes: outputs appear whole or not at all, with the permissions a plain open would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sftlab.io import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_directories_follow_the_umask_not_mkstemps_0600(tmp_path, umask_022):
    # mkstemp makes 0600 files and mkdtemp 0700 directories: every output was unreadable by the rest of its group
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == 0o644
    assert _mode(atomic_write_bytes(tmp_path / "b.png", b"x")) == 0o644
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert _mode(tmp_path / "out") == 0o755 and (tmp_path / "out" / "inside.txt").read_text() == "x"
    os.umask(0o077)
    assert _mode(atomic_write_text(tmp_path / "private.txt", "x")) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write("new, half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_file_where_a_directory_should_be_created_is_one_line_naming_it(tmp_path):
    # mkdir(parents=True) raised FileExistsError / NotADirectoryError tracebacks for every caller
    from sftlab.errors import SftlabError
    from sftlab.train.rundir import prepare_output_dir

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for write in (lambda: atomic_write_text(blocker / "sub" / "a.txt", "x"),
                  lambda: atomic_dir(blocker / "out").__enter__()):
        with pytest.raises(SftlabError, match=rf"cannot write there, {blocker} is a file, not a directory$"):
            write()
    with pytest.raises(SftlabError, match=rf"^output.dir {blocker}/run: cannot write there, {blocker} is a file"):
        prepare_output_dir(blocker / "run", resume=False, overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no directory can be made")
def test_an_output_dir_that_cannot_be_made_is_one_line():
    from sftlab.errors import SftlabError
    from sftlab.train.rundir import prepare_output_dir

    with pytest.raises(SftlabError, match=r"^output.dir /proc/sftlab-run/x: cannot create it \(No such file or directory\)$"):
        prepare_output_dir(Path("/proc/sftlab-run/x"), resume=False, overwrite=False)
