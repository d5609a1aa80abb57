"""Staging directories that killed writers leave in a file set's output directory (`sftlab.policy.fileset`): the
next `file_set` finishes a swap that had begun, removes a stage whose block never ended, leaves a live writer's
stage alone, and no reader takes a stage for output."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sftlab.policy import fileset


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _stage(out: Path, pid: int | None = None, host: str | None = None, files: dict | None = None,
           old: dict | None = None, rand: str = "abcd1234") -> Path:
    """A staging directory as a writer leaves it: `files` staged, `old` (when given) moved aside into `.old`."""
    tag = rand if pid is None else f"{host or fileset._host()}-{pid}.{rand}"
    stage = out / f"{fileset.STAGE_PREFIX}{tag}.tmp"
    stage.mkdir(parents=True)
    for name, text in (files or {}).items():
        (stage / name).write_text(text)
    if old is not None:
        (stage / ".old").mkdir()
        for name, text in old.items():
            (stage / ".old" / name).write_text(text)
    return stage


def _age(stage: Path, seconds: float) -> None:
    when = time.time() - seconds
    for path in [*stage.rglob("*"), stage]:
        os.utime(path, (when, when), follow_symlinks=False)


def _files(out: Path) -> dict:
    return {path.name: path.read_text() for path in out.iterdir() if path.is_file()}


def _stages(out: Path) -> list[str]:
    return [path.name for path in out.iterdir() if path.name.startswith(fileset.STAGE_PREFIX)]


def test_a_stage_killed_before_its_swap_is_removed_and_out_dir_kept(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    stage = _stage(tmp_path, _dead_pid(), files={"a.txt": "half a"})
    assert fileset.stale_stage(stage)
    assert fileset.recover_stale(tmp_path) == [stage]
    assert _files(tmp_path) == {"a.txt": "old a"} and _stages(tmp_path) == []


@pytest.mark.parametrize("out_files, staged, old", [
    ({"a.txt": "new a"}, {"b.txt": "new b", "m.json": "new m"}, {"a.txt": "old a", "b.txt": "old b", "m.json": "old m"}),
    ({"b.txt": "old b", "m.json": "old m"}, {"a.txt": "new a", "b.txt": "new b", "m.json": "new m"}, {"a.txt": "old a"}),
    ({"a.txt": "old a", "b.txt": "old b", "m.json": "old m"}, {"a.txt": "new a", "b.txt": "new b", "m.json": "new m"}, {}),
])
def test_a_stage_killed_during_its_swap_has_the_swap_finished(tmp_path, out_files, staged, old):
    for name, text in out_files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "notes.txt").write_text("mine")
    _stage(tmp_path, _dead_pid(), files=staged, old=old)
    fileset.recover_stale(tmp_path, last=("m.json",))
    assert _files(tmp_path) == {"a.txt": "new a", "b.txt": "new b", "m.json": "new m", "notes.txt": "mine"}
    assert _stages(tmp_path) == []


def test_live_and_recent_stages_are_left_alone_until_an_hour_passes(tmp_path):
    live = _stage(tmp_path / "live", os.getpid(), files={"a.txt": "writing"})
    remote = _stage(tmp_path / "remote", 1, host="another-machine", files={"a.txt": "writing"})
    older_sftlab = _stage(tmp_path / "older", None, files={"a.txt": "writing"})
    for stage in (live, remote, older_sftlab):
        assert not fileset.stale_stage(stage) and fileset.recover_stale(stage.parent) == []
        assert fileset.stale_stage(stage, now=time.time() + fileset.STALE_AFTER_S + 60)
        (stage / "a.txt").write_text("still writing")  # a change inside counts as activity
        _age(stage, fileset.STALE_AFTER_S - 60)
        assert not fileset.stale_stage(stage)
        _age(stage, fileset.STALE_AFTER_S + 60)
        assert fileset.recover_stale(stage.parent) == [stage] and _stages(stage.parent) == []


def test_file_set_recovers_before_it_writes(tmp_path):
    (tmp_path / "a.txt").write_text("new a")
    _stage(tmp_path, _dead_pid(), files={"b.txt": "new b"}, old={"a.txt": "old a", "b.txt": "old b"})
    _stage(tmp_path, _dead_pid(), files={"junk.txt": "killed before its swap"}, rand="efgh5678")
    with fileset.file_set(tmp_path, last=("b.txt",)) as stage:
        (stage / "c.txt").write_text("newest c")
    assert _files(tmp_path) == {"a.txt": "new a", "b.txt": "new b", "c.txt": "newest c"} and _stages(tmp_path) == []


def test_a_rolled_back_swap_leaves_no_old_folder(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    stage = _stage(tmp_path, os.getpid(), files={"a.txt": "new a", "b.txt": "new b"})
    real = os.replace

    def failing(src, dst):
        if Path(dst) == tmp_path / "b.txt" and Path(src).parent == stage:
            raise OSError("injected")
        real(src, dst)

    monkeypatch.setattr(fileset.os, "replace", failing)
    with pytest.raises(OSError, match="injected"):
        fileset._publish(stage, tmp_path, ())
    assert _files(tmp_path) == {"a.txt": "old a", "b.txt": "old b"} and not (stage / ".old").exists()


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from sftlab.policy import fileset

    out, real, placed = Path(sys.argv[1]), os.replace, []

    def replace(src, dst):  # kill -9 right after the first new file is in place
        real(src, dst)
        if Path(src).parent.name != ".old" and Path(dst).parent == out:
            os.kill(os.getpid(), signal.SIGKILL)

    fileset.os.replace = replace
    with fileset.file_set(out, last=("manifest.json",)) as stage:
        for name in ("a.jsonl", "b.jsonl", "manifest.json"):
            (stage / name).write_text("new " + name)
""")


def test_a_writer_killed_mid_swap_is_completed_by_the_next_run_and_readers_skip_its_stage(tmp_path):
    from sftlab.board.app import _options

    out = tmp_path / "data"
    with fileset.file_set(out) as stage:
        for name in ("a.jsonl", "b.jsonl", "manifest.json"):
            (stage / name).write_text("old " + name)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], capture_output=True)
    assert killed.returncode == -9
    assert _files(out) == {"a.jsonl": "new a.jsonl"} and len(_stages(out)) == 1  # the others wait in .old
    assert _options(tmp_path, tmp_path / "runs")["data_files"] == ["data/a.jsonl"]  # nothing from the stage
    with fileset.file_set(out) as stage:
        (stage / "notes.txt").write_text("next run")
    assert _files(out) == {"a.jsonl": "new a.jsonl", "b.jsonl": "new b.jsonl", "manifest.json": "new manifest.json",
                           "notes.txt": "next run"} and _stages(out) == []
