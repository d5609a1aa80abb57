"""The run's length: the optimizer steps a run config implies, and its time from a measured step time.

    run = run_length(cfg, prepared, processes=1)    # prepared: the planner's `prepare_data` output
    run["steps"], run["steps_per_epoch"], run["evaluations"]
    run_seconds(run["steps"], plan["rows"]["lora"]["probe"]["step_seconds"])

The steps come from the function `sftlab train` computes its total with (`sftlab.train.batches.total_steps`,
called by `build_session`) on the same prepared training rows, so with `data.packing` the packed rows
decide the batches. The time is steps x the probe's median step time: training steps only; evaluations,
setup and saving are not measured, and the probe's steps are worst-case ones (the longest rows).
"""

from __future__ import annotations

from sftlab.train.batches import steps_per_epoch, total_steps


def run_length(cfg, prepared, processes: int = 1) -> dict:
    """Optimizer steps of `cfg`'s run on `prepared` with `processes` training processes, and how they are counted."""
    rows = len(prepared.train)
    global_batch = cfg.train.batch_size * processes
    per_epoch = steps_per_epoch(rows, global_batch, cfg.train.grad_accum)
    steps = total_steps(rows, global_batch, cfg.train.grad_accum, cfg.train.epochs, cfg.train.max_steps)
    return {"steps": steps, "source": "train.max_steps" if cfg.train.max_steps is not None else "train.epochs",
            "epochs": cfg.train.epochs, "rows": rows, "packed": "packed_rows" in prepared.stats,
            "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum, "processes": processes,
            "steps_per_epoch": per_epoch, "evaluations": evaluations(cfg, prepared, steps),
            "eval_every_n_steps": cfg.eval.every_n_steps}


def evaluations(cfg, prepared, steps: int) -> int:
    """Validations a run of `steps` steps makes: every eval.every_n_steps, and one at the end unless the last
    step was one (`sftlab.train.loop.save_final`); none without a validation split."""
    if not prepared.validation:
        return 0
    every = cfg.eval.every_n_steps
    during = steps // every if every else 0
    return during + (0 if every and steps % every == 0 else 1)


def run_seconds(steps: int, step_seconds: float) -> float:
    """The training steps' time: steps x measured seconds per step."""
    return steps * step_seconds


def human_duration(seconds: float) -> str:
    """3725 -> '1 h 02 min'; 130 -> '2 min'; 20 -> '0 min' (rounded to the minute)."""
    minutes = int(seconds / 60 + 0.5)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _seconds(value: float) -> str:
    """0.03271 -> '0.0327'; 24.81 -> '24.8'; 3720.4 -> '3,720'."""
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def steps_line(run: dict) -> str:
    """The header line: the step count and where it comes from."""
    unit = "packed rows" if run["packed"] else "training rows"
    if run["source"] == "train.max_steps":
        how = f"train.max_steps; one epoch is {run['steps_per_epoch']:,}"
    else:
        how = f"train.epochs {run['epochs']:g} x {run['steps_per_epoch']:,} per epoch"
    processes = f" x {run['processes']} processes" if run["processes"] > 1 else ""
    return (f"run: {run['steps']:,} optimizer steps ({how}: {run['rows']:,} {unit}, {run['batch_size']} rows x "
            f"{run['grad_accum']} micro-batches{processes} per step)")


def not_timed(run: dict) -> str:
    """What the run time leaves out, in words."""
    count = run["evaluations"]
    evaluations = f"{count} evaluation{'s' if count != 1 else ''}, " if count else ""
    return f"not included: {evaluations}setup, saving"


def time_lines(plan: dict) -> list[str]:
    """Per probed strategy, `kind ≈ h/min (steps x s/step = seconds s)`; without a probe, how to get one."""
    run = plan["run"]
    probed = {kind: row["probe"] for kind, row in plan["rows"].items() if "probe" in row}
    if not probed:
        return ["run time: not estimated; `sftlab plan --probe` measures seconds per step and multiplies them by "
                "the steps"]
    one = "; measured on 1 process, without communication" if run["processes"] > 1 else ""
    lines = [f"run time ≈ {run['steps']:,} steps x measured s/step (the probe's median worst-case step; "
             f"{not_timed(run)}{one}):"]
    for kind, probe in probed.items():
        seconds = probe["run_seconds"]
        lines.append(f"  {kind} ≈ {human_duration(seconds)} ({run['steps']:,} x {_seconds(probe['step_seconds'])} s "
                     f"= {_seconds(seconds)} s)")
    return lines
