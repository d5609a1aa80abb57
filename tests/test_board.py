"""The board without a browser: form -> YAML, CLI-identical errors by field, run states, compare, chat, auth, policy, i18n."""

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from sftlab.board import forms
from sftlab.board.app import BoardSettings, create_app
from sftlab.board.runs import Job, RunManager, estimate_total_steps
from sftlab.cli import main
from sftlab.config import load_config
from sftlab.errors import SftlabError

STATIC = Path(forms.__file__).parent / "static"
I18N = Path(forms.__file__).parent / "i18n"
ROWS = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i} ok"}]} for i in range(4)]


@pytest.fixture
def workspace(tmp_path):
    from sftlab.models.tiny import save_tiny

    save_tiny("qwen2", tmp_path / "base", hidden=32, layers=1)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return tmp_path


@pytest.fixture
def client(workspace):
    with TestClient(create_app(BoardSettings(runs_dir=workspace / "runs", workdir=workspace))) as client:
        yield client


FIELDS = {"model.path": "base", "data.train": "train.jsonl", "train.max_steps": "3", "train.lr": "2e-5",
          "strategy.kind": "lora", "strategy.lora.rank": "4", "strategy.auto.budget": "0.2", "data.format": ""}


def test_form_writes_an_ordinary_config_that_the_cli_loads(client, workspace):
    answer = client.post("/api/form/check", json={"name": "r1", "fields": FIELDS}).json()
    raw = yaml.safe_load(answer["yaml"])
    assert raw == {"model": {"path": str(workspace / "base")}, "data": {"train": str(workspace / "train.jsonl")},
                   "strategy": {"kind": "lora", "lora": {"rank": 4}},  # auto.budget is not the chosen strategy's
                   "train": {"max_steps": 3, "lr": 2e-5},
                   "output": {"dir": str(workspace / "runs" / "r1"), "tensorboard": False}}
    config = workspace / "copy.yaml"
    config.write_text(answer["yaml"], encoding="utf-8")
    cfg = load_config(config)
    assert cfg.strategy.lora.rank == 4 and cfg.train.lr == 2e-5 and cfg.output.dir == str(workspace / "runs" / "r1")
    assert answer["config_file"] == str(workspace / "runs" / "r1.yaml") and not Path(answer["config_file"]).exists()
    (workspace / "runs" / "r1").mkdir(parents=True)
    (workspace / "runs" / "r1" / "notes.txt").write_text("mine")
    taken = client.post("/api/runs", json={"name": "r1", "fields": FIELDS}).json()
    assert taken["field"] == "name" and "already exists" in taken["error"] and not Path(answer["config_file"]).exists()


@pytest.mark.slow
def test_planner_table_and_recommendation_before_launch(client):
    answer = client.post("/api/form/plan", json={"name": "p", "fields": {**FIELDS, "train.batch_size": "2"}}).json()
    assert "recommendation:" in answer["output"] and "lora" in answer["output"], answer
    assert answer["command"].startswith("sftlab plan ") and answer["command"].endswith("plan-p.yaml")


@pytest.mark.parametrize("change, field", [
    ({"train.lr": "-1"}, "train.lr"),
    ({"train.stage": "dpo"}, "train.stage"),
    ({"strategy.lora.rank": "0"}, "strategy.lora.rank"),
    ({"strategy.kind": "freeze", "strategy.freeze.layers": "[1"}, "strategy.freeze.layers"),  # passed Check before
    ({"strategy.kind": "freeze", "strategy.freeze.layers": "last:0"}, "strategy.freeze.layers"),
    ({"extra": "train.lrr=3"}, "extra"),
    ({"extra": "data.split=stratified\ntrain.stage=pt"}, "extra"),
])
def test_invalid_choices_show_the_cli_message_next_to_the_field(client, workspace, capsys, change, field):
    answer = client.post("/api/form/check", json={"name": "bad", "fields": {**FIELDS, **change}})
    assert answer.status_code == 400 and answer.json()["field"] == field
    raw = forms.form_to_raw({**FIELDS, **change}, workspace / "runs" / "bad", workspace)
    config = workspace / "bad.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(config)]) == 2
    cli = capsys.readouterr().err.strip()
    assert cli.removeprefix(f"error: {config}: ") == answer.json()["error"].removeprefix("config: ")


