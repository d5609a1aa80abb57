"""Runs write trainable.json; auto runs also write the importance chart and a table in the model card."""

import json

from sftlab.config import load_config
from sftlab.models.tiny import save_tiny
from sftlab.train.loop import run_training


def _run(tmp_path, kind: str):
    model_dir = save_tiny("qwen2", tmp_path / "tiny")
    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(16)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = load_config(None, [f"strategy.kind={kind}", "strategy.auto.budget=0.2", "strategy.auto.batches=2",
                             "train.max_steps=2", "train.batch_size=4", "train.grad_accum=2",
                             f"output.dir={tmp_path / 'run'}",
                             "output.tensorboard=false"],
                      base={"model": {"path": str(model_dir)}, "data": {"train": str(data)}})
    run_training(cfg, show_progress=False)
    return tmp_path / "run"


def test_auto_run_writes_the_importance_report(tmp_path):
    run = _run(tmp_path, "auto")
    report = json.loads((run / "trainable.json").read_text())
    units = report["importance"]["units"]
    assert report["kind"] == "auto" and len(units) > 5
    chosen = [u for u in units if u["chosen"]]
    assert sum(u["size"] for u in chosen) == report["trainable"] == report["importance"]["chosen_params"]
    assert report["importance"]["chosen_params"] <= report["importance"]["budget_params"]
    # calibration micro-batches against an epoch's micro-batches of train.batch_size (grad_accum 2 changes neither)
    assert report["importance"]["batches"] == 2 and report["importance"]["batches_per_epoch"] == 4
    assert (run / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "model" / "README.md").read_text()
    assert "### Importance-based selection" in card
    top = max(units, key=lambda u: u["score"])
    assert f"| {top['name']} |" in card


def test_other_strategies_write_only_the_counts(tmp_path):
    run = _run(tmp_path, "full")
    report = json.loads((run / "trainable.json").read_text())
    assert report["kind"] == "full" and report["trainable"] == report["total"] and "importance" not in report
    assert not (run / "importance.png").exists()


def test_board_policy_page_shows_the_importance_table_of_the_pushing_model(tmp_path):
    from sftlab.board.policy import model_importance

    run = _run(tmp_path, "auto")
    shown = model_importance(str(run))
    assert shown["run_dir"] == str(run)
    assert "### Importance-based selection" in shown["strategy"] and "| unit | score | parameters | trained |" in shown["strategy"]
