"""`sftlab data build|clean|augment|balance|stats|features`: argument parsers for the data-work commands.

The work itself is in `sftlab.datawork` (handlers in `sftlab.datawork.handlers`, imported when a command runs).
"""

from __future__ import annotations


def _handler(name: str):
    def run(args):
        from sftlab.datawork import handlers

        return getattr(handlers, name)(args)

    return run


def _data_args(parser, output: bool = True) -> None:
    parser.add_argument("input", help="data file (json, jsonl, csv, tsv, parquet, txt)")
    if output:
        parser.add_argument("output", help="output file (never the input)")
    parser.add_argument("--format", default="auto", help="input format: auto, alpaca, sharegpt, messages, prompt_completion, text, label")
    parser.add_argument("--stage", choices=["pt", "sft", "cls"], default=None, help="default: the stage the format implies")
    parser.add_argument("--columns", nargs="*", metavar="CANONICAL=COLUMN", help="map file columns, e.g. label=category text=sentence")


def _eval_args(parser, what: str) -> None:
    parser.add_argument("--eval", nargs="*", help=f"validation/test files (not the input or the output): {what}")
    parser.add_argument("--eval-format", help="format of the --eval files (default: --format)")
    parser.add_argument("--eval-columns", nargs="*", metavar="CANONICAL=COLUMN",
                        help="column mapping of the --eval files (default: --columns; given with no value: none)")


def _to_arg(parser, default: str | None = None) -> None:
    parser.add_argument("--to", default=default, choices=["alpaca", "sharegpt", "messages", "openai", "jsonl", "csv"],
                        help="output format (default: messages for conversations, jsonl otherwise); image+text data: "
                             "messages or sharegpt (<image> placeholders and an images list), openai (image_url "
                             "content parts) or jsonl")


