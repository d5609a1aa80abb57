"""A failed `sftlab train --nproc N` run ends in one error line: the workers' own error, else the launcher's."""

from __future__ import annotations

import os

import pytest

from sftlab.errors import SftlabError
from sftlab.worker_errors import ENV, LostContact, collecting, record, summary


def _record_as(rank: int, exc: SftlabError, monkeypatch) -> None:
    monkeypatch.setenv("RANK", str(rank))
    assert record(exc)


def test_record_is_off_outside_a_launch(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert not record(SftlabError("x"))


def test_the_workers_cause_wins_over_lost_contact_and_exit_codes(monkeypatch):
    with collecting() as errors:
        assert os.environ[ENV] == str(errors)
        _record_as(1, LostContact("rank 1: another training process stopped answering"), monkeypatch)
        _record_as(0, SftlabError("train.jsonl:3: malformed JSON line"), monkeypatch)
        _record_as(2, SftlabError("train.jsonl:3: malformed JSON line"), monkeypatch)
        assert summary(errors, (1, 2, None), 3) == "train.jsonl:3: malformed JSON line"
        _record_as(2, SftlabError("out of memory"), monkeypatch)  # ranks disagree: name the lowest one's rank
        assert summary(errors, (1, 2, None), 3) == "rank 0: train.jsonl:3: malformed JSON line"
        assert not list(errors.glob("*.part"))
    assert ENV not in os.environ or os.environ[ENV] != str(errors)


@pytest.mark.parametrize("lost, first, expected", [
    (True, (1, -9, "SIGKILL"), "training process rank 1 was killed by SIGKILL; the other processes were stopped "
                               "(2 failed in all)"),
    (True, (0, 2, None), "rank 0: another training process stopped answering"),   # a hang: the survivor's report
    (False, (0, 3, None), "training process rank 0 exited with code 3; the other processes were stopped "
                          "(2 failed in all)"),
])
def test_without_a_cause_the_first_failure_decides(lost, first, expected, monkeypatch):
    with collecting() as errors:
        if lost:
            _record_as(0, LostContact("rank 0: another training process stopped answering"), monkeypatch)
        assert summary(errors, first, 2) == expected


def test_the_cli_records_instead_of_printing_in_a_worker(tmp_path, monkeypatch, capsys):
    from sftlab.cli import main

    monkeypatch.setenv(ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert main(["data", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err == ""
    assert "missing.jsonl" in (tmp_path / "1.json").read_text(encoding="utf-8")
