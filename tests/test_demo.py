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
    printed, logged = capsys.readouterr()
    assert "precision: auto -> fp32 (this CPU has no bf16 matmul instructions)" in logged.splitlines()
    run = out / "banking"
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["precision"] == "fp32"
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    metrics = json.loads((run / "eval-labels" / "metrics.json").read_text(encoding="utf-8"))
    assert {"accuracy", "macro_f1"} <= set(metrics["metrics"]) and "baselines" in metrics
    assert (run / "report.html").is_file() and not (out / "policy").exists()
    assert f"[demo] fine-tuned model:  {run / 'model'}" in printed


def test_auto_precision_is_bf16_only_where_the_machine_has_it(tmp_path, monkeypatch):
    from sftlab.config import load_config
    from sftlab.train.precision import resolve_precision

    from test_plan import tiny_config

    cfg = load_config(None, ["train.precision=auto"], base=tiny_config(tmp_path, hidden=32))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: True)
    resolved, line = resolve_precision(cfg)
    assert resolved.train.precision == "bf16" and cfg.train.precision == "auto"
    assert line == "precision: auto -> bf16 (this CPU runs bf16 matmuls in hardware)"
    assert resolved.model == cfg.model and resolved.train.batch_size == cfg.train.batch_size
    fixed = load_config(None, ["train.precision=bf16"], base=tiny_config(tmp_path, hidden=32))
    assert resolve_precision(fixed) == (fixed, None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision(cfg)[1] == ("precision: auto -> fp32 (this GPU has no bf16 matmul instructions; "
                                         "train.precision: fp16 trains with fp16 autocast and loss scaling)")
