"""sftlab plan for a classifier: label distribution, examples as the supervised unit, head always trainable."""

import json

from sftlab.config import load_config
from sftlab.models.tiny import save_tiny
from sftlab.plan.planner import build_plan
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
