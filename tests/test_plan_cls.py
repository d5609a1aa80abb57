"""sftlab plan for a classifier: label distribution, examples as the supervised unit, head always trainable."""

import json

from sftlab.config import load_config
from sftlab.models.tiny import save_tiny
from sftlab.plan.planner import build_plan, cpu_estimate_caveat
from sftlab.plan.recommend import load_thresholds
from sftlab.plan.table import render_plan


def test_cls_plan_reports_labels_and_examples(tmp_path):
    save_tiny("bert", tmp_path / "bert", hidden=32, layers=2)
    rows = [{"text": f"{'good fine' if i % 3 else 'bad awful'} item {i}", "label": "pos" if i % 3 else "neg"}
            for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cfg = load_config(None, [], base={
        "model": {"path": str(tmp_path / "bert")},
        "data": {"train": str(tmp_path / "train.jsonl"), "format": "label", "cache_dir": str(tmp_path / "cache")},
        "train": {"stage": "cls", "batch_size": 4, "max_length": 32}, "output": {"dir": str(tmp_path / "run")}})
    plan = build_plan(cfg, None, load_thresholds(), ("full", "freeze", "lora"))
    assert plan["data"]["label_distribution"] == {"neg": 4, "pos": 8}
    assert plan["data"]["supervised"] == 12 and plan["data"]["supervised_unit"] == "examples"
    assert plan["workload"]["supervised"] == 4  # one label per row of the micro-batch
    assert plan["rows"]["freeze"]["trainable"] < plan["rows"]["full"]["trainable"]
    text = render_plan(plan)
    assert "labels: neg 4, pos 8" in text and "supervised examples per trainable parameter" in text


def test_cpu_plans_say_how_their_estimates_were_calibrated(monkeypatch):
    from sftlab.plan import planner

    assert "this run would use the system malloc" in cpu_estimate_caveat("system")
    monkeypatch.setattr(planner, "resolve_allocator", lambda setting: "/lib/libjemalloc.so.2")
    assert cpu_estimate_caveat("auto").startswith("memory estimates are calibrated on jemalloc's resident memory, "
                                                  "which sftlab train runs on here")
    monkeypatch.setattr(planner, "resolve_allocator", lambda setting: None)
    assert "9-58% above them" in cpu_estimate_caveat("auto")

    def missing(setting):
        raise planner.SftlabError("train.allocator=jemalloc: no jemalloc library found")

    monkeypatch.setattr(planner, "resolve_allocator", missing)
    assert "this run would use the system malloc" in cpu_estimate_caveat("jemalloc")
    plan = {"model": "m", "stage": "sft", "memory": {"bytes": 2**30, "device": "cpu"},
            "workload": {"batch": 1, "seq": 8, "supervised": 4}, "caveat": cpu_estimate_caveat("system"),
            "data": {"examples": 1, "validation_examples": 0, "tokens": 8, "supervised": 4, "supervised_unit": "tokens",
                     "supervised_per_parameter": 0.1},
            "rows": {}, "recommendation": {"kind": "lora", "reasons": []}}
    assert cpu_estimate_caveat("system") in render_plan(plan).splitlines()
