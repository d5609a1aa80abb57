"""Validation during training: loss (+ perplexity for pt/sft; accuracy and macro F1 for cls).

Loss is averaged over all supervised tokens (pt/sft) or examples (cls) of the validation split; with
several processes each rank sums its share and the sums are combined before averaging. When
`sftlab.eval.hooks.task_metrics(model, tokenizer, prepared, cfg)` exists, its metrics are merged in.

The output head runs on chunks of `eval_head_rows` supervised positions, whose float32 logits take about
`sftlab.train.loss.FUSED_CHUNK_BYTES` (at least `MIN_FUSED_ROWS` rows), as training's fused head loss sizes its
chunks. Until 2026-12-07 evaluation used the loss's default of 1,024 positions: for Gemma 3 270M's 262,144-token
head that made 0.5 GiB of bf16 logits, a 1 GiB float32 copy and a 1 GiB log-softmax at once, and its first
evaluation raised a pt run's peak (bf16 autocast, 8 rows of 256 tokens, jemalloc) by 1.0-2.0 GiB over its
steps'; with 256-row chunks these are 0.125 + 0.25 + 0.25 GiB, and the evaluations raised it by 0.001 GiB
(`tests/test_eval_memory.py`).
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable

import torch

from sftlab.train import loss as train_loss
from sftlab.train.loss import causal_lm_loss_sum, float32_chunk_rows, unwrap_peft


def evaluate_batches(model, batches: Iterable[dict], stage: str, autocast: Callable,
                     combine: Callable[[dict], dict] | None = None) -> dict:
    """Metrics of `model` over `batches` (already on the model's device), computed without gradients.

    `combine` merges the sums of every process (loss total, count, predictions, labels) before the
    metrics are computed; a batch carrying `"_weight": 0` runs but counts for nothing (an idle rank).
    """
    sums = accumulate_batches(model, batches, stage, autocast)
    return metrics_from_sums(combine(sums) if combine else sums, stage)


def accumulate_batches(model, batches: Iterable[dict], stage: str, autocast: Callable) -> dict:
    """Summed loss, count and (cls) predictions/labels over `batches`, without gradients."""
    was_training = model.training
    model.eval()
    sums: dict = {"total": 0.0, "count": 0, "predictions": [], "labels": []}
    with torch.no_grad(), autocast():
        for batch in batches:
            counted = batch.pop("_weight", 1) != 0
            if stage == "cls":
                logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
                part = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum")
                n = int(batch["labels"].numel())
                if counted:
                    sums["predictions"] += logits.argmax(-1).tolist()
                    sums["labels"] += batch["labels"].tolist()
            else:
                part, n = loss_sum(model, batch, stage)
            if counted:
                sums["total"] += float(part)
                sums["count"] += n
    model.train(was_training)
    return sums


def loss_sum(model, batch: dict, stage: str) -> tuple[torch.Tensor, int]:
    """A validation batch's summed loss and count: `sftlab.train.loss.loss_sum`, with a causal LM's head in chunks of
    `eval_head_rows` positions (without gradients the loss's default is `HEAD_CHUNK`, 1,024)."""
    if stage == "cls":
        return train_loss.loss_sum(model, batch, stage)
    return causal_lm_loss_sum(model, batch, chunk=eval_head_rows(model))


def eval_head_rows(model) -> int | None:
    """Supervised positions per chunk of the output head in evaluation: float32 logits of about
    `FUSED_CHUNK_BYTES` (at least `MIN_FUSED_ROWS` rows: 256 for a 262k vocabulary), or None (the loss's default)
    for a model without an output embedding matrix."""
    get_head = getattr(unwrap_peft(model), "get_output_embeddings", None)
    return float32_chunk_rows(get_head() if callable(get_head) else None)


def metrics_from_sums(sums: dict, stage: str) -> dict:
    """Loss (+ perplexity, or cls accuracy and macro F1) from accumulated sums."""
    loss = sums["total"] / max(sums["count"], 1)
    if stage == "cls":
        from sklearn.metrics import accuracy_score, f1_score

        labels, predictions = sums["labels"], sums["predictions"]
        return {"loss": loss, "accuracy": float(accuracy_score(labels, predictions)),
                "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}
    from sftlab.eval.metrics import perplexity

    return {"loss": loss, "perplexity": perplexity(loss)}


def task_metrics(model, tokenizer, prepared, cfg) -> dict:
    """Metrics from the evaluation package's hook when it is installed, else nothing."""
    try:
        hooks = importlib.import_module("sftlab.eval.hooks")
    except ModuleNotFoundError as exc:
        if exc.name in ("sftlab.eval.hooks", "sftlab.eval"):
            return {}
        raise
    hook = getattr(hooks, "task_metrics", None)
    return dict(hook(model, tokenizer, prepared, cfg) or {}) if hook else {}


def improved(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` under `mode` ('min' or 'max')."""
    if best is None:
        return True
    return value < best if mode == "min" else value > best
