"""Policy application: the model scorer, the CLI commands, and the end-to-end demo on a tiny model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from sqlalchemy import select

from sftlab.cli import main
from sftlab.models.tiny import save_tiny
from sftlab.policy.db import Push, open_db
from sftlab.policy.demo import FULL, QUICK, DemoPlan, plan_for_this_machine, run_demo
from sftlab.policy.simulate import WorldSpec


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("tiny") / "qwen2")


def test_score_candidates_is_batch_invariant(tiny_dir):
    from sftlab.policy.scoring import ModelScorer

    scorer = ModelScorer(tiny_dir, batch_size=3)
    prompts = ["企业画像：行业 制造业。候选政策：《关于开展2026年度高新技术企业认定工作的通知》。问题？", "短", "长" * 90, "x"]
    batched = scorer(prompts)
    assert all(0.0 < p < 1.0 for p in batched)
    assert batched == pytest.approx([scorer([p])[0] for p in prompts], abs=1e-5)
    assert scorer._full_likelihood(prompts[:1])[0] != pytest.approx(batched[0], abs=1e-9)  # two different estimators
    fast = ModelScorer(tiny_dir, batch_size=3, precision="bf16")
    assert fast(prompts) == pytest.approx(batched, abs=0.05) and fast(prompts) != batched  # bf16 autocast is in effect
    with pytest.raises(ValueError, match="precision"):
        ModelScorer(tiny_dir, precision="fp16")


def test_cli_simulate_build_baselines_push(tiny_dir, tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/cli.db"
    assert main(["policy", "simulate", "--db", db, "--enterprises", "30", "--policies", "50", "--days", "200",
                 "--seed", "2", "--csv-dir", str(tmp_path / "csv")]) == 0
    assert main(["policy", "simulate", "--db", db]) == 2
    assert "already holds 30 enterprises" in capsys.readouterr().err
    data = tmp_path / "data"
    assert main(["policy", "build-data", "--db", db, "--out", str(data), "--cutoff", "2025-06-01", "--max-train", "40",
                 "--max-eval-enterprises", "6"]) == 0
    assert main(["policy", "baselines", "--db", db, "--data", str(data), "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "| oracle | overall |" in out and (data / "baselines" / "report.md").is_file()
    assert main(["policy", "push", "--db", db, "--baseline", "popularity", "--since", "2025-06-01", "--now", "2025-07-01",
                 "--top-k", "2"]) == 0
    assert main(["policy", "push", "--db", db, "--baseline", "popularity", "--since", "2025-06-01", "--now", "2025-07-01",
                 "--top-k", "2"]) == 0
    assert "window 2025-06-01: 0 pushes" in capsys.readouterr().out.splitlines()[-1]
    assert main(["policy", "push", "--db", db, "--baseline", "popularity", "--since", "June"]) == 2
    capsys.readouterr()
    assert main(["policy", "evaluate", "--db", db, "--data", str(data), "--model", str(tiny_dir), "--out", str(tmp_path / "ev"),
                 "--precision", "bf16", "--batch-size", "16"]) == 0
    assert "| fine_tuned | overall |" in capsys.readouterr().out
    scored = [json.loads(line) for line in (tmp_path / "ev" / "scores.jsonl").read_text().splitlines()]
    candidates = (data / "eval_candidates.jsonl").read_text().splitlines()
    assert len(scored) == len(candidates) and all(0.0 < row["fine_tuned"] < 1.0 for row in scored)
    assert "fine_tuned" in json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"]
    assert main(["policy", "push", "--db", db, "--model", str(tiny_dir), "--precision", "bf16", "--since", "2025-06-01",
                 "--now", "2025-07-01", "--top-k", "1"]) == 0
    assert "pushes" in capsys.readouterr().out
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    assert main(["policy", "import", "--db", fresh, str(tmp_path / "csv"), "--rejects-dir", str(tmp_path / "rej")]) == 0
    assert "events: " in capsys.readouterr().out


def test_demo_end_to_end_on_a_tiny_model(tiny_dir, tmp_path):
    plan = DemoPlan(WorldSpec(n_enterprises=40, n_policies=60, days=200, seed=1), max_train=24, max_eval_enterprises=6,
                    train_steps=2, batch_size=4, lr=1e-3, train_layers="last:1", max_length=1024, push_enterprises=8)
    lines = []
    outcome = run_demo(tmp_path / "demo", str(tiny_dir), plan=plan, log=lines.append)
    assert (outcome["run_dir"] / "model").is_dir() and outcome["report"].is_file()
    results = outcome["results"]
    assert {"fine_tuned", "popularity", "category_frequency", "logistic_regression", "oracle"} <= set(results)
    assert "fine_tuned wins" in outcome["report"].read_text() or "fine_tuned loses" in outcome["report"].read_text()
    assert any("| fine_tuned | cold |" in line for line in lines) and any(line.startswith("\nreport:") for line in lines)
    metrics = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    assert metrics["results"]["fine_tuned"]["threshold"] == 0.5
    engine = open_db(f"sqlite:///{tmp_path / 'demo' / 'policy.db'}")
    with engine.connect() as conn:
        pushed = conn.execute(select(Push.enterprise_id, Push.model_version)).all()
    assert len(pushed) == outcome["pushes"].pushes_written and all(v == str(outcome["run_dir"]) for _, v in pushed)
    assert {e for e, _ in pushed} <= {f"E{i:06d}" for i in range(1, 9)}


def test_the_demo_trains_in_fp32_where_the_cpu_has_no_bf16_instructions(monkeypatch):
    from sftlab.train import precision

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: False)
    plan, note = plan_for_this_machine(QUICK)
    assert QUICK.precision == "auto" and plan == replace(QUICK, precision="fp32")
    assert note == "precision: auto -> fp32 (this CPU has no bf16 matmul instructions)"
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: True)
    assert plan_for_this_machine(FULL) == (replace(FULL, precision="bf16"),
                                           "precision: auto -> bf16 (this CPU runs bf16 matmuls in hardware)")
    assert plan_for_this_machine(replace(FULL, precision="fp32")) == (replace(FULL, precision="fp32"), None)
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: True)
    assert plan_for_this_machine(FULL)[0].precision == "bf16"  # a GPU trains bf16 whatever the CPU
