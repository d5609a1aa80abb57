"""`sftlab eval MODEL_DIR --data FILE --task lm|generation|labels|ranking`: metrics of a saved model on a file."""

from __future__ import annotations


def register(registry) -> None:
    parser = registry.top.add_parser(
        "eval", help="evaluate a saved model: lm loss, generation, label or ranking metrics (+ baselines)",
        description="Writes metrics.json, predictions.jsonl and (labels) confusion-matrix / PR-curve PNGs, "
                    "and prints a short table. See docs/eval.md for the data shapes.")
    parser.add_argument("model", metavar="MODEL_DIR", help="a run directory (its model/ is evaluated) or a saved model "
                        "directory (e.g. RUN/model)")
    parser.add_argument("--data", required=True, help="evaluation file (.jsonl/.json/.csv/...)")
    parser.add_argument("--task", required=True, choices=["lm", "generation", "labels", "ranking"])
    parser.add_argument("--out", help="output directory (default: eval-TASK in MODEL_DIR when it is a run directory, "
                        "else beside MODEL_DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--format", default="auto", help="data format of --data (as data.format)")
    parser.add_argument("--columns", nargs="*", metavar="CANONICAL=COLUMN",
                        help="map columns of --data and --train to canonical fields, e.g. label=category (as "
                             "data.columns; default: the run's data.columns; given with no value: none)")
    parser.add_argument("--template", help="chat template (default: the one the model was trained with, else auto)")
    parser.add_argument("--mask", choices=["assistant", "last_assistant", "each_assistant", "all"],
                        help="lm task: supervised tokens (default: the training run's data.mask)")
    parser.add_argument("--labels", help="comma-separated label set (default: labels seen in --data)")
    parser.add_argument("--label-method", choices=["likelihood", "generate", "head"], default="likelihood",
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
    parser.add_argument("--segmenter", choices=["char", "jieba"], default="char",
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
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default="float32",
                        help="weights dtype (default float32); auto: bfloat16 where the machine has bf16 matmuls in "
                             "hardware (AMX, AVX-512 BF16, a GPU), else float32")
    from sftlab.commands.generate import add_trust_argument

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


def _check_options(args) -> None:
    """Numbers that must be positive, sampling settings and the device, before any model is loaded."""
    from sftlab.errors import SftlabError

    for flag in ("batch_size", "max_new_tokens", "max_length", "max_samples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SftlabError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.sample and (args.temperature <= 0 or not 0 < args.top_p <= 1):
        raise SftlabError("--sample needs --temperature > 0 and --top-p in (0, 1]")
    device = args.device.split(":")[0]
    if device not in ("auto", "cpu", "cuda"):
        raise SftlabError(f"--device {args.device!r}: expected auto, cpu, cuda or cuda:N")
    if args.train and not args.baselines:
        raise SftlabError("--train: the file the baselines are fitted on; it needs --baselines")
    if args.labels:
        names = [part.strip() for part in args.labels.split(",") if part.strip()]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise SftlabError(f"--labels {args.labels!r}: {', '.join(map(repr, repeated))} given more than once")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SftlabError(f"--device {args.device}: this machine has no CUDA GPU; use cpu or auto")


def handle(args) -> int:
    from pathlib import Path

    from sftlab.data.option_names import parse_columns
    from sftlab.eval import run
    from sftlab.eval.tasks import EvalOptions
    from sftlab.models.trained import trained_settings

    _check_options(args)
    trained = trained_settings(Path(args.model))
    columns = trained.columns if args.columns is None else parse_columns(args.columns)
    opts = EvalOptions(
        template=args.template or trained.template or "auto", mask=args.mask or trained.mask or "assistant",
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        labels=[part.strip() for part in args.labels.split(",") if part.strip()] if args.labels else None,
        label_method=args.label_method, positive=args.positive, ks=_int_list(args.k, "--k"),
        segmenter=args.segmenter, max_length=args.max_length or trained.max_length or 1024)
    out = args.out or run.default_out(args.model, args.task)
    summary = run.evaluate(args.model, args.data, args.task, opts, out, overwrite=args.overwrite,
                           with_baselines=args.baselines, train_file=args.train, fmt=args.format,
                           max_samples=args.max_samples, device=args.device, dtype=args.dtype, columns=columns,
                           trust_remote_code=args.trust_remote_code)
    run.print_summary(summary, out)
    return 0