def test_missing_model_data_and_bad_name_point_at_their_fields(client):
    answer = client.post("/api/form/check", json={"name": "x", "fields": {**FIELDS, "model.path": "nowhere"}}).json()
    assert answer == {"error": "model.path 'nowhere': no such directory", "field": "model.path"}
    answer = client.post("/api/form/preview", json={"name": "x", "fields": {**FIELDS, "data.train": "no.jsonl"}}).json()
    assert answer["field"] == "data.train" and answer["error"].startswith("data file not found:")
    assert client.post("/api/form/check", json={"name": "a b", "fields": FIELDS}).json()["field"] == "name"


def test_check_and_launch_with_a_gguf_model_check_the_file_and_leave_converting_to_training(client, workspace,
                                                                                              monkeypatch):
    """Check converted the GGUF inside the request (`resolve_model_path`): minutes for a real model."""
    from sftlab.models import load
    from sftlab.models.tiny import save_tiny_gguf

    monkeypatch.setenv("SFTLAB_HOME", str(workspace / "home"))
    converted, launched = [], []
    monkeypatch.setattr(load, "import_gguf_cached", lambda path: converted.append(path) or workspace / "base")
    monkeypatch.setattr(RunManager, "launch", lambda self, name, resume=False: launched.append(name))
    save_tiny_gguf(workspace / "tiny.gguf")
    gguf = {**FIELDS, "model.path": "tiny.gguf"}
    answer = client.post("/api/form/check", json={"name": "g", "fields": gguf})
    assert answer.status_code == 200 and yaml.safe_load(answer.json()["yaml"])["model"]["path"] == str(workspace / "tiny.gguf")
    assert answer.json()["notes"] == [
        f"model.path '{workspace / 'tiny.gguf'}' is a GGUF file: it is not converted now; the run converts it when "
        f"training starts (minutes for a large model), once, into {workspace / 'home' / 'models' / 'gguf'}, where "
        "later runs find it"]
    assert client.post("/api/runs", json={"name": "g", "fields": gguf}).status_code == 200 and launched == ["g"]
    assert converted == [] and not (workspace / "home").exists()
    assert client.post("/api/form/check", json={"name": "x", "fields": FIELDS}).json()["notes"] == []
    (workspace / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    for name, message in (("fake.gguf", "not a GGUF file (it does not start with the bytes 'GGUF')"),
                          ("gone.gguf", "GGUF file not found")):
        for path in ("/api/form/check", "/api/runs"):
            answer = client.post(path, json={"name": "x", "fields": {**FIELDS, "model.path": name}})
            assert answer.status_code == 400 and answer.json() == {
                "error": f"model.path '{workspace / name}': {message}", "field": "model.path"}
    assert converted == [] and launched == ["g"] and not (workspace / "runs" / "x.yaml").exists()


def test_preview_highlights_supervised_tokens(client):
    answer = client.post("/api/form/preview", json={"name": "p", "fields": {**FIELDS, "data.template": "chatml"}}).json()
    first = answer["samples"][0]
    supervised = "".join(text for text, flag in first["pieces"] if flag)
    number = re.fullmatch(r"a(\d) ok<\|im_end\|>", supervised).group(1)  # only the answer and its end-of-turn
    assert f"<|im_start|>user\nq{number}<|im_end|>" in "".join(text for text, flag in first["pieces"] if not flag)
    assert 0 < first["supervised"] < first["tokens"] and first["ratio"] == round(first["supervised"] / first["tokens"], 4)
    assert "chatml" in answer["template"] and answer["summary"].startswith("train: 4 rows from 4 examples")


def _fake_run(runs: Path, name: str, steps: int, exit_code: int | None, final: bool, checkpoint: bool, epochs=None):
    (runs / name).mkdir(parents=True)
    train = {"max_steps": steps} if epochs is None else {"epochs": epochs}
    (runs / f"{name}.yaml").write_text(yaml.safe_dump({"model": {"path": "m"}, "data": {"train": "t"}, "train": train}))
    rows = [{"step": s, "loss": 2.0 / s, "lr": 0.1, "tokens_per_s": 100.0, "epoch": s / 4} for s in range(1, steps + 1)]
    rows.append({"step": steps, "eval": True, "loss": 1.5})
    (runs / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')
    if final:
        (runs / name / "metrics.json").write_text(json.dumps({"step": steps, "train_loss": 1.0, "stopped": "completed"}))
        (runs / name / "model").mkdir()
        (runs / name / "model" / "README.md").write_text("## Strategy\n\n- kind: full\n- trainable 10 / 10 (100%)\n\n## Training\n")
    if checkpoint:  # complete (with its sidecar), or "partial": a step directory being written
        (runs / name / "checkpoints" / f"step-{steps}").mkdir(parents=True)
        if checkpoint != "partial":
            (runs / name / "checkpoints" / f"step-{steps}" / "sftlab_state.json").write_text("{}")
    if exit_code is not None:
        (runs / ".board").mkdir(exist_ok=True)
        (runs / ".board" / f"{name}.exit.json").write_text(json.dumps({"code": exit_code}))


def test_run_states_summary_and_total_steps(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "done", 4, 0, final=True, checkpoint=True)
    _fake_run(runs, "halted", 2, 130, final=False, checkpoint=True)
    _fake_run(runs, "broken", 1, 1, final=False, checkpoint=False)
    _fake_run(runs, "fresh", 0, None, final=False, checkpoint=False)
    _fake_run(runs, "killed", 1, 130, final=False, checkpoint="partial")  # stopped while writing its first checkpoint
    manager = RunManager(runs)
    assert {n: manager.status(n) for n in manager.names()} == {
        "broken": "failed", "done": "completed", "fresh": "new", "halted": "stopped", "killed": "new"}
    assert not manager.detail("killed")["resumable"]
    detail = manager.detail("halted")
    assert detail["resumable"] and detail["step"] == 2 and detail["eval_loss"] == 1.5  # half-written line skipped
    assert not manager.detail("done")["resumable"] and "trainable 10 / 10" in manager.detail("done")["card"]
    job = Job("train", process=None, log_path=runs / "x.log", progress=[(100.0, 2), (110.0, 7)])
    assert RunManager._eta(job, {"total_steps": 17}) == 20.0  # 2 s per step seen, 10 steps to go
    rows = [{"step": 3, "epoch": 0.75}]
    assert estimate_total_steps({"train": {"epochs": 2}}, rows) == 8 and estimate_total_steps({"train": {}}, []) is None
    # 3 steps an epoch, logged as 0.3333: 2 epochs are 6 steps, not 7; 1.5 epochs of 3 steps round up to 5
    assert estimate_total_steps({"train": {"epochs": 2}}, [{"step": 1, "epoch": 0.3333}]) == 6
    assert estimate_total_steps({"train": {"epochs": 2}}, [{"step": 2, "epoch": 0.6667}]) == 6
    assert estimate_total_steps({"train": {"epochs": 1.5}}, [{"step": 1, "epoch": 0.3333}]) == 5


def test_a_run_with_an_unreadable_config_is_listed_not_fatal(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "done", 4, 0, final=True, checkpoint=True)
    _fake_run(runs, "mangled", 1, None, final=False, checkpoint=False)
    (runs / "mangled.yaml").write_text("train: [1, 2\nmodel: x\n", encoding="utf-8")
    manager = RunManager(runs)
    rows = {row["name"]: row for row in manager.summaries()}
    assert rows["done"]["status"] == "completed" and "error" not in rows["done"]
    assert rows["mangled"]["status"] == "unreadable" and rows["mangled"]["step"] == 0
    assert rows["mangled"]["error"].startswith(f"{runs / 'mangled.yaml'}:2: not valid YAML (")
    with pytest.raises(SftlabError, match="not valid YAML"):
        manager.summary("mangled")  # the run's own page still says why


def test_runs_list_compare_and_config_download(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "a", 4, 0, final=True, checkpoint=False)
    _fake_run(runs, "b", 3, 0, final=True, checkpoint=False)
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        listed = client.get("/api/runs").json()
        assert [(r["name"], r["status"], r["step"], r["total_steps"]) for r in listed] == [("a", "completed", 4, 4),
                                                                                         ("b", "completed", 3, 3)]
        rows = client.get("/api/compare", params={"runs": "a,b"}).json()
        assert [r["trainable"] for r in rows] == ["trainable 10 / 10 (100%)"] * 2
        assert [len(r["rows"]) for r in rows] == [5, 4] and rows[0]["final"]["train_loss"] == 1.0
        download = client.get("/api/runs/a/config.yaml")
        assert download.text == (runs / "a.yaml").read_text() and "attachment" in download.headers["content-disposition"]
        assert client.post("/api/runs/a/stop").json()["error"] == "run 'a' is not running"
        page = client.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text


def test_chat_streams_with_the_training_template(tmp_path):
    from sftlab.infer.prompts import render_chat
    from sftlab.models.load import load_tokenizer
    from sftlab.config.schema import ModelConfig
    from sftlab.models.tiny import save_tiny

    run = tmp_path / "runs" / "chatty"
    save_tiny("qwen2", run / "model", hidden=32, layers=1)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"path": "x"}, "data": {"train": "t", "template": "chatml"}}))
    messages = [{"role": "user", "content": "hello there"}]
    with TestClient(create_app(BoardSettings(runs_dir=tmp_path / "runs", workdir=tmp_path))) as client:
        with client.stream("POST", "/api/runs/chatty/chat", json={"messages": messages, "max_tokens": 5}) as response:
            events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]
        done = events[-1].get("done")
        assert done, events
        assert done["template"] == "chatml" and done["completion_tokens"] <= 5
        expected = render_chat(load_tokenizer(ModelConfig(path=str(run / "model"))), messages, "chatml")
        assert done["prompt_tokens"] == len(expected)  # the prompt is rendered exactly as in training
        assert all("delta" in e for e in events[:-1])
        (run.parent / "nomodel").mkdir()
        (run.parent / "nomodel" / "config.yaml").write_text((run / "config.yaml").read_text())
        missing = client.post("/api/runs/nomodel/chat", json={"messages": messages})
        assert missing.status_code == 400 and "no model/ yet" in missing.json()["error"]
        (run.parent / "labels.yaml").write_text(yaml.safe_dump({"model": {"path": "x"}, "data": {"train": "t"},
                                                                "train": {"stage": "cls"}}))
        refused = client.post("/api/runs/labels/chat", json={"messages": messages}).json()["error"]
        assert refused == "run 'labels' is a classifier (train.stage=cls); chat needs a pt or sft run"


