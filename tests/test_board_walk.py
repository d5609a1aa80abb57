"""The board on run directories met in practice: broken metrics, records and configs, NaN metrics, broken eval
results; and `sftlab board` itself with a port in use, a bad port, or a runs directory that is a file."""

import json
import time
import socket
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from sftlab.board import forms
from sftlab.board.app import BoardSettings, create_app
from sftlab.cli import main

CONFIG = {"model": {"path": "m"}, "data": {"train": "t"}, "train": {"max_steps": 4}}
ROWS = "".join(json.dumps({"step": s, "loss": 2.0 / s, "lr": 0.1, "epoch": s / 4}) + "\n" for s in range(1, 5))


def _run(runs: Path, name: str, files: dict) -> None:
    """A run dir with a config.yaml and `files` (relative path -> text or bytes)."""
    (runs / name).mkdir(parents=True)
    files = {"config.yaml": yaml.safe_dump(CONFIG), "metrics.jsonl": ROWS} | files
    for rel, content in files.items():
        path = runs / rel if rel.startswith(".board/") else runs / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


BROKEN = [
    ({"metrics.jsonl": ROWS + "[1, 2]\n"}, "metrics.jsonl:5: expected a JSON object, got list"),
    ({"metrics.jsonl": '{"loss": 1.0}\n' + ROWS}, "metrics.jsonl:1: no field 'step'"),
    ({"metrics.jsonl": '{"step": "x", "loss": 1.0}\n'}, "metrics.jsonl:1: field 'step' is \"x\""),
    ({"metrics.jsonl": '{"step": 1\n' + ROWS}, "metrics.jsonl:1: not valid JSON"),
    ({"metrics.json": "[1]"}, "metrics.json: expected a JSON object, got list"),
    ({"metrics.json": b'{"a": "\xff"}'}, "metrics.json: not UTF-8 text"),
    ({".board/bad.exit.json": "[0]"}, "bad.exit.json: expected a JSON object, got list"),
    ({"config.yaml": "model: x\ntrain: [1, 2]\n"}, "config.yaml: model: expected a mapping of settings"),
]


@pytest.mark.parametrize("files, message", BROKEN)
def test_one_broken_run_is_listed_as_unreadable_and_its_pages_answer_400(tmp_path, files, message):
    runs = tmp_path / "runs"
    _run(runs, "good", {})
    _run(runs, "bad", files)
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        listed = client.get("/api/runs")
        assert listed.status_code == 200
        rows = {row["name"]: row for row in listed.json()}
        assert rows["good"]["status"] == "new" and rows["good"]["step"] == 4 and rows["good"]["total_steps"] == 4
        assert rows["bad"]["status"] == "unreadable" and message in rows["bad"]["error"]
        assert len(rows["bad"]["error"].splitlines()) == 1
        for url in ("/api/runs/bad", "/api/compare?runs=good,bad"):
            answer = client.get(url)
            assert answer.status_code == 400 and message in answer.json()["error"], url


def test_a_run_in_progress_shows_the_rows_written_so_far(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "live", {"metrics.jsonl": ROWS + '{"step": 5, "lo'})
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        detail = client.get("/api/runs/live").json()
    assert detail["step"] == 4 and len(detail["rows"]) == 4


def test_nan_and_infinite_metrics_are_sent_as_null_not_a_server_error(tmp_path):
    runs = tmp_path / "runs"
    rows = ROWS + '{"step": 5, "loss": NaN, "lr": Infinity}\n{"step": 5, "eval": true, "loss": -Infinity}\n'
    _run(runs, "diverged", {"metrics.jsonl": rows, "metrics.json": '{"train_loss": NaN, "stopped": "completed"}'})
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        for url in ("/api/runs", "/api/runs/diverged", "/api/compare?runs=diverged"):
            answer = client.get(url)
            assert answer.status_code == 200, url
            json.loads(answer.text, parse_constant=lambda name: pytest.fail(f"{url} sent {name}"))
        detail = client.get("/api/runs/diverged").json()
    assert detail["rows"][4] == {"step": 5, "loss": None, "lr": None} and detail["eval_loss"] is None
    assert detail["metrics"]["train_loss"] is None and detail["loss"] is None
    # null must not be drawn as 0: isFinite(null) is true in JavaScript, Number.isFinite(null) is false
    chart = (Path(forms.__file__).parent / "static" / "chart.js").read_text(encoding="utf-8")
    assert "filter(p => isFinite(" not in chart and chart.count("Number.isFinite(p[1])") == 2


