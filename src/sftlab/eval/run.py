"""`sftlab eval` end to end: load a saved model, evaluate one task on a file, add baselines, write results.

Output directory (written atomically):
    metrics.json        {"task", "model", "data", "options", "metrics", "baselines"}
    predictions.jsonl   one row per example (or query): its source line, reference and prediction
    confusion_matrix.png, pr_curve.png   label tasks (the PR curve for two labels with probabilities)

MODEL_DIR may be a model directory, a PEFT adapter directory (its local base is loaded) or a run directory
(its `model/`). The chat template, loss mask and maximum length default to the ones the model was trained with
(`sftlab.models.trained`: the template from MODEL_DIR's `sftlab_template.json`, else the run's `config.yaml`;
mask and maximum length from that `config.yaml`), else `auto`, `assistant` and 1024 tokens. A model saved with a
classification head evaluates labels with that head; a causal LM scores each label's likelihood unless
`label_method="generate"`. A model with its own code (`auto_map`) loads only with `trust_remote_code`
(`--trust-remote-code`); errors about the model directory name MODEL_DIR.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from sftlab.errors import SftlabError
from sftlab.eval import metrics as M
from sftlab.eval import tasks
from sftlab.io import atomic_dir, atomic_write_json, atomic_write_jsonl

_SHOWN_FIRST = ("n", "accuracy", "macro_f1", "micro_f1", "weighted_f1", "auc", "average_precision", "unparseable",
                "exact_match", "bleu", "rouge1", "rouge2", "rouge_l", "loss", "perplexity", "mrr")


KEY, TRUST_KEY = "MODEL_DIR", "--trust-remote-code"  # what load errors name: sftlab eval's argument and flag


def load_for_eval(model_dir: Path, device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False):
    """(model, tokenizer, head_labels) for a model dir, a PEFT adapter dir (a classification LoRA adapter with its
    head and recorded labels) or a run dir (its `model/`); code shipped with the model runs only with
    `trust_remote_code`.

    head_labels lists the class names of a sequence-classification model, else None. Causal LMs and
    adapters load through `sftlab.infer.loading` (the adapter's local base; nothing is downloaded).
    """
    import torch

    from sftlab.config.schema import ModelConfig
    from sftlab.infer.loading import describe_source, load_served, serving_dtype
    from sftlab.models.load import check_model_dir, load_model, load_tokenizer

    dtype = serving_dtype(dtype)  # auto: bfloat16 where the machine has bf16 matmuls, else float32
    trust = dict(trust_remote_code=trust_remote_code, trust_key=TRUST_KEY)
    source = describe_source(model_dir, key=KEY)
    raw = check_model_dir(source.model_dir, KEY, **trust) if source.adapter_dir is None else {}
    head_labels = None
    if any(str(arch).endswith("ForSequenceClassification") for arch in raw.get("architectures") or []):
        model_cfg = ModelConfig(path=str(source.model_dir), dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(model_cfg, KEY, TRUST_KEY)
        from transformers import AutoConfig

        id2label = AutoConfig.from_pretrained(source.model_dir, local_files_only=True,
                                              trust_remote_code=trust_remote_code).id2label  # 2 labels by default
        head_labels = [id2label[key] for key in sorted(id2label, key=int)]
        model = load_model(model_cfg, "cls", label_names=head_labels, tokenizer=tokenizer, key=KEY,
                           trust_key=TRUST_KEY)
    elif source.task_type == "SEQ_CLS":  # a classification LoRA adapter: its base with the head it trained
        from sftlab.infer.loading import load_classifier_adapter

        model, tokenizer, head_labels = load_classifier_adapter(model_dir, dtype, KEY, **trust)
    else:
        served = load_served(model_dir, dtype=dtype, key=KEY, **trust)
        model, tokenizer = served.model, served.tokenizer
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), tokenizer, head_labels


def compute_baselines(task: str, examples: list[dict], result: dict, opts: tasks.EvalOptions,
                      train: list[dict] | None) -> dict:
    """Majority / TF-IDF + LR for labels, most popular item for ranking (fitted on `train` examples when given)."""
    from sftlab.eval import baselines

    if task == "labels":
        return baselines.label_baselines(examples, result["labels"], train)
    return baselines.popularity_baseline(examples, opts.ks, train)


def write_outputs(out: Path, summary: dict, predictions: Iterable[dict], result: dict) -> None:
    """metrics.json, predictions.jsonl and the label plots into `out` (a directory `atomic_dir` renames when all
    is written); predictions are written one line at a time as the iterable makes them, never joined in memory."""
    from sftlab.eval.report import plot_confusion, plot_pr_curve

    atomic_write_json(out / "metrics.json", summary)
    atomic_write_jsonl(out / "predictions.jsonl", predictions)
    if "confusion" in result:
        plot_confusion(result["confusion"], out / "confusion_matrix.png")
    if "pr_curve" in result:
        plot_pr_curve(result, out / "pr_curve.png")


def summary_table(result: dict, baselines: dict) -> str:
    """A short text table: the model's scalar metrics and each baseline's beside them."""
    scalars = M.scalar_metrics(result)
    keys = [k for k in _SHOWN_FIRST if k in scalars] + sorted(k for k in scalars if k not in _SHOWN_FIRST)
    columns = [("model", scalars)] + [(name, M.scalar_metrics(b)) for name, b in baselines.items()]
    width = max([len(k) for k in keys] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{name:>12}" for name, _ in columns)]
    for key in keys:
        cells = [(f"{vals[key]:.4f}" if key in vals and not float(vals[key]).is_integer() else
                  str(int(vals[key])) if key in vals else "-") for _, vals in columns]
        lines.append(f"{key:<{width}}  " + "  ".join(f"{cell:>12}" for cell in cells))
    return "\n".join(lines)


def evaluate(model_dir: str, data: str, task: str, opts: tasks.EvalOptions, out: str, overwrite: bool = False,
             with_baselines: bool = False, train_file: str | None = None, fmt: str = "auto",
             max_samples: int | None = None, device: str = "auto", dtype: str = "float32",
             columns: dict[str, str] | None = None, trust_remote_code: bool = False) -> dict:
    """Run one evaluation and write its results to `out`; returns the metrics.json content.

    `columns` maps canonical fields to columns of `data` and `train_file` (data.columns; `--columns` in errors);
    `trust_remote_code` lets code shipped with the model run (`--trust-remote-code`)."""
    if task not in tasks.TASKS:
        raise SftlabError(f"--task {task!r}: expected one of {', '.join(tasks.TASKS)}")
    if with_baselines and task not in ("labels", "ranking"):
        raise SftlabError(f"--baselines: available for the labels and ranking tasks, not {task}")
    from sftlab.data.option_names import option_errors
    from sftlab.io import check_output_dir

    check_output_dir(out, overwrite, inputs=(model_dir, data, train_file))
    from sftlab.vision.evaluate import run_vision_task, vision_eval_inputs

    vision = vision_eval_inputs(model_dir, data, max_samples, KEY)  # a vision-language model: image+text examples
    with option_errors("--format", "--columns"):
        examples = vision[0] if vision else tasks.load_examples(data, task, fmt, max_samples, columns)
        train = tasks.load_examples(train_file, task, fmt, columns=columns) if with_baselines and train_file else None
    model, tokenizer, head_labels = load_for_eval(Path(model_dir), device, dtype, trust_remote_code)
    if head_labels is not None:
        if task != "labels":
            raise SftlabError(f"{model_dir} is a classification model; only --task labels applies")
        if opts.labels and sorted(opts.labels) != sorted(head_labels):
            raise SftlabError(f"--labels {','.join(opts.labels)}: {model_dir} classifies with its head, whose labels "
                              f"are {','.join(head_labels)}")
        opts.label_method, opts.labels = "head", head_labels
    elif opts.label_method == "head":
        raise SftlabError(f"--label-method head: {model_dir} has no classification head")
    if task == "labels" and train is not None and not vision:  # before the evaluation, not after it
        from sftlab.eval.baselines import check_train_labels

        check_train_labels(train, tasks.resolve_labels(examples, opts))
    if vision:
        result, predictions = run_vision_task(task, model, vision[1], examples, opts)
    else:
        result, predictions = tasks.TASKS[task](model, tokenizer, examples, opts)
    baseline_results = compute_baselines(task, examples, result, opts, train) if with_baselines else {}
    summary = {"task": task, "model": str(model_dir), "data": str(data), "options": asdict(opts),
               "metrics": result, "baselines": baseline_results}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_outputs(tmp, summary, predictions, result)
    return summary


def print_summary(summary: dict, out: str) -> None:
    """The on-screen table plus where the files went."""
    print(summary_table(summary["metrics"], summary["baselines"]))
    for name, result in summary["baselines"].items():
        if "fit_on" in result:
            print(f"baseline {name}: fitted on the {result['fit_on']}")
        elif "skipped" in result:
            print(f"baseline {name}: skipped ({result['skipped']})")
    print(f"wrote {Path(out) / 'metrics.json'} and predictions.jsonl")


def default_out(model_dir: str, task: str) -> str:
    """`eval-TASK` inside a run directory given as MODEL_DIR, else beside MODEL_DIR (so inside the run for
    `RUN/model` or `RUN/best`)."""
    path = Path(model_dir).resolve()
    if (path / "model").is_dir() and not (path / "config.json").is_file():
        return str(path / f"eval-{task}")
    return str(path.parent / f"eval-{task}")

