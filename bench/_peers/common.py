"""Shared by every runner (sftlab, TRL, LLaMA-Factory): the run spec, timing, peak RSS and the common eval loss.

Runners execute in different virtual environments, so this module needs only the standard library,
torch and transformers. A run spec is a JSON file written by `bench/sft_vs_peers.py`:

    {"model": DIR, "train_json": alpaca records, "train_tokens": JSONL, "eval_tokens": JSONL,
     "max_length": 512, "batch_size": 8, "lr": 1e-4, "seed": 0, "precision": "fp32"|"bf16",
     "packing": bool, "trainable_last_layers": null | N, "work": DIR, "result": JSON path}

`eval_tokens` rows are `{"input_ids": [...], "labels": [...]}` tokenised once by sftlab (assistant tokens
supervised), so every tool's eval loss is the same computation on the same tokens, in fp32.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

IGNORE_INDEX = -100


def read_spec() -> dict:
    """The run spec named by the first command-line argument."""
    return json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def freeze_all_but_last(model, last_layers: int | None) -> None:
    """W2's strategy: train the last `last_layers` decoder layers and the final norm; freeze everything else."""
    if not last_layers:
        return
    layers = model.model.layers
    keep = {f"model.layers.{i}." for i in range(len(layers) - last_layers, len(layers))}
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("model.norm.") or any(name.startswith(k) for k in keep)


def eval_loss(model, rows: list[dict], pad_id: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over supervised tokens of `rows`, in fp32, without gradients."""
    import torch
    import torch.nn.functional as F

    if next(model.parameters()).dtype != torch.float32:
        model = model.float()  # a tool that trained bf16 weights is scored in fp32 like the others (in place)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, row in enumerate(chunk):
                n = len(row["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            targets = labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


class Clock:
    """Wall time of the training loop only: started right before the first step, stopped after the last."""

    def __init__(self):
        self.begin = self.end = None

    def start(self) -> None:
        self.begin = time.perf_counter()

    def stop(self) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.end or time.perf_counter()) - (self.begin or time.perf_counter())


def write_result(spec: dict, tool: str, clock: Clock, tokens: int, supervised: int, train_loss: float,
                 eval_value: float, steps: int, peak_rss: int) -> None:
    """The runner's one output: a JSON file the bench reads back."""
    result = {"tool": tool, "precision": spec["precision"], "train_seconds": clock.seconds, "tokens": tokens,
              "supervised_tokens": supervised, "train_loss": train_loss, "eval_loss": eval_value,
              "optimizer_steps": steps, "peak_rss_bytes": peak_rss}
    Path(spec["result"]).write_text(json.dumps(result, indent=1), encoding="utf-8")
