"""`sftlab plan run.yaml [--probe] [--check] [--steps N] [--nproc N]`: per-strategy counts, memory estimates, the
run's steps (and, probed, its time), advice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def register(registry) -> None:
    parser = registry.top.add_parser(
        "plan", help="compare full / freeze / lora / auto before training: parameters, memory, time, advice",
        description="For the configured model and data: trainable parameters and estimated peak memory per "
                    "strategy, whether it fits, the run's optimizer steps, measured step times and run time "
                    "(--probe) and a recommendation.")
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value", help="e.g. train.batch_size=4")
    parser.add_argument("--strategies", default="full,freeze,lora,auto", help="comma-separated (default: all four)")
    parser.add_argument("--probe", action="store_true",
                        help="run a few real optimizer steps per strategy to measure time and peak memory")
    parser.add_argument("--steps", type=int, default=3,
                        help="optimizer steps per strategy for --probe/--check (default 3)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="training processes the run will use (sftlab train's --nproc x --nnodes; default 1): "
                             "each step then takes batch_size x N rows")
    parser.add_argument("--check", action="store_true",
                        help="probe, and report the estimate's error against the measured peak")
    parser.add_argument("--thresholds", help="YAML file overriding the recommendation thresholds (see docs/planner.md)")
    parser.add_argument("--json", dest="json_out", help="also write the whole plan as JSON to this file")
    parser.set_defaults(func=handle)


def parse_strategies(text: str, option: str = "--strategies") -> tuple[str, ...]:
    """'full,lora' -> ('full', 'lora'); unknown or repeated names fail with one line."""
    from sftlab.errors import SftlabError
    from sftlab.plan.planner import KINDS

    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        raise SftlabError(f"{option} {text!r}: expected distinct names among {', '.join(KINDS)}")
    return kinds


def check_json_path(path: str, inputs: list[Path]) -> None:
    """Refuse a `--json` path that cannot be written (or is an input) before the plan's minutes of work, not after."""
    from sftlab.errors import SftlabError
    from sftlab.io import check_output_parent

    if Path(path).resolve() in inputs:
        raise SftlabError(f"--json {path}: that is an input of the plan; write the JSON to another file")
    if Path(path).is_dir():
        raise SftlabError(f"--json {path}: is a directory; expected the path of a file to write")
    try:
        check_output_parent(path)
    except SftlabError as exc:
        raise SftlabError(f"--json {exc}") from None


def _check_counts(steps: int, nproc: int) -> None:
    from sftlab.errors import SftlabError

    if steps < 1:
        raise SftlabError(f"--steps {steps}: must be at least 1")
    if nproc < 1:
        raise SftlabError(f"--nproc {nproc}: must be at least 1")


def plan(config, overrides: Sequence[str] = (), *, strategies: str | Sequence[str] = "full,freeze,lora,auto",
         probe: bool = False, steps: int = 3, nproc: int = 1, check: bool = False,
         thresholds: str | Path | None = None, base_dir: str | Path | None = None, show_progress: bool = True) -> dict:
    """`sftlab plan CONFIG [OVERRIDES] [options]` in this process: returns the plan `sftlab plan --json` writes
    (`sftlab.plan.planner.build_plan`). `config` (a YAML path or a RunConfig) and `base_dir` as in
    `sftlab.commands.train.run_config`; the other keywords are the options of that name (`strategies` also takes a
    list); `show_progress`: the slow phases' progress lines on stderr."""
    from sftlab.cli import quiet_libraries
    from sftlab.commands.train import run_config
    from sftlab.plan.planner import build_plan
    from sftlab.plan.recommend import load_thresholds
    from sftlab.progress import say

    quiet_libraries()
    _check_counts(steps, nproc)
    kinds = parse_strategies(strategies if isinstance(strategies, str) else ",".join(strategies))
    loaded = load_thresholds(thresholds)
    cfg, base_dir = run_config(config, overrides, base_dir)
    return build_plan(cfg, base_dir, loaded, kinds, probe_steps=steps if probe else None, check=check,
                      processes=nproc, progress=say if show_progress else None)


def handle(args) -> int:
    from sftlab.io import atomic_write_json
    from sftlab.plan.table import render_plan

    _check_counts(args.steps, args.nproc)
    parse_strategies(args.strategies)
    inputs = [Path(path).resolve() for path in (args.config, args.thresholds) if path]
    if args.json_out:
        check_json_path(args.json_out, inputs)
    result = plan(args.config, args.overrides, strategies=args.strategies, probe=args.probe, steps=args.steps,
                  nproc=args.nproc, check=args.check, thresholds=args.thresholds)
    print(render_plan(result))
    if args.json_out:
        atomic_write_json(args.json_out, result)
    return 0
