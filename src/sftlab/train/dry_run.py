"""`sftlab train run.yaml --dry-run`: everything a run does before its first optimizer step, a report, and no file
under output.dir.

    report = dry_run(cfg, resume=False, overwrite=False, base_dir=Path("configs"))
    print("\\n".join(report_lines(report)))          # or json.dumps(report): `--dry-run --json`

`check_output_dir` makes the checks of `sftlab.train.rundir.prepare_output_dir` without its changes (nothing is
created there, set aside or moved) and adds one: the directory the run would write in must be writable. Then the
session is built as a run builds it (`build_session(write=False)`): tokenizer, data with its checks (the
tokenisation cache under data.cache_dir is written as a run writes it), the stage's model, the strategy (auto
scores its calibration batches), fused kernels, optimizer and schedule, and on --resume the checkpoint's
weights and state. The run log's setup lines go to stderr as a run prints them (trainable count, attention,
precision, dropped or cut samples; a resume's lines), the session is released, and the report says what the run
would be: stage, strategy, precision, processes; trainable parameters and their share; each split's rows,
examples, tokens, supervised tokens and dropped/cut/truncated counts (`sftlab.data.preview.summary_line`, as
`sftlab data preview` shows them); the optimizer steps (`sftlab.plan.runtime`, as `sftlab plan` counts them); and
`sftlab plan`'s memory estimate of this strategy for the worst-case micro-batch, with the memory available here.

With `processes` > 1 (a dry run of `sftlab train --nproc N`) this one process stands in for the launch: the steps
and a resume's process check count N processes, but no worker starts, so the process group and
train.distributed's sharding are not tried.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.progress import progress_bars, say


def _nearest_existing(path: Path) -> Path:
    """`path`, or the closest of its parents that exists (where the run's mkdir would start)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_output_dir(out_dir: Path, resume: bool, overwrite: bool) -> tuple[Path | None, str]:
    """What `prepare_output_dir` would refuse, as its own one-line error, without changing anything; return the
    checkpoint a resume starts from (else None) and one line on the directory's state."""
    from sftlab.train.rundir import RUN_ENTRIES, prepare_output_dir

    checkpoint = prepare_output_dir(out_dir, resume=True, overwrite=False) if resume else None  # read-only
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    if not resume and out_dir.exists() and (not out_dir.is_dir() or (occupied and not overwrite)):
        prepare_output_dir(out_dir, resume=False, overwrite=False)  # raises before it would change anything
    base = _nearest_existing(out_dir)
    if base.is_dir() and not os.access(base, os.W_OK | os.X_OK):
        raise SftlabError(f"output.dir {out_dir}: {base} is not writable")
    if checkpoint is not None:
        return checkpoint, f"{out_dir}: a resume continues {checkpoint}"
    if not out_dir.exists():
        from sftlab.io import check_output_parent

        try:
            check_output_parent(out_dir)
        except SftlabError as exc:
            raise SftlabError(f"output.dir {exc}") from None
        return None, f"{out_dir}: does not exist; a run would create it"
    if not occupied:
        return None, f"{out_dir}: exists and is empty"
    previous = [name for name in RUN_ENTRIES if (out_dir / name).exists()]
    return None, (f"{out_dir}: not empty; --overwrite would replace the previous run's "
                  f"{', '.join(previous) or 'entries (none found)'} and keep other files")


def memory_estimate(session) -> dict | None:
    """`sftlab plan`'s peak-memory estimate of this run's strategy on its worst-case micro-batch (one process), the
    memory available here and whether it fits under the planner's headroom; None for a streamed corpus (the
    planner needs the training rows in memory)."""
    cfg, model, trainable = session.cfg, session.model, session.trainable
    if cfg.data.streaming:
        return None
    from sftlab.plan.memory import ModelShape, backprop_depth
    from sftlab.plan.planner import available_memory, estimate_row, qlora
    from sftlab.plan.probe import worst_case_workload
    from sftlab.plan.recommend import load_thresholds

    counts = {"trainable": trainable.trainable, "total": trainable.total,  # as `count_strategy` gives them
              "copies": trainable.copies,
              "depth": backprop_depth(model, trainable.names), "shape": asdict(ModelShape.from_model(model)),
              "param_dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if qlora(cfg):
        from sftlab.models.nf4 import quantized_weights

        counts.update(four_bit=sorted(quantized_weights(model).values()), param_dtype="float32")
    workload = worst_case_workload(session.prepared, session.collate, cfg.train)
    estimate = estimate_row(counts, workload, cfg)
    memory, headroom = available_memory(), load_thresholds()["memory_headroom"]
    return {"workload": workload, "estimate": estimate, "available": memory, "headroom": headroom,
            "fits": estimate["total"] <= headroom * memory["bytes"]}


def _run(session, processes: int) -> dict | None:
    """The run's length as `sftlab plan` reports it (None for a streamed corpus: train.max_steps steps)."""
    from sftlab.plan.runtime import run_length

    return None if session.cfg.data.streaming else run_length(session.cfg, session.prepared, processes)


def _report(session, output: str, processes: int) -> dict:
    """What the dry run found, as JSON-ready data."""
    cfg, trainable = session.cfg, session.trainable
    stats = getattr(session.prepared, "stats", None) or {}
    resume = ({"checkpoint": str(session.resumed_from), "step": session.step} if session.resumed_from else None)
    return {"dry_run": True, "output_dir": str(session.out_dir), "output": output, "stage": cfg.train.stage,
            "strategy": trainable.kind, "precision": cfg.train.precision, "processes": processes,
            "trainable": trainable.trainable, "total_parameters": trainable.total,
            "trainable_share": trainable.fraction,
            "data": {split: stats[split] for split in ("train", "validation") if isinstance(stats.get(split), dict)},
            "streaming": bool(cfg.data.streaming), "total_steps": session.total_steps, "run": _run(session, processes),
            "resume": resume, "memory": memory_estimate(session)}


class _StderrLog:
    """The run log's `message`, for `log_setup`: a line on stderr, as a run prints it (less the pointer of the drop
    lines to data_stats.json, which a dry run does not write)."""

    @staticmethod
    def message(text: str) -> None:
        say(text.removesuffix("; data_stats.json counts them"))


def dry_run(cfg, resume: bool = False, overwrite: bool = False, base_dir: Path | None = None,
            show_progress: bool = True, processes: int | None = None) -> dict:
    """Set up `cfg`'s run as `run_training` would, up to its first optimizer step, writing nothing under
    output.dir; print the run log's setup lines on stderr (main process) and return the report (`_report`)."""
    from sftlab.train.distributed import make_accelerator
    from sftlab.train.loop import cleanup, log_setup
    from sftlab.train.precision import resolve_precision
    from sftlab.train.setup import build_session, resume_lines

    cfg, precision_choice = resolve_precision(cfg)  # train.precision: auto becomes bf16 or fp32, as in a run
    out_dir = Path(cfg.output.dir).expanduser()
    checkpoint, output = check_output_dir(out_dir, resume, overwrite)
    accelerator = make_accelerator(cfg)
    with progress_bars(show_progress):
        session, _ = build_session(cfg, out_dir, checkpoint, base_dir, accelerator, write=False, processes=processes)
    try:
        if accelerator.is_main_process:
            log_setup(_StderrLog(), session, precision_choice)
            for line in resume_lines(session) if session.resumed_from else []:
                say(line)
        return _report(session, output, processes or accelerator.num_processes)
    finally:
        cleanup(session)


def _memory_line(memory: dict) -> str:
    from sftlab.plan.table import human_bytes

    est, work, available = memory["estimate"], memory["workload"], memory["available"]
    where = "; ".join(part for part in (available["device"], available.get("limit")) if part)
    verdict = "fits" if memory["fits"] else "does not fit"
    return (f"memory estimate (sftlab plan's, one process, worst micro-batch {work['batch']} rows x {work['seq']} "
            f"tokens): peak {human_bytes(est['total'])} = weights {human_bytes(est['weights'])} + optimizer "
            f"{human_bytes(est['optimizer'])} + max(activations {human_bytes(est['activations'])}, gradients "
            f"{human_bytes(est['gradients'])}); {verdict} in {memory['headroom']:.0%} of "
            f"{human_bytes(available['bytes'])} ({where})")


def report_lines(report: dict) -> list[str]:
    """The report as the text `sftlab train --dry-run` prints on stdout."""
    from sftlab.data.preview import summary_line
    from sftlab.plan.runtime import steps_line

    processes = report["processes"]
    one = f", {processes} processes (set up in this one process; no worker started)" if processes > 1 else ""
    lines = [f"dry run: set up to the first optimizer step; nothing trained, nothing written under "
             f"{report['output_dir']}",
             f"output.dir {report['output']}",
             f"stage {report['stage']}, strategy {report['strategy']}, precision {report['precision']}{one}",
             f"trainable {report['trainable']:,} / {report['total_parameters']:,} parameters "
             f"({100 * report['trainable_share']:.2f}%)"]
    if report["streaming"]:
        lines.append("train: streamed (data.streaming); rows and tokens are counted as the run reads them")
    lines += [summary_line(split, stats) for split, stats in report["data"].items()]
    if report["resume"]:
        lines.append(f"resume: from step {report['resume']['step']} of {report['total_steps']:,}")
    if report["run"]:
        lines.append(steps_line(report["run"]))
    else:
        lines.append(f"run: {report['total_steps']:,} optimizer steps (train.max_steps; a stream has no epoch length)")
    lines.append(_memory_line(report["memory"]) if report["memory"] else
                 "memory estimate: none for a streamed corpus (sftlab plan needs the training rows in memory)")
    return lines
