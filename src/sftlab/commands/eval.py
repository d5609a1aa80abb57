"""`sftlab eval MODEL_DIR --data FILE --task lm|generation|labels|ranking`: metrics of a saved model on a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sftlab.commands.generate import DTYPES, add_trust_argument, check_choice

TASKS = ("lm", "generation", "labels", "ranking")
MASKS = ("assistant", "last_assistant", "each_assistant", "all")
LABEL_METHODS = ("likelihood", "generate", "head")
SEGMENTERS = ("char", "jieba")


def register(registry) -> None:
    parser = registry.top.add_parser(
        "eval", help="evaluate a saved model: lm loss, generation, label or ranking metrics (+ baselines)",
        description="Writes metrics.json, predictions.jsonl and (labels) confusion-matrix / PR-curve PNGs, "
                    "and prints a short table. See docs/eval.md for the data shapes.")
    parser.add_argument("model", metavar="MODEL_DIR", help="a run directory (its model/ is evaluated) or a saved model "
                        "directory (e.g. RUN/model)")
    parser.add_argument("--data", required=True, help="evaluation file (.jsonl/.json/.csv/...)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--out", help="output directory (default: eval-TASK in MODEL_DIR when it is a run directory, "
                        "else beside MODEL_DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--format", default="auto", help="data format of --data (as data.format)")
    parser.add_argument("--columns", nargs="*", metavar="CANONICAL=COLUMN",
                        help="map columns of --data and --train to canonical fields, e.g. label=category (as "
                             "data.columns; default: the run's data.columns; given with no value: none)")
    parser.add_argument("--template", help="chat template (default: the one the model was trained with, else auto)")
    parser.add_argument("--mask", choices=MASKS,
                        help="lm task: supervised tokens (default: the training run's data.mask)")
    parser.add_argument("--labels", help="comma-separated label set (default: labels seen in --data)")
    parser.add_argument("--label-method", choices=LABEL_METHODS, default="likelihood",
                        help="generative models: score each label's likelihood (default) or generate and parse; "
                             "head: the model's classification head, which a cls model always uses (an error for a "
                             "model without one)")
    parser.add_argument("--positive", help="positive label for AUC / PR curve (two labels) or ranking pairs (default yes)")
    parser.add_argument("--k", default="1,5,10", help="ranking cut-offs, comma-separated (default 1,5,10)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (seeded)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segmenter", choices=SEGMENTERS, default="char",
                        help="Chinese segmentation for BLEU/ROUGE (characters or jieba words)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int,
                        help="longer inputs are cut from the left as training's data.truncation left cuts them, "
                             "a leading BOS kept (chats, prompts), scored in windows (texts of the lm "
                             "task) or truncated (classification head) (default: the run's train.max_length, "
                             "else 1024)")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N examples")
    parser.add_argument("--baselines", action="store_true", help="also score majority / TF-IDF+LR / most-popular")
    parser.add_argument("--train", help="fit the baselines on this file instead of the evaluation split")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights dtype (default float32); auto: bfloat16 where the machine has bf16 matmuls in "
                             "hardware (AMX, AVX-512 BF16, a GPU), else float32")
    add_trust_argument(parser)
    parser.set_defaults(func=handle)


def _int_list(text: str, flag: str) -> list[int]:
    from sftlab.errors import SftlabError

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SftlabError(f"{flag} {text!r}: expected comma-separated whole numbers, e.g. 1,5,10") from None
    if not values or min(values) < 1:
        raise SftlabError(f"{flag} {text!r}: cut-offs must be at least 1")
    return sorted(set(values))


def _check_options(*, batch_size: int, max_new_tokens: int, max_length: int | None, max_samples: int | None,
                   sample: bool, temperature: float, top_p: float, device: str, train: str | None, baselines: bool,
                   labels: str | None, names: list[str] | None, choices: list[tuple]) -> None:
    """Numbers that must be positive, sampling settings and the device, before any model is loaded."""
    from sftlab.errors import SftlabError

    for value, option, choices in choices:
        check_choice(value, option, choices)

    for flag, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("max_length", max_length),
                        ("max_samples", max_samples)):
        if value is not None and value < 1:
            raise SftlabError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise SftlabError("--sample needs --temperature > 0 and --top-p in (0, 1]")
    kind = device.split(":")[0]
    if kind not in ("auto", "cpu", "cuda"):
        raise SftlabError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if train and not baselines:
        raise SftlabError("--train: the file the baselines are fitted on; it needs --baselines")
    repeated = sorted({name for name in names or [] if names.count(name) > 1})
    if repeated:
        raise SftlabError(f"--labels {labels!r}: {', '.join(map(repr, repeated))} given more than once")
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise SftlabError(f"--device {device}: this machine has no CUDA GPU; use cpu or auto")


def evaluate(model: str | Path, *, data: str | Path, task: str, out: str | Path | None = None, overwrite: bool = False,
             format: str = "auto", columns: dict[str, str] | Sequence[str] | None = None, template: str | None = None,
             mask: str | None = None, labels: str | Sequence[str] | None = None, label_method: str = "likelihood",
             positive: str | None = None, k: str | Sequence[int] = "1,5,10", max_new_tokens: int = 64,
             sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             segmenter: str = "char", batch_size: int = 8, max_length: int | None = None,
             max_samples: int | None = None, baselines: bool = False, train: str | Path | None = None,
             device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False) -> dict:
    """`sftlab eval MODEL --data DATA --task TASK [options]` in this process: writes metrics.json, predictions.jsonl
    (and the label plots) to `out` (default: `run.default_out`) and returns the metrics.json content. Each keyword is
    the option of that name (`format` is --format); `labels` and `k` also take lists; `columns` maps canonical
    fields to columns, as a dict or as --columns' `canonical=column` items (None: the run's data.columns; empty:
    none). Errors name the CLI's options."""
    from sftlab.cli import quiet_libraries
    from sftlab.data.option_names import parse_columns
    from sftlab.eval import run
    from sftlab.eval.tasks import EvalOptions
    from sftlab.models.trained import trained_settings

    quiet_libraries()
    if labels is not None and not isinstance(labels, str):
        labels = ",".join(labels)
    names = [part.strip() for part in labels.split(",") if part.strip()] if labels else None
    _check_options(batch_size=batch_size, max_new_tokens=max_new_tokens, max_length=max_length,
                   max_samples=max_samples, sample=sample, temperature=temperature, top_p=top_p, device=device,
                   train=train, baselines=baselines, labels=labels, names=names,
                   choices=[(task, "--task", TASKS), (mask, "--mask", MASKS), (dtype, "--dtype", DTYPES),
                            (label_method, "--label-method", LABEL_METHODS), (segmenter, "--segmenter", SEGMENTERS)])
    model, data, train = str(model), str(data), None if train is None else str(train)
    trained = trained_settings(Path(model))
    if columns is None:
        columns = trained.columns
    elif not isinstance(columns, dict):
        columns = parse_columns(list(columns))
    opts = EvalOptions(
        template=template or trained.template or "auto", mask=mask or trained.mask or "assistant",
        batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature,
        top_p=top_p, seed=seed, labels=names, label_method=label_method, positive=positive,
        ks=_int_list(k if isinstance(k, str) else ",".join(map(str, k)), "--k"), segmenter=segmenter,
        max_length=max_length or trained.max_length or 1024)
    out = str(out) if out else run.default_out(model, task)
    return run.evaluate(model, data, task, opts, out, overwrite=overwrite, with_baselines=baselines,
                        train_file=train, fmt=format, max_samples=max_samples, device=device, dtype=dtype,
                        columns=columns or None, trust_remote_code=trust_remote_code)


def handle(args) -> int:
    from sftlab.eval import run

    out = args.out or run.default_out(args.model, args.task)
    summary = evaluate(args.model, data=args.data, task=args.task, out=out, overwrite=args.overwrite,
                       format=args.format, columns=args.columns,
                       template=args.template, mask=args.mask, labels=args.labels, label_method=args.label_method,
                       positive=args.positive, k=args.k, max_new_tokens=args.max_new_tokens, sample=args.sample,
                       temperature=args.temperature, top_p=args.top_p, seed=args.seed, segmenter=args.segmenter,
                       batch_size=args.batch_size, max_length=args.max_length, max_samples=args.max_samples,
                       baselines=args.baselines, train=args.train, device=args.device, dtype=args.dtype,
                       trust_remote_code=args.trust_remote_code)
    run.print_summary(summary, out)
    return 0
