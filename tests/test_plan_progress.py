"""Long phases of `sftlab plan` and `sftlab compare` announce themselves on stderr as they start.

On Gemma 3 270M, `sftlab plan` with all four strategies (the lora row in 4-bit) printed nothing for about 170 s:
building each model, then auto's 8 calibration batches (about 11 s each on 2 cores). Each model, each scored batch,
each probed strategy and each compared strategy now prints a line to stderr; stdout keeps only the plan.
"""

from __future__ import annotations

import yaml

from sftlab.config import load_config
from sftlab.plan.recommend import load_thresholds
from test_plan import tiny_config


def auto_config(tmp_path, batches: int = 2) -> dict:
    raw = tiny_config(tmp_path, hidden=32, layers=2)
    raw["strategy"] = {"auto": {"budget": 0.2, "batches": batches}}
    return raw


def test_each_strategy_model_and_each_scored_batch_is_reported_as_it_happens(tmp_path):
    from sftlab.plan.planner import build_plan

    lines: list[str] = []
    cfg = load_config(None, [], base=auto_config(tmp_path))
    build_plan(cfg, None, load_thresholds(), ("freeze", "auto"), progress=lines.append)
    assert lines == ["plan: full (1/3): building its model", "plan: freeze (2/3): building its model",
                     "plan: auto (3/3): building its model, then scoring up to 2 calibration batches",
                     *(line for line in lines if line.startswith("plan: auto: scored"))]
    scored = [line for line in lines if line.startswith("plan: auto: scored")]
    assert [line.split(" (")[0] for line in scored] == ["plan: auto: scored calibration batch 1/2",
                                                        "plan: auto: scored calibration batch 2/2"]


def test_scoring_reports_only_inside_scoring_progress():
    from sftlab.models.tiny import make_tiny_model, make_tokenizer
    from sftlab.strategy import select_trainable
    from sftlab.strategy.importance import scoring_progress
    from test_importance import calibration, lm_loss

    cfg = {"kind": "auto", "auto": {"budget": 0.2, "batches": 3}}
    lines: list[str] = []
    model = make_tiny_model("llama", make_tokenizer("llama3"), layers=2)
    with scoring_progress(lines.append):
        select_trainable(model, cfg, calibration(model, 2), lm_loss)  # fewer batches than asked for: 2 of 2
    assert [line.split(" (")[0] for line in lines] == [
        "auto: scored calibration batch 1/2", "auto: scored calibration batch 2/2",
        "auto: the training data gave 2 calibration batches, fewer than strategy.auto.batches=3; the scores rest on those"]
    select_trainable(make_tiny_model("llama", make_tokenizer("llama3"), layers=2), cfg, calibration(model, 2), lm_loss)
    assert len(lines) == 3  # outside the block: silent


def test_plan_cli_prints_progress_on_stderr_and_only_the_plan_on_stdout(tmp_path, capsys):
    from sftlab.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(auto_config(tmp_path)), encoding="utf-8")
    assert main(["plan", str(config), "--strategies", "auto"]) == 0
    captured = capsys.readouterr()
    assert "plan: auto (2/2): building its model" in captured.err
    assert "plan: auto: scored calibration batch 2/2" in captured.err
    assert "plan: " not in captured.out and "recommendation: auto" in captured.out


def test_the_probe_relays_its_progress_while_it_runs(tmp_path):
    from sftlab.plan.planner import strategy_config
    from sftlab.plan.probe import run_probe

    cfg = load_config(None, [], base=auto_config(tmp_path))
    lines: list[str] = []
    configs = [strategy_config(cfg, kind, load_thresholds(), 2) for kind in ("freeze", "auto")]
    results = run_probe(configs, steps=1, progress=lines.append)
    assert [result["kind"] for result in results] == ["freeze", "auto"]
    assert lines[0] == "plan: probing freeze (1/2): a warm-up step, then 1 measured step"
    assert lines[1].startswith("plan: probed freeze: ") and lines[1].endswith(" s/step")
    assert lines[2] == "plan: probing auto (2/2): a warm-up step, then 1 measured step"
    assert sum(line.startswith("plan: probe auto: scored calibration batch") for line in lines) == 4  # warm-up + run
    assert lines[-1].startswith("plan: probed auto: ")
    assert run_probe(configs[:1], steps=1)[0]["kind"] == "freeze"  # no progress asked for: none sent


def test_compare_reports_each_strategy_as_it_starts_and_ends(tmp_path):
    from sftlab.plan.compare import compare, parse_budget

    cfg = load_config(None, [], base=tiny_config(tmp_path, hidden=32, layers=1))
    lines: list[str] = []
    out = tmp_path / "cmp"
    compare(cfg, ("lora",), parse_budget("1"), out, None, load_thresholds(), progress=lines.append)
    assert lines[0] == f"compare: training lora (1/1) in {out / 'lora'}"
    assert lines[1].startswith("compare: lora: 1 step in ") and lines[1].endswith(" s (completed)")
    assert len(lines) == 2
