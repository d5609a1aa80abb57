"""`sftlab plan --json PATH`: a path that cannot be written is refused in one line before the plan is computed.

The plan of a real model takes minutes (each strategy's model, auto's scoring, the probe); a `--json` that names a
directory, or a file under an existing file, used to fail only after all of it, with the plan already printed.
"""

from __future__ import annotations

import pytest
import yaml

from test_plan import tiny_config


@pytest.mark.parametrize("where, words", [("dir", "is a directory"), ("under-file", "is a file, not a directory")])
def test_an_unwritable_json_path_is_refused_before_any_work(tmp_path, capsys, monkeypatch, where, words):
    from sftlab.cli import main
    from sftlab.plan import planner

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, hidden=32, layers=1)), encoding="utf-8")
    (tmp_path / "file.txt").write_text("mine", encoding="utf-8")
    target = tmp_path / "out" if where == "dir" else tmp_path / "file.txt" / "plan.json"
    (tmp_path / "out").mkdir()
    built = []
    capsys.readouterr()  # save_tiny's own progress bar
    monkeypatch.setattr(planner, "build_plan", lambda *a, **k: built.append(1))
    assert main(["plan", str(config), "--strategies", "full", "--json", str(target)]) == 2
    captured = capsys.readouterr()
    assert not built and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --json {target}") and words in lines[0]
    assert (tmp_path / "file.txt").read_text(encoding="utf-8") == "mine"