def test_auth_off_loopback(tmp_path, monkeypatch):
    from sftlab.commands.board import api_keys_for
    from sftlab.errors import SftlabError

    monkeypatch.delenv("SFTLAB_API_KEYS", raising=False)
    assert api_keys_for("127.0.0.1", None) == [] and api_keys_for("localhost", None) == []
    with pytest.raises(SftlabError, match="set API keys"):
        api_keys_for("0.0.0.0", None)
    assert main(["board", "--host", "0.0.0.0", "--runs-dir", str(tmp_path / "runs")]) == 2  # refuses to start
    monkeypatch.setenv("SFTLAB_API_KEYS", "k1,k2")
    assert api_keys_for("0.0.0.0", None) == ["k1", "k2"]
    with TestClient(create_app(BoardSettings(runs_dir=tmp_path / "runs", api_keys=["k1"]))) as client:
        assert client.get("/api/runs").status_code == 401
        assert client.get("/", follow_redirects=False).headers["location"] == "/login"
        assert client.get("/api/runs", headers={"Authorization": "Bearer k1"}).json() == []
        assert client.post("/login", data={"key": "wrong"}).status_code == 401
        client.post("/login", data={"key": "k1"}, follow_redirects=False)
        assert client.get("/api/runs").status_code == 200  # the login cookie


