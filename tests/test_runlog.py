"""The run's progress where stderr is no terminal: plain lines instead of tqdm's bar, and none with --no-progress."""

from __future__ import annotations

import json

import pytest

from sftlab.errors import SftlabError
from sftlab.train import runlog
from sftlab.train.runlog import keep_rows_up_to


def _rows(count: int):
    return [{"step": step, "loss": 2.0 / step, "lr": 1e-4, "grad_norm": 1.0, "supervised_tokens": 10, "epoch": 0.1}
            for step in range(1, count + 1)]


def test_without_a_terminal_a_line_for_the_first_step_then_at_most_every_interval_and_the_last(tmp_path, capsys,
                                                                                               monkeypatch):
    assert runlog.PLAIN_LINE_EVERY_S == 30.0  # docs/train.md says so
    log = runlog.RunLog(tmp_path, total_steps=5, start_step=0, tensorboard=False)
    monkeypatch.setattr(runlog, "PLAIN_LINE_EVERY_S", 3600.0)
    for row in _rows(5):
        log.count_tokens(100, 0.5)
        log.step(row, write=True)
    monkeypatch.setattr(runlog, "PLAIN_LINE_EVERY_S", 0.0)
    log.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 1/5", "step 5/5"]
    assert lines[1].startswith("step 5/5: loss 0.4000, lr 0.0001, ") and lines[1].endswith(" tokens/s")
    assert len((tmp_path / runlog.METRICS_FILE).read_text().splitlines()) == 5  # the file still gets every row


def test_every_written_row_gets_a_line_once_the_interval_has_passed_and_no_progress_prints_none(tmp_path, capsys,
                                                                                                 monkeypatch):
    monkeypatch.setattr(runlog, "PLAIN_LINE_EVERY_S", 0.0)
    log = runlog.RunLog(tmp_path / "a", total_steps=4, start_step=0, tensorboard=False)
    for row in _rows(4):
        log.step(row, write=row["step"] % 2 == 0)  # train.log_every_n_steps 2: rows 2 and 4 only
    log.close()
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == ["step 2/4", "step 4/4"]
    quiet = runlog.RunLog(tmp_path / "b", total_steps=4, start_step=0, tensorboard=False, show_bar=False)
    for row in _rows(4):
        quiet.step(row, write=True)
    quiet.close()
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "b" / runlog.METRICS_FILE).read_text().splitlines()[-1])["step"] == 4


def test_resume_drops_a_last_line_cut_short_and_names_a_broken_one(tmp_path):
    # a run killed while writing a row left '{"step": 3, "lo' without a newline: resume crashed on it with a
    # JSONDecodeError traceback
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 2, "eval": true, "loss": 1.7}\n'
                    '{"step": 3, "lo', encoding="utf-8")
    keep_rows_up_to(tmp_path, 2)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval": True, "loss": 1.7}]
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(SftlabError, match=r"metrics\.jsonl:2: not valid JSON"):
        keep_rows_up_to(tmp_path, 3)
    assert path.read_text(encoding="utf-8").startswith('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n')  # left as it was
