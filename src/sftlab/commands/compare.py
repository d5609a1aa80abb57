"""`sftlab compare run.yaml --strategies full,freeze,lora,auto --budget 20steps|60s --out DIR`."""

from __future__ import annotations

from pathlib import Path


def register(registry) -> None:
    parser = registry.top.add_parser(
        "compare", help="train several strategies on the same data and budget; write a comparison table and plot",
        description="Train each strategy with the same data, seed and budget, evaluate on the validation split, and "
                    "write compare.json, compare.md and compare.png.")
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value", help="e.g. train.lr=2e-5")
    parser.add_argument("--strategies", default="full,freeze,lora,auto", help="comma-separated (default: all four)")
    parser.add_argument("--budget", required=True, help="per strategy: optimizer steps (20steps) or time (60s, 5m)")
    parser.add_argument("--out", help="output directory (default: output.dir + '-compare')")
    parser.add_argument("--thresholds", help="thresholds YAML (its freeze_last_fraction sets the default freeze row)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier comparison in the output directory: its strategies' run directories "
                             "and compare.*; other files there stay")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from sftlab.commands.plan import parse_strategies
    from sftlab.config import load_config
    from sftlab.plan.compare import compare, parse_budget
    from sftlab.plan.recommend import load_thresholds
    from sftlab.plan.report import comparison_table
    from sftlab.plan.table import format_table
    from sftlab.progress import say

    kinds = parse_strategies(args.strategies)
    budget = parse_budget(args.budget)
    thresholds = load_thresholds(args.thresholds)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or f"{cfg.output.dir.rstrip('/')}-compare")
    summary = compare(cfg, kinds, budget, out, Path(args.config).parent, thresholds, overwrite=args.overwrite,
                      progress=say)
    print(format_table(*comparison_table(summary)))
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}, {out / 'compare.png'}")
    return 0