def test_loopback_board_accepts_only_local_host_names(tmp_path):
    settings = BoardSettings(runs_dir=tmp_path / "runs", allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(create_app(settings), base_url="http://localhost:7860") as client:
        assert client.get("/api/runs").json() == []
        assert client.get("/api/runs", headers={"host": "evil.example:7860"}).status_code == 400  # DNS rebinding


def test_policy_page_data(tmp_path):
    from sftlab.policy.baselines import category_frequency
    from sftlab.policy.db import open_db
    from sftlab.policy.evaluate import run_evaluation
    from sftlab.policy.examples import build_data
    from sftlab.policy.push import push
    from sftlab.policy.simulate import WorldSpec, simulate, write_world

    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = open_db(url)
    write_world(engine, simulate(WorldSpec(n_enterprises=20, n_policies=60, days=200, seed=3)))
    build_data(engine, tmp_path / "data", None, max_train=200, category_limit=50)
    results, _ = run_evaluation(engine, tmp_path / "data", tmp_path / "report")
    model = tmp_path / "run"
    (model / "model").mkdir(parents=True)
    (model / "model" / "README.md").write_text("## Strategy\n\n- kind: auto\n- auto: 3 of 9 units by fisher\n")
    push(engine, category_frequency().score, datetime(2025, 6, 1), 3, str(model), now=datetime(2025, 7, 15))
    with TestClient(create_app(BoardSettings(runs_dir=tmp_path / "runs", policy_db=url,
                                             policy_report=str(tmp_path / "report")))) as client:
        overview = client.get("/api/policy").json()
        written = json.loads((tmp_path / "report" / "metrics.json").read_text())["results"]
        assert overview["results"] == written and set(written) == set(results) and overview["enterprises"]
        first = overview["enterprises"][0]
        detail = client.get(f"/api/policy/{first['id']}").json()
        assert len(detail["pushes"]) == first["pushes"] and all(p["reason"] and p["title"] for p in detail["pushes"])
        assert [p["rank"] for p in detail["pushes"]] == list(range(1, first["pushes"] + 1))
        assert detail["models"][str(model)]["strategy"] == "- kind: auto\n- auto: 3 of 9 units by fisher"
        assert client.get("/api/policy/NOPE").json()["error"] == "enterprise 'NOPE' is not in the database"


def test_strings_complete_and_assets_offline():
    en, zh = (json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8")) for lang in ("en", "zh"))
    assert en.keys() == zh.keys() and all(zh.values()) and all(en.values())
    assert sum(re.search(r"[\u4e00-\u9fff]", value) is not None for value in zh.values()) > len(zh) * 0.8
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    scripts = "".join(p.read_text(encoding="utf-8") for p in STATIC.glob("*.js"))
    used = set(re.findall(r'data-i18n(?:-placeholder)?="([^"]+)"', html)) | set(re.findall(r'\bt\("([a-z_.]+)"\)', scripts))
    used |= {f"status.{s}" for s in ("running", "completed", "stopped", "failed", "new")}
    assert used <= en.keys(), used - en.keys()
    for asset in STATIC.iterdir():
        assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", asset.read_text(encoding="utf-8")), asset.name
