"""`sftlab data preview run.yaml [-n 3] [key.sub=value ...]`: see samples as training sees them.

Prints the first N token rows of the run's data with supervised tokens highlighted (green on a terminal,
`[[...]]` otherwise), each sample's supervised-token ratio and the split's totals. Exits with an error
when a sample has no supervised token or when, in sft, every token is supervised (a broken mask).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(registry) -> None:
    parser = registry.group("data").add_parser(
        "preview", help="show samples with their supervised tokens highlighted",
        description="Tokenize the run's data as training does and show the first samples, supervised tokens "
                    "highlighted, with supervised-token ratios; fail on a mask that supervises nothing or everything.")
    parser.add_argument("config", help="run config YAML")
    # Optional ("*"): overrides written after an option are collected by cli.parse_command_line, and options
    # written among the overrides by a second parse, so options and overrides mix in any order after the config.
    parser.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value",
                        help="optional run config overrides, e.g. data.template=chatml data.mask=all (options may come "
                             "before or after)")
    _add_options(parser, argparse_defaults=True)
    parser.set_defaults(func=handle)


def _add_options(parser: argparse.ArgumentParser, argparse_defaults: bool) -> None:
    def default(value):
        return value if argparse_defaults else argparse.SUPPRESS

    parser.add_argument("-n", "--num", type=int, default=default(3), help="samples to show (default 3)")
    parser.add_argument("--split", choices=["train", "validation"], default=default("train"), help="which split to show")
    parser.add_argument("--color", choices=["auto", "always", "never"], default=default("auto"),
                        help="highlight with ANSI colour (auto: on a terminal unless NO_COLOR is set), else [[...]]")


def _split_trailing_options(args) -> None:
    """Move options written after the config file out of `args.overrides` into `args`."""
    trailing = argparse.ArgumentParser(prog="sftlab data preview CONFIG", add_help=True)
    trailing.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value")
    _add_options(trailing, argparse_defaults=False)
    parsed = trailing.parse_intermixed_args(args.overrides)
    for key, value in vars(parsed).items():
        setattr(args, key, value)


def handle(args) -> int:
    from sftlab.config import load_config
    from sftlab.data.preview import check_supervision, format_view, load_preview, summary_line
    from sftlab.errors import SftlabError
    from sftlab.models.load import load_tokenizer

    _split_trailing_options(args)
    if args.num < 0:
        raise SftlabError(f"-n {args.num}: the number of samples cannot be negative")
    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg.model)
    preview = load_preview(cfg, tokenizer, base_dir=Path(args.config).parent, count=args.num, split=args.split)
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    print(f"stage: {cfg.train.stage}" + (f"; mask: {cfg.data.mask}; {preview.template}" if preview.template else ""))
    for index, view in enumerate(preview.views):
        print(format_view(tokenizer, index, view, colour))
    print(summary_line(args.split, preview.stats))
    check_supervision(cfg.train.stage, cfg.data.mask, preview.stats, args.split)
    return 0
