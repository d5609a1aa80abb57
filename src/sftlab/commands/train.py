"""`sftlab train run.yaml [key.sub=value ...] [--resume] [--overwrite]`: run one training job."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def register(registry) -> None:
    parser = registry.top.add_parser("train", help="fine-tune a model (pt, sft or cls) from a run config",
                                     description="Train from a YAML run config; dotted overrides change single keys.")
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="e.g. train.lr=2e-5 strategy.kind=lora")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint in output.dir exactly")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output.dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics are still logged)")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from sftlab.config import load_config
    from sftlab.errors import SftlabError
    from sftlab.train import TrainingInterrupted, run_training

    if args.resume and args.overwrite:
        raise SftlabError("--resume and --overwrite exclude each other: resume continues output.dir, overwrite replaces it")
    cfg = load_config(args.config, args.overrides)
    try:
        result = run_training(cfg, resume=args.resume, overwrite=args.overwrite, base_dir=Path(args.config).parent,
                              show_progress=not args.no_progress)
    except TrainingInterrupted as stop:
        command = shlex.join(["sftlab", "train", args.config, *args.overrides, "--resume"])
        print(f"{stop}; resume with: {command}", file=sys.stderr)
        return 130
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if isinstance(v, float))
    print(f"trained {result.metrics['step']} steps ({result.stopped}); {shown}; model in {result.out_dir / 'model'}")
    return 0
