"""`sftlab report RUN_DIR [RUN_DIR...]`: an offline report.html with PNG plots, one run or several side by side."""

from __future__ import annotations

from pathlib import Path


def register(registry) -> None:
    parser = registry.top.add_parser(
        "report", help="write report.html + PNGs for one or more training runs",
        description="Loss, learning rate, tokens/s and validation metric curves, final metrics, trainable parameters, "
                    "data statistics and the resolved config of each run, viewable offline.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output directories")
    parser.add_argument("--out", help="output directory (default: the run directory for one run; required for several)")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from sftlab.errors import SftlabError
    from sftlab.eval.report import write_report

    if args.out is None and len(args.runs) > 1:
        raise SftlabError("--out is required when comparing several runs (e.g. --out runs/compare)")
    out = Path(args.out or args.runs[0])
    path = write_report([Path(run) for run in args.runs], out)
    print(f"wrote {path}")
    return 0