def _generation_args(parser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (reproducible); > 0 samples, seeded")
    parser.add_argument("--seed", type=int, default=0)


def _register_build(data) -> None:
    build = data.add_parser("build", help="validate, convert, draft with a model and review, or generate from a knowledge base")
    sub = build.add_subparsers(dest="build_command", metavar="STEP")
    build.set_defaults(func=lambda args, p=build: p.print_help() or 2)

    p = sub.add_parser("validate", help="list every problem of a hand-written file with its line number")
    _data_args(p, output=False)
    p.add_argument("--id-field", default="id", help="column whose values must be unique ('' to skip)")
    p.add_argument("--report", help="also write REPORT.json and REPORT.md")
    p.set_defaults(func=_handler("build_validate"))

    p = sub.add_parser("convert", help="convert between alpaca, sharegpt, messages, openai, jsonl and csv")
    _data_args(p)
    _to_arg(p, "messages")
    _drop_invalid_arg(p)
    p.set_defaults(func=_handler("build_convert"))

    p = sub.add_parser("drafts", help="draft responses with a local model into a review file (keeps earlier decisions)")
    p.add_argument("input", help="instructions file (instruction, optional input and id)")
    p.add_argument("--review", required=True, help="review JSONL file (.jsonl) to create or update")
    p.add_argument("--model", required=True, help="local causal LM directory that writes the drafts")
    p.add_argument("--columns", nargs="*", metavar="CANONICAL=COLUMN", help="e.g. instruction=question")
    p.add_argument("--id-field", default="id")
    _generation_args(p)
    p.set_defaults(func=_handler("build_drafts"))

    p = sub.add_parser("export", help="export approved and edited review records as training data")
    p.add_argument("review", help="review JSONL file")
    p.add_argument("output")
    _to_arg(p, "messages")
    p.set_defaults(func=_handler("build_export"))

    p = sub.add_parser("kb", help="instruction/response pairs from knowledge-base records and question templates")
    p.add_argument("input", help="records (CSV/JSONL), e.g. title, issuer, category, date, eligibility, benefits")
    p.add_argument("output")
    p.add_argument("--templates", help="template YAML (default: built-in resources/kb_templates.yaml)")
    p.add_argument("--lang", default="zh", help="template language (zh, en)")
    p.add_argument("--per-record", type=int, default=3, help="pairs per record (templates chosen at random, seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id-field", default="id", help="record id used to seed each record's choices")
    _to_arg(p, "messages")
    p.set_defaults(func=_handler("build_kb"))


def _drop_invalid_arg(p) -> None:
    p.add_argument("--drop-invalid", action="store_true",
                   help="leave out rows that do not convert (a missing field, a tool result without a call, a row of "
                        "another format, a lone surrogate) and list them in the report, instead of stopping at the first")


def _register_clean(data) -> None:
    p = data.add_parser("clean", help="normalise, redact PII, filter, deduplicate (exact + MinHash), remove leaks into eval sets")
    _data_args(p)
    _to_arg(p)
    _drop_invalid_arg(p)
    g = p.add_argument_group("normalisation")
    g.add_argument("--no-normalize", action="store_true", help="skip all normalisation")
    g.add_argument("--no-nfkc", action="store_true", help="skip Unicode NFKC / full-width -> half-width")
    g.add_argument("--keep-html", action="store_true", help="leave HTML tags and entities")
    g.add_argument("--t2s", action="store_true", help="traditional -> simplified Chinese (OpenCC)")
    g.add_argument("--cjk-spaces", action="store_true", help="remove spaces between Chinese characters (中 国 -> 中国)")
    g = p.add_argument_group("PII redaction")
    g.add_argument("--redact-pii", nargs="?", const="all", metavar="KINDS", type=_pii_kinds,
                   help="replace e-mails, phones, CN resident IDs, card numbers and IPv4 addresses with [EMAIL] "
                        "[PHONE] [ID] [CARD] [IP] in texts, tool-call arguments and tool results; optional comma "
                        "list of email,phone,id,card,ip (default all)")
    g = p.add_argument_group("filters")
    g.add_argument("--tokenizer", help="tokenizer directory for --min-tokens / --max-tokens")
    g.add_argument("--config", help="run config whose model's tokenizer counts tokens (when --tokenizer is not given)")
    g.add_argument("--min-tokens", type=int, help="drop responses shorter than this")
    g.add_argument("--max-tokens", type=int, help="drop responses longer than this")
    g.add_argument("--lang", help="keep responses in these languages (zh, ja, ko, en, ru), e.g. zh or zh,en")
    g.add_argument("--refusals", help="file of refusal/boilerplate regexes (default: built-in list)")
    g.add_argument("--no-refusals", action="store_true", help="do not filter refusals")
    g.add_argument("--keep-prompt-repeats", action="store_true", help="keep responses that repeat the prompt")
    g = p.add_argument_group("deduplication")
    g.add_argument("--no-exact", action="store_true", help="keep exact duplicates")
    g.add_argument("--near", type=float, default=0.8, help="Jaccard threshold for near duplicates (MinHash LSH)")
    g.add_argument("--no-near", action="store_true", help="skip near-duplicate detection")
    g.add_argument("--ngram", type=int, default=3, help="character n-gram size for near duplicates")
    _eval_args(g, "training examples that match them are removed (leakage)")
    g.add_argument("--keep-leaks", action="store_true", help="only report leakage, remove nothing")
    p.set_defaults(func=_handler("clean"))


def _register_augment(data) -> None:
    p = data.add_parser("augment", help="rule-based (synonym, swap, delete, insert) and model paraphrase augmentation")
    _data_args(p)
    p.add_argument("--methods", default="synonym,swap", help="comma list of synonym, swap, delete, insert, paraphrase")
    p.add_argument("--rate", type=float, default=0.1, help="share of words changed per operation")
    p.add_argument("--copies", type=int, default=1,
                   help="augmented copies per example and rule method (at least 1; a repeated copy is skipped)")
    p.add_argument("--synonyms", help="synonym group file (default: built-in zh and en lists)")
    p.add_argument("--lang", default="auto", help="built-in synonym list: zh, en or auto (both)")
    p.add_argument("--model", help="local causal LM directory for --methods paraphrase")
    _eval_args(p, "augmented copies matching them are dropped")
    p.add_argument("--near", type=float, default=0.8, help="Jaccard threshold for the --eval check")
    _generation_args(p)
    p.set_defaults(func=_handler("augment"))


def _register_balance(data) -> None:
    p = data.add_parser("balance", help="label distribution, over/undersampling, class weights, SMOTE, stratified split")
    _data_args(p)
    _to_arg(p)
    p.add_argument("--method", default="none", choices=["none", "oversample", "undersample", "class_weight", "smote"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-ratio", type=float, default=0.0, help="hold out a stratified validation split first")
    p.add_argument("--val-out", help="where the validation split goes (not the input or the output)")
    p.add_argument("--encoder", help="--method smote: local model directory used to embed the texts")
    p.set_defaults(func=_handler("balance"))


def _register_stats(data) -> None:
    p = data.add_parser("stats", help="counts, length histograms, supervised ratio, labels, duplicates, languages")
    _data_args(p, output=False)
    p.add_argument("--out", help="directory for stats.json, stats.md and PNG plots (default: JSON on stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory and everything in it")
    p.add_argument("--json", action="store_true", help="also print the JSON when --out is given")
    p.add_argument("--tokenizer", help="tokenizer directory (default: lengths in characters)")
    p.add_argument("--config", help="run config: its tokenizer, train.max_length, data.template and data.mask are the defaults")
    p.add_argument("--max-length", type=int, help="report the share of samples longer than this")
    p.add_argument("--template", help="chat template used to render sft examples (default: auto)")
    p.add_argument("--mask", choices=["assistant", "last_assistant", "each_assistant", "all"],
                   help="supervised turns (default: assistant); each_assistant counts one sequence per assistant turn")
    p.add_argument("--label-task", action="store_true", help="sft answers are labels: report their distribution")
    p.add_argument("--near", type=float, default=0.8, help="Jaccard threshold for counting near duplicates")
    p.add_argument("--no-near", action="store_true", help="do not count near duplicates")
    p.set_defaults(func=_handler("stats"))


def _register_features(data) -> None:
    p = data.add_parser("features", help="tabular features: imputation, saved category encodings, declared derived features")
    p.add_argument("input", help="table (CSV/JSONL)")
    p.add_argument("output", help="feature table CSV")
    p.add_argument("--spec", help="feature spec YAML (fit imputation and encodings on this input); or --mapping")
    p.add_argument("--mapping", help="saved mapping JSON (apply to new data without refitting); or --spec")
    p.add_argument("--mapping-out", help="where to save the mapping (default: OUTPUT stem + .mapping.json)")
    p.set_defaults(func=_handler("features"))


def register(registry) -> None:
    data = registry.group("data")
    _register_build(data)
    _register_clean(data)
    _register_augment(data)
    _register_balance(data)
    _register_stats(data)
    _register_features(data)


def _pii_kinds(value: str) -> str:
    """--redact-pii's value, refused when it is a file name (the option was put before IN OUT without kinds)."""
    import argparse
    import os

    if "/" in value or "." in value or os.path.exists(value):
        raise argparse.ArgumentTypeError(f"{value!r} looks like a file, not PII kinds; put --redact-pii after IN and "
                                         "OUT, or give its kinds (email,id,card,phone,ip or all)")
    return value
