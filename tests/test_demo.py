"""`sftlab demo` end to end on a tiny model (part 1: BANKING77 fine-tuning, evaluation, report), and its
fp32 fallback on a CPU without bf16 instructions."""

from __future__ import annotations

import json

import yaml

from sftlab.cli import main
from sftlab.models.tiny import save_tiny
from sftlab.train import precision


def test_demo_without_the_policy_part_writes_model_metrics_and_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: False)
    tiny = save_tiny("qwen2", tmp_path / "tiny-qwen2")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(tiny), "--steps", "2", "--no-policy"]) == 0
    printed = capsys.readouterr().out
    assert "[demo] this CPU has no bf16 matmul instructions (no AMX or AVX-512 BF16): running in fp32" in printed
    run = out / "banking"
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["precision"] == "fp32"
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    metrics = json.loads((run / "eval-labels" / "metrics.json").read_text(encoding="utf-8"))
    assert {"accuracy", "macro_f1"} <= set(metrics["metrics"]) and "baselines" in metrics
    assert (run / "report.html").is_file() and not (out / "policy").exists()
    assert f"[demo] fine-tuned model:  {run / 'model'}" in printed


def test_demo_keeps_bf16_where_the_cpu_has_it(tmp_path, monkeypatch):
    from sftlab.demo import banking_config

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: True)
    assert precision.precision_for_this_machine("bf16") == ("bf16", None)
    assert precision.precision_for_this_machine("fp32") == ("fp32", None)
    assert banking_config("m", tmp_path / "run", 3).train.precision == "bf16"
