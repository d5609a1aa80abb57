"""tokens/s in metrics.jsonl and the progress line counts training time only (found running sftlab on real models).

A Gemma run evaluated at step 15 logged `step 16/30: ... 13 tokens/s` against ~100 for its neighbours: the window
measured wall time since the previous row, so the evaluation, best/ saving, checkpoints and (for step 1) the set-up
were divided into the next row's throughput."""

from __future__ import annotations

import json
import time

import torch

from sftlab.config import load_config
from sftlab.models.tiny import save_tiny
from sftlab.train import run_training

PAUSE_S = 1.0  # what a slow evaluation / checkpoint / callback between steps takes


def test_tokens_per_s_leaves_out_what_happens_between_steps(tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                     {"role": "assistant", "content": "answer " * (1 + i)}]}) + "\n"
                            for i in range(8)), encoding="utf-8")
    raw = {"model": {"path": str(save_tiny("llama", tmp_path / "base", hidden=32, layers=1))},
           "data": {"train": str(data), "validation": str(data), "cache_dir": str(tmp_path / "cache")},
           "train": {"stage": "sft", "max_steps": 4, "batch_size": 4, "lr": 1e-3, "max_length": 64},
           "eval": {"every_n_steps": 1}, "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    run_training(load_config(None, [], base=raw), show_progress=False,
                 callbacks=[lambda step, loss: time.sleep(PAUSE_S)])
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    all_tokens = stats["train"]["tokens"]  # every training token: more than any one step processes
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if not row.get("eval")]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    # with the pauses counted, no row could exceed all_tokens / PAUSE_S; a tiny model's step takes milliseconds
    assert all(row["tokens_per_s"] > all_tokens / PAUSE_S for row in steps), (all_tokens, steps)
