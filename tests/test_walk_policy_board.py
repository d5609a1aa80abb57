"""The board answers bad requests with its one-line 400 (never a 500), and its policy page never creates a database."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from sftlab.board.app import BoardSettings, create_app
from sftlab.cli import main

ROWS = [{"messages": [{"role": "user", "content": f"问{i}"}, {"role": "assistant", "content": f"答{i}"}]} for i in range(4)]
FIELDS = {"model.path": "base", "data.train": "train.jsonl", "train.max_steps": "3", "strategy.kind": "full"}


@pytest.fixture
def client(tmp_path):
    from sftlab.models.tiny import save_tiny

    save_tiny("qwen2", tmp_path / "base", hidden=32, layers=1)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    run = tmp_path / "runs" / "done"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  path: x\ndata:\n  train: t\n", encoding="utf-8")
    app = create_app(BoardSettings(runs_dir=tmp_path / "runs", workdir=tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("method, path, body, message", [
    ("post", "/api/form/check", {"name": "r", "fields": ["a"]}, "fields: expected an object of form fields, got list"),
    ("post", "/api/form/preview", {"name": "r", "fields": FIELDS, "count": "abc"}, "count: expected an integer, got 'abc'"),
    ("post", "/api/runs/done/eval", {"data": "train.jsonl", "max_samples": "abc"}, "max_samples: expected an integer, got 'abc'"),
    ("post", "/api/runs/done/eval", {"data": "train.jsonl", "max_samples": 0}, "max_samples: must be at least 1, got 0"),
    ("post", "/api/runs/done/eval", {"data": "train.jsonl", "task": "bleu"},
     "eval task 'bleu': choose one of lm, generation, labels, ranking"),
    ("post", "/api/runs/done/chat", {"messages": [], "max_tokens": "many"}, "max_tokens: expected an integer, got 'many'"),
    ("post", "/api/runs/done/chat", {"messages": [], "temperature": "nan"}, "temperature: must be at least 0, got 'nan'"),
    ("post", "/api/runs/done/chat", {"messages": "hi"}, "messages: expected a list of chat messages, got str"),
    ("post", "/api/form/check", [1, 2], "body: Input should be a valid dictionary"),
])
def test_bad_values_answer_400_with_the_boards_message(client, method, path, body, message):
    answer = getattr(client, method)(path, json=body)
    assert answer.status_code == 400 and answer.json() == {"error": message, "field": answer.json()["field"]}, answer.text


def test_a_body_that_is_not_json_is_a_400_naming_the_body(client):
    answer = client.post("/api/form/check", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"].startswith("body: JSON decode error (Expecting")
    assert answer.json()["field"] == "_form"


def test_policy_page_never_creates_a_database_and_names_database_errors(tmp_path, monkeypatch):
    from sqlalchemy import create_engine, text

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SFTLAB_DB_URL", raising=False)
    with TestClient(create_app(BoardSettings(runs_dir=tmp_path / "runs")), raise_server_exceptions=False) as client:
        for path in ("/api/policy", "/api/policy/E1"):
            answer = client.get(path)
            assert answer.status_code == 400 and answer.json()["field"] == "_form"
            assert answer.json()["error"].startswith("database sqlite:///sftlab_policy.db: no such file; run `sftlab policy")
    assert not list(tmp_path.glob("sftlab_policy.db*"))
    empty = tmp_path / "other.db"
    with create_engine(f"sqlite:///{empty}").begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    settings = BoardSettings(runs_dir=tmp_path / "runs", policy_db=f"sqlite:///{empty}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for path in ("/api/policy", "/api/policy/E1"):
            answer = client.get(path)
            assert answer.status_code == 400 and answer.json()["field"] == "_form", answer.text
            assert "OperationalError: no such table" in answer.json()["error"] and "\n" not in answer.json()["error"]


def test_board_refuses_a_policy_report_without_metrics(tmp_path, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the board started serving"))
    assert main(["board", "--policy-report", str(tmp_path / "nope"), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --policy-report {tmp_path / 'nope'}: no metrics.json there; give the report directory of " \
                  "`sftlab policy evaluate` or `sftlab policy baselines`\n"


@pytest.mark.parametrize("change, field", [({"data.train": "nope.jsonl"}, "data.train"),
                                           ({"data.validation": "sub/valid.jsonl"}, "data.validation")])
def test_a_missing_data_file_is_refused_under_its_field_before_a_run_is_written(client, tmp_path, change, field):
    for path in ("/api/form/check", "/api/runs"):
        answer = client.post(path, json={"name": "r2", "fields": {**FIELDS, **change}})
        assert answer.status_code == 400 and answer.json()["field"] == field
        assert answer.json()["error"] == f"{field}: data file not found: {tmp_path / next(iter(change.values()))}"
    assert not (tmp_path / "runs" / "r2.yaml").exists() and not (tmp_path / "runs" / "r2").exists()


def test_runs_with_chinese_names_are_listed_and_their_config_downloads(tmp_path):
    runs = tmp_path / "runs"
    (runs / "实验1").mkdir(parents=True)
    (runs / "实验1" / "config.yaml").write_text("model:\n  path: 模型\ndata:\n  train: t\n", encoding="utf-8")
    (runs / "my run.yaml").write_text("model:\n  path: x\n", encoding="utf-8")
    (runs / "latin1.yaml").write_bytes("model:\n  path: caf\xe9\n".encode("latin-1"))
    with TestClient(create_app(BoardSettings(runs_dir=runs)), raise_server_exceptions=False) as client:
        listed = {row["name"]: row for row in client.get("/api/runs").json()}
        assert listed["实验1"]["status"] == "new" and listed["实验1"]["model"] == "模型"
        assert listed["my run"]["status"] == "unreadable" and listed["my run"]["error"].startswith("run name 'my run': use")
        assert listed["latin1"]["status"] == "unreadable" and listed["latin1"]["error"].endswith("not UTF-8 text")
        assert client.get("/api/runs/实验1").status_code == 200
        download = client.get("/api/runs/实验1/config.yaml")
        assert download.status_code == 200 and download.content.decode("utf-8").startswith("model:\n  path: 模型")
        assert "filename*=UTF-8''%E5%AE%9E%E9%AA%8C1.yaml" in download.headers["content-disposition"]
        raw = client.get("/api/runs/latin1/config.yaml")
        assert raw.status_code == 200 and raw.content == "model:\n  path: caf\xe9\n".encode("latin-1")
        assert client.get("/api/runs/bad%0A/config.yaml").status_code == 400  # a name with a newline
