"""docs/policy.md and docs/board.md: the policy commands that load a model (evaluate, push, api, demo) and the board's
chat and evaluate run a model of its own code (config.json's `auto_map`) only with --trust-remote-code, and say so in one
line naming the option that applies to them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from sftlab.board.app import BoardSettings, create_app
from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.models.tiny import save_tiny
from sftlab.policy.db import open_db
from sftlab.policy.scoring import ModelScorer
from sftlab.policy.simulate import WorldSpec, simulate, write_world
from test_walk_model_load import make_custom_code_model


def _refusal(directory, flag="with --trust-remote-code"):
    return (f"{directory}/config.json: model_type 'walkcustom' is custom code shipped in '{directory}' (auto_map), "
            f"which sftlab runs only {flag} (only for a directory you trust)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny qwen2 and the same weights as a model of its own code (`walkcustom`)."""
    root = tmp_path_factory.mktemp("trust")
    torch.manual_seed(0)
    qwen = save_tiny("qwen2", root / "qwen2", hidden=32, layers=1)
    custom = root / "custom"
    shutil.copytree(qwen, custom)
    make_custom_code_model(custom)
    return {"qwen": qwen, "custom": custom}


@pytest.mark.parametrize("command", [["policy", "evaluate"], ["policy", "push"], ["policy", "api"], ["policy", "demo"],
                                     ["board"]])
def test_the_commands_that_load_a_model_have_the_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--trust-remote-code" in out and "only for a directory you trust" in out


def test_policy_push_and_evaluate_score_custom_code_only_with_the_flag(models, tmp_path, capsys):
    from sftlab.policy.examples import build_data

    url = f"sqlite:///{tmp_path}/db.sqlite"
    engine = open_db(url)
    write_world(engine, simulate(WorldSpec(n_enterprises=12, n_policies=30, days=200, seed=3)))
    build_data(engine, tmp_path / "data", cutoff="2025-06-01", max_train=24, max_eval_enterprises=3)
    push = ["policy", "push", "--db", url, "--since", "2025-06-01", "--now", "2025-07-15", "--top-k", "1"]
    assert main([*push, "--model", str(models["custom"])]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    assert main([*push, "--model", str(models["custom"]), "--trust-remote-code"]) == 0
    assert " pushes for " in capsys.readouterr().out
    evaluate = ["policy", "evaluate", "--db", url, "--data", str(tmp_path / "data")]
    assert main([*evaluate, "--model", str(models["custom"]), "--out", str(tmp_path / "custom")]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    assert not (tmp_path / "custom").exists()
    assert main([*evaluate, "--model", str(models["custom"]), "--out", str(tmp_path / "custom"), "--trust-remote-code"]) == 0
    scores = [json.loads(line)["fine_tuned"] for line in (tmp_path / "custom" / "scores.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "data" / "eval_candidates.jsonl").read_text().splitlines()]
    scorer = ModelScorer(models["custom"], batch_size=1, trust_remote_code=True)
    assert type(scorer.served.model).__name__ == "WalkModel"  # the directory's own model class
    assert scores == pytest.approx(scorer(prompts), abs=1e-5) and len(scores) == len(prompts) > 0


def test_policy_api_loads_custom_code_only_with_the_flag(models, tmp_path, capsys, monkeypatch):
    import uvicorn

    served = []

    class Server:
        def __init__(self, config):
            served.append(config)

        def run(self, sockets):
            pass

    monkeypatch.setattr(uvicorn, "Server", Server)
    api = ["policy", "api", "--db", f"sqlite:///{tmp_path}/db.sqlite", "--port", "0", "--model", str(models["custom"])]
    assert main(api) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n" and not served
    assert main([*api, "--trust-remote-code"]) == 0 and len(served) == 1


def test_policy_demo_refuses_custom_code_before_any_work(models, tmp_path):
    from sftlab.policy.demo import QUICK, run_demo, training_config

    with pytest.raises(SftlabError) as refused:
        run_demo(tmp_path / "demo", str(models["custom"]), log=lambda line: None)
    assert str(refused.value) == _refusal(models["custom"])  # names the demo's flag, not model.trust_remote_code
    assert not (tmp_path / "demo").exists()
    cfg = training_config(QUICK, str(models["custom"]), tmp_path / "data", tmp_path / "run", trust_remote_code=True)
    assert cfg.model.trust_remote_code is True
    with pytest.raises(SftlabError, match="^--model '.*no-model': no such directory"):
        run_demo(tmp_path / "demo", str(tmp_path / "no-model"), log=lambda line: None)


def test_board_chat_and_evaluate_run_custom_code_only_with_the_flag(models, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run = runs / "custom"
    shutil.copytree(models["custom"], run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"path": "x"}, "data": {"train": "t", "template": "chatml"}}))
    messages = [{"role": "user", "content": "hello"}]
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path))) as client:
        refused = client.post("/api/runs/custom/chat", json={"messages": messages, "max_tokens": 3})
        assert refused.status_code == 400
        assert refused.json()["error"] == _refusal(run.resolve() / "model", "with `sftlab board --trust-remote-code`")
    with TestClient(create_app(BoardSettings(runs_dir=runs, workdir=tmp_path, trust_remote_code=True))) as client:
        with client.stream("POST", "/api/runs/custom/chat", json={"messages": messages, "max_tokens": 3}) as response:
            events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]
        assert events[-1].get("done"), events
    from sftlab.board.runs import RunManager

    started = []
    for trust in (False, True):
        manager = RunManager(runs, trust_remote_code=trust)
        monkeypatch.setattr(manager, "start_job", lambda key, kind, args, suffix: started.append(args))
        manager.evaluate("custom", "data.jsonl", "lm")
    assert ["--trust-remote-code" in args for args in started] == [False, True]


def test_sftlab_board_passes_the_flag_on(tmp_path, monkeypatch):
    import uvicorn

    from sftlab.board import app

    settings = []
    monkeypatch.setattr(app, "create_app", lambda s: settings.append(s) or object())
    monkeypatch.setattr(uvicorn, "Server", lambda config: type("S", (), {"run": lambda self, sockets: None})())
    for flag in ([], ["--trust-remote-code"]):
        assert main(["board", "--port", "0", "--runs-dir", str(tmp_path / "runs"), *flag]) == 0
    assert [s.trust_remote_code for s in settings] == [False, True]
