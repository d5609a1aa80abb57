"""`sftlab train run.yaml [key.sub=value ...] [--resume] [--overwrite] [--nproc N] [--dry-run [--json]]`: run one
training job, or with --dry-run set it up to its first optimizer step and report it (`sftlab.train.dry_run`).

With `--nproc N` (or `--nnodes M --node-rank R --rdzv-endpoint HOST:PORT` on each of M machines) the
command starts N worker processes per machine through torchrun, each running this same command
(see docs/distributed.md); a worker that fails stops the others and the command exits 2. Launch options and
output.dir states the workers would refuse fail before they start (`sftlab.train.launch_checks`, `_check_output_dir`).
The console script has by then started the command on jemalloc where train.allocator asks for it
(`sftlab.cli.console`, `sftlab.jemalloc`); the workers inherit its LD_PRELOAD and MALLOC_CONF.
A dry run of `--nproc N` runs in this one process after the launch options' checks: no worker starts, and the
report counts the steps for N processes (x --nnodes). `train(...)` is the command in one process for Python callers
(`sftlab.api`); `handle` and it share `load_run`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftlab.config.schema import RunConfig
    from sftlab.train import RunResult


def register(registry) -> None:
    parser = registry.top.add_parser("train", help="fine-tune a model (pt, sft or cls) from a run config",
                                     description="Train from a YAML run config; dotted overrides change single keys.")
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value", help="e.g. train.lr=2e-5 strategy.kind=lora")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint in output.dir exactly")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output.dir")
    parser.add_argument("--dry-run", action="store_true",
                        help="set the run up to its first optimizer step (config, output.dir checks, data, model, "
                             "strategy), report it and stop; nothing is written under output.dir")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the report as one JSON object on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, nor its plain lines when stderr is no terminal (metrics are still logged)")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="training processes on this machine (data parallel; gloo on CPU, NCCL on GPUs)")
    parser.add_argument("--nnodes", type=int, default=1, help="machines taking part (each runs this command)")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0 .. nnodes-1")
    parser.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                        help="rendezvous address (node 0's host and a free port), the same on every machine")
    parser.set_defaults(func=handle)


def _worker_command(args) -> list[str]:
    """The command each torchrun worker runs: this one, without the launch options."""
    flags = [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite),
                                   ("--no-progress", args.no_progress)) if on]
    return ["-m", "sftlab", "train", args.config, *args.overrides, *flags]


def _check_output_dir(args, cfg, processes: int) -> None:
    """On node 0, before any worker starts: what the workers' setup would refuse about output.dir, as one line
    (an occupied directory without --overwrite or --resume, one that cannot be written, --resume without a
    checkpoint or with another process count than the checkpoint's), as a dry run checks it. Nothing is created or
    moved here."""
    from sftlab.train.checkpoint import read_sidecar
    from sftlab.train.dry_run import check_output_dir
    from sftlab.train.setup import _check_resume_processes

    checkpoint, _ = check_output_dir(Path(cfg.output.dir).expanduser(), args.resume, args.overwrite)
    if checkpoint is not None:
        _check_resume_processes(read_sidecar(checkpoint), processes)


def _launch(args, cfg) -> int:
    """Start the workers and wait for them; a failed worker becomes one error line (exit 2)."""
    from sftlab.checkpoints import latest_checkpoint
    from sftlab.train.distributed import launch
    from sftlab.train.launch_checks import check_launch

    nproc = 1 if args.nproc is None else args.nproc
    check_launch(nproc, args.nnodes, args.node_rank, args.rdzv_endpoint)
    if args.node_rank == 0:
        _check_output_dir(args, cfg, nproc * args.nnodes)
    try:
        launch(_worker_command(args), nproc, nnodes=args.nnodes, node_rank=args.node_rank,
               rdzv_endpoint=args.rdzv_endpoint)
    except KeyboardInterrupt:
        checkpoint = latest_checkpoint(Path(cfg.output.dir).expanduser())
        launch_options = ["--nproc", str(nproc)] + (["--nnodes", str(args.nnodes)] if args.nnodes > 1 else [])
        command = shlex.join(["sftlab", "train", args.config, *args.overrides, *launch_options, "--resume"])
        where = f"latest checkpoint: {checkpoint}" if checkpoint else "no checkpoint was written"
        print(f"interrupted; {where}; resume with: {command}", file=sys.stderr)
        return 130
    if args.node_rank == 0:
        processes = nproc * args.nnodes
        print(f"trained with {processes} process{'es' if processes > 1 else ''}; model in {Path(cfg.output.dir) / 'model'}")
    return 0


def _dry_run(args, cfg, in_worker: bool) -> int:
    """`--dry-run`: the set-up of a run, reported on stdout (text, or JSON with --json); exit 0."""
    import json

    from sftlab.train.dry_run import dry_run, report_lines
    from sftlab.train.launch_checks import check_launch

    processes = None
    if (args.nproc is not None or args.nnodes > 1) and not in_worker:  # a launch: checked, then stood in for
        nproc = 1 if args.nproc is None else args.nproc
        check_launch(nproc, args.nnodes, args.node_rank, args.rdzv_endpoint)
        processes = nproc * args.nnodes
    report = dry_run(cfg, resume=args.resume, overwrite=args.overwrite, base_dir=Path(args.config).parent,
                     show_progress=not args.no_progress, processes=processes)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(report, default=str) if args.json else "\n".join(report_lines(report)))
    return 0


def _check_resume_flags(resume: bool, overwrite: bool) -> None:
    from sftlab.errors import SftlabError

    if resume and overwrite:
        raise SftlabError("--resume and --overwrite exclude each other: resume continues output.dir, overwrite replaces it")


def run_config(config, overrides: Sequence[str] = (),
               base_dir: str | Path | None = None) -> tuple[RunConfig, Path | None]:
    """`(cfg, base_dir)`: the run config (a YAML path, or a RunConfig; either with `key.sub=value` overrides) and the
    directory its relative data paths are resolved against: `base_dir`, else a config file's own directory, else
    (a RunConfig) None, the working directory."""
    from sftlab.config import load_config
    from sftlab.config.schema import RunConfig
    from sftlab.errors import SftlabError

    if isinstance(overrides, str):
        raise SftlabError(f"overrides: expected a list of key.sub=value strings, got one string (write [{overrides!r}])")
    if isinstance(config, RunConfig):
        cfg = load_config(None, list(overrides), base=config.model_dump(mode="json")) if overrides else config
    else:
        cfg = load_config(config, list(overrides))
        base_dir = Path(config).parent if base_dir is None else base_dir
    return cfg, None if base_dir is None else Path(base_dir)


def load_run(config, overrides: Sequence[str] = (), *, resume: bool = False, overwrite: bool = False,
             base_dir: str | Path | None = None) -> tuple[RunConfig, Path | None]:
    """`run_config` with the checks `sftlab train` makes before anything starts: --resume with --overwrite, and
    train.allocator: jemalloc with no jemalloc library."""
    from sftlab.jemalloc import resolve_allocator

    _check_resume_flags(resume, overwrite)
    cfg, base_dir = run_config(config, overrides, base_dir)
    resolve_allocator(cfg.train.allocator)  # jemalloc required but not found: fail before anything starts
    return cfg, base_dir


def train(config, overrides: Sequence[str] = (), *, resume: bool = False, overwrite: bool = False,
          base_dir: str | Path | None = None, show_progress: bool = True, callbacks: list | None = None) -> RunResult:
    """`sftlab train CONFIG [OVERRIDES] [--resume] [--overwrite] [--no-progress]` in this process; returns the
    `RunResult` (out_dir, metrics, losses, stopped). `config` and `base_dir` as in `run_config`; `callbacks` as in
    `run_training`. Ctrl-C raises `TrainingInterrupted` after saving a checkpoint. On the system malloc: the CLI's
    move onto jemalloc needs a new process (the run log's allocator line says how to start one)."""
    from sftlab.cli import quiet_libraries
    from sftlab.train import run_training

    quiet_libraries()
    cfg, base_dir = load_run(config, overrides, resume=resume, overwrite=overwrite, base_dir=base_dir)
    return run_training(cfg, resume=resume, overwrite=overwrite, base_dir=base_dir, callbacks=callbacks,
                        show_progress=show_progress)


def handle(args) -> int:
    from sftlab.errors import SftlabError
    from sftlab.train import TrainingInterrupted, run_training

    _check_resume_flags(args.resume, args.overwrite)
    if args.json and not args.dry_run:
        raise SftlabError("--json goes with --dry-run (a run's results are in output.dir: metrics.json, metrics.jsonl)")
    cfg, base_dir = load_run(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
    in_worker = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.dry_run:
        return _dry_run(args, cfg, in_worker)
    if (args.nproc is not None or args.nnodes > 1) and not in_worker:
        return _launch(args, cfg)
    try:
        result = run_training(cfg, resume=args.resume, overwrite=args.overwrite, base_dir=base_dir,
                              show_progress=not args.no_progress)
    except TrainingInterrupted as stop:
        if in_worker:  # the launcher (sftlab train --nproc) prints the exact command
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"{stop}; resume by repeating the launch with --resume", file=sys.stderr)
            return 130
        command = shlex.join(["sftlab", "train", args.config, *args.overrides, "--resume"])
        print(f"{stop}; resume with: {command}", file=sys.stderr)
        return 130
    except Exception as exc:  # a collective that failed because another process died or hung
        from sftlab.train.distributed import lost_contact_message

        message = lost_contact_message(exc, cfg.train.dist_timeout_s)
        if message is None:
            raise
        from sftlab.worker_errors import LostContact

        raise LostContact(message) from None
    if int(os.environ.get("RANK", "0")) == 0:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if isinstance(v, float))
        print(f"trained {result.metrics['step']} steps ({result.stopped}); {shown}; model in {result.out_dir / 'model'}")
    return 0
