"""Task metrics during training: what the training loop calls at each validation when `eval.metric` is not loss.

    if task_for_config(cfg) is not None:
        row.update(task_metrics(model, tokenizer, prepared, cfg))   # e.g. {"accuracy": .., "macro_f1": ..}

The task is `eval.task`, or the one `eval.metric` implies (accuracy, macro_f1, micro_f1, weighted_f1, auc ->
labels; exact_match, bleu, rouge1, rouge2, rouge_l -> generation; ndcg@5, hit_rate@10, precision@K,
recall@K, mrr -> ranking). loss and perplexity are the loop's own validation metrics, so they need no
task; `eval.task: lm` adds nothing for the same reason. Examples are `eval.data` when set (required for ranking
rows), else `prepared.val_examples`, cut to `eval.max_samples`. A cls run (`train.stage: cls`) classifies
with its head over `prepared.label_names`; a generative run scores each label's likelihood (or generates,
`eval.label_method: generate`) over `data.labels` or the labels seen in the training and validation examples.
"""

from __future__ import annotations

import re

from sftlab.errors import SftlabError
from sftlab.eval import metrics as M
from sftlab.eval import tasks

_LABEL_METRICS = re.compile(r"^(accuracy|(macro|micro|weighted)_(f1|precision|recall)|auc|average_precision|unparseable)$")
_GENERATION_METRICS = {"exact_match", "bleu", "rouge1", "rouge2", "rouge_l"}
_RANKING_METRICS = re.compile(r"^((hit_rate|precision|recall|ndcg)@(\d+)|mrr|map)$")
_LOOP_METRICS = {"loss", "eval_loss", "val_loss", "perplexity"}
# Counts and curve details that are not metrics to select on; left out of the logged validation row.
_NOT_LOGGED = {"n", "tokens", "queries", "queries_without_relevant", "threshold", "threshold_precision",
               "threshold_recall", "threshold_f1", "loss", "perplexity"}


def task_for_metric(metric: str) -> str | None:
    """The evaluation task that reports `metric`; None for the loop's own `loss`."""
    if metric in _LOOP_METRICS:
        return None
    if _LABEL_METRICS.match(metric):
        return "labels"
    if metric in _GENERATION_METRICS:
        return "generation"
    if _RANKING_METRICS.match(metric):
        return "ranking"
    raise SftlabError(f"eval.metric {metric!r} is not a metric sftlab reports; use loss, accuracy, macro_f1, micro_f1, "
                      "weighted_f1, auc, exact_match, bleu, rouge1, rouge2, rouge_l, perplexity, mrr, map, ndcg@K, "
                      "hit_rate@K, precision@K or recall@K")


def task_for_config(cfg) -> str | None:
    """The task whose metrics the loop should compute at each validation (None: loss only)."""
    if cfg.eval.task != "auto":
        return cfg.eval.task
    return task_for_metric(cfg.eval.metric)


def options_from_config(cfg, label_names: list[str] | None = None) -> tasks.EvalOptions:
    """EvalOptions from a run config (template and mask of the training data, eval batch and generation settings)."""
    ks = list(cfg.eval.k)
    match = _RANKING_METRICS.match(cfg.eval.metric)
    if match and match.group(3) and int(match.group(3)) not in ks:
        ks.append(int(match.group(3)))
    stage = cfg.train.stage
    return tasks.EvalOptions(
        template=cfg.data.template, mask=cfg.data.mask, batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.train.seed,
        labels=list(label_names or cfg.data.labels or []) or None,
        label_method="head" if stage == "cls" else cfg.eval.label_method,
        ks=sorted(ks), max_length=cfg.train.max_length)


def _examples(prepared, cfg, task: str) -> list[dict]:
    if cfg.eval.data:
        from sftlab.vision.load import is_vision_model

        if cfg.train.stage == "sft" and is_vision_model(cfg.model):  # image+text records (sftlab.vision.data)
            from pathlib import Path

            from sftlab.vision.data import read_vision_file

            return read_vision_file(Path(cfg.eval.data))[: cfg.eval.max_samples or None]
        return tasks.load_examples(cfg.eval.data, task, max_samples=cfg.eval.max_samples)
    examples = list(getattr(prepared, "val_examples", None) or [])
    if not examples:
        raise SftlabError(f"eval.metric {cfg.eval.metric!r} needs validation examples: set data.validation, "
                          "data.val_ratio or eval.data")
    if task == "ranking" and "candidates" not in examples[0]:
        raise SftlabError("eval.task ranking needs eval.data: a file of ranking rows (query, messages, candidates)")
    return examples[: cfg.eval.max_samples] if cfg.eval.max_samples else examples


def _labels_seen(examples: list[dict]) -> list[str]:
    """Sorted labels of training and validation examples (a label missing from validation still counts)."""
    seen = set()
    for example in examples:
        if "label" in example:
            seen.add(str(example["label"]))
        elif example.get("messages") and example["messages"][-1].get("role") == "assistant":
            seen.add(str(example["messages"][-1].get("content", "")))
    return sorted(seen)


def task_metrics(model, tokenizer, prepared, cfg) -> dict[str, float]:
    """Run the configured task on the validation examples and return its scalar metrics.

    `prepared` needs `val_examples` (canonical examples) and, for cls runs, `label_names`.
    """
    task = task_for_config(cfg)
    if task is None or task == "lm":
        return {}
    examples = _examples(prepared, cfg, task)
    label_names = getattr(prepared, "label_names", None)
    if task == "labels" and not label_names and not cfg.data.labels:
        label_names = _labels_seen(list(getattr(prepared, "train_examples", None) or []) + examples)
    opts = options_from_config(cfg, label_names)
    if any(example.get("images") for example in examples):  # image+text examples: sftlab.vision.evaluate
        from sftlab.vision.evaluate import run_vision_task
        from sftlab.vision.load import load_processor

        result, _ = run_vision_task(task, model, load_processor(cfg.model), examples, opts)
    else:
        result, _ = tasks.TASKS[task](model, tokenizer, examples, opts)
    values = {k: v for k, v in M.scalar_metrics(result).items() if k not in _NOT_LOGGED}
    if cfg.eval.metric not in values and task_for_metric(cfg.eval.metric) is not None:
        why = {"ranking": f"no query of the {len(examples)} evaluated has a relevant candidate",
               "labels": "auc and average_precision need two labels, both among the references, and probabilities "
                         "(not eval.label_method: generate)"}.get(task, "")
        raise SftlabError(f"eval.metric {cfg.eval.metric!r} was not computed by the {task} task "
                          f"(it reported {', '.join(sorted(values)) or 'nothing'}); {why}".rstrip("; "))
    return values