@pytest.mark.parametrize("train, rows, total", [
    ({"max_steps": "abc"}, ROWS, 4),  # not a number: the epoch estimate (1 epoch = 4 steps) instead
    ({"max_steps": None, "epochs": "x"}, ROWS, None),
    ({"max_steps": None, "epochs": 2}, '{"step": 3, "loss": 1.0, "epoch": "a"}\n', None),
    ({"max_steps": None, "epochs": 2}, '{"step": 3, "loss": 1.0, "epoch": 0}\n', None),
    ({"max_steps": None, "epochs": 2}, '{"step": 3, "loss": 1.0, "epoch": 0.5}\n', 12),
])
def test_odd_numbers_in_a_config_or_row_give_no_total_rather_than_an_error(tmp_path, train, rows, total):
    runs = tmp_path / "runs"
    _run(runs, "odd", {"config.yaml": yaml.safe_dump(CONFIG | {"train": train}), "metrics.jsonl": rows})
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        answer = client.get("/api/runs/odd")
    assert answer.status_code == 200 and answer.json()["total_steps"] == total


def test_a_broken_eval_result_is_shown_with_its_error_beside_the_good_ones(tmp_path):
    runs = tmp_path / "runs"
    good = json.dumps({"task": "lm", "metrics": {"loss": 1.5}, "baselines": {}})
    _run(runs, "r", {"eval-lm/metrics.json": good, "eval-labels/metrics.json": "[1]"})
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        results = client.get("/api/runs/r").json()["evals"]["results"]
    assert results["lm"]["metrics"] == {"loss": 1.5}
    assert results["labels"]["error"].endswith("eval-labels/metrics.json: expected a JSON object, got list")


def test_board_command_refuses_a_port_in_use_a_bad_port_and_a_runs_dir_that_is_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["board", "--port", str(port), "--runs-dir", "runs"]) == 2
    out, err = capsys.readouterr()
    assert "sftlab board on" not in out  # no banner for a board that never listened
    assert err.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another port (--port) or host"
    assert main(["board", "--port", "99999"]) == 2
    assert capsys.readouterr().err.strip() == "error: --port 99999: expected a port number from 0 to 65535"
    (tmp_path / "afile").write_text("x")
    assert main(["board", "--port", "0", "--runs-dir", "afile"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --runs-dir afile: a file, not a directory")


def test_shutdown_records_the_exit_code_of_the_training_jobs_it_stopped(tmp_path):
    """The board's exit: SIGINT to its training jobs, and their exit code (130: stopped with a checkpoint) in
    RUNS/.board/NAME.exit.json before it returns, not left to a watching thread that the exit cuts short."""
    from sftlab.board.runs import RunManager

    fake = tmp_path / "fake-python"  # stands in for `python -m sftlab train`: exits 130 on SIGINT, as training does
    ready = tmp_path / "ready"  # SIGINT before the trap is set would kill the shell (code -2): wait for it
    fake.write_text(f"#!/bin/sh\ntrap 'exit 130' INT\ntouch {ready}\nwhile true; do sleep 0.05; done\n")
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "r.yaml").write_text(yaml.safe_dump(CONFIG))
    manager = RunManager(runs, python=str(fake))
    manager.launch("r")
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    manager.shutdown(timeout_s=10)
    assert json.loads((runs / ".board" / "r.exit.json").read_text())["code"] == 130
    assert manager.status("r") == "new"  # no checkpoint in this fake run, but not "failed"


def test_a_run_resumed_elsewhere_to_train_further_shows_stopped_with_its_new_total(tmp_path):
    """Its earlier metrics.json (step 4, completed) stays until it ends again; its resolved config.yaml has the
    new train.max_steps, the board's NAME.yaml the old one."""
    runs = tmp_path / "runs"
    rows = ROWS + json.dumps({"step": 5, "loss": 0.4}) + "\n"
    _run(runs, "longer", {"metrics.jsonl": rows, "metrics.json": '{"step": 4, "stopped": "completed"}',
                          "config.yaml": yaml.safe_dump(CONFIG | {"train": {"max_steps": 8}})})
    (runs / "longer.yaml").write_text(yaml.safe_dump(CONFIG))
    (runs / "longer" / "checkpoints" / "step-4").mkdir(parents=True)
    (runs / "longer" / "checkpoints" / "step-4" / "sftlab_state.json").write_text("{}")
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        [row] = client.get("/api/runs").json()
    assert (row["status"], row["step"], row["total_steps"]) == ("stopped", 5, 8)
