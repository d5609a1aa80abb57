"""The one training loop for pt, sft and cls: setup -> train -> save -> cleanup.

    result = run_training(cfg, resume=False, overwrite=False, base_dir=None)
    result.out_dir / "model"      # the final model (from_pretrained / PeftModel.from_pretrained)

Each optimizer step takes `train.grad_accum` micro-batches, counts their supervised tokens (pt/sft) or
examples (cls) first, and back-propagates every micro-batch's *summed* loss divided by that total,
so batch 8 x accumulation 1 and batch 2 x accumulation 4 give the same update. Ctrl-C saves a
checkpoint and raises `TrainingInterrupted` (exit 130 in the CLI); a non-finite loss (or gradient
norm, when clipping is on) stops with `TrainingDiverged` (exit 2) before the bad update is applied. Under
train.precision fp16 the loss is scaled and a step whose gradients overflow is skipped instead
(`sftlab.train.scaling`).

Under a multi-process launch (`sftlab train --nproc N`, torchrun, accelerate launch) every rank runs this
loop on its share of each global micro-batch (`sftlab.train.distributed`): counts and losses are summed
over ranks, evaluation sums are combined, and only the main process writes logs, checkpoints and the model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sftlab.data.preview import drop_lines
from sftlab.errors import SftlabError
from sftlab.io import atomic_dir, atomic_write_json
from sftlab.jemalloc import allocator_line
from sftlab.models import kernels
from sftlab.models.attention import attention_line
from sftlab.models.fused import fused_summary
from sftlab.progress import progress_bars
from sftlab.train.allocator import restore_default_thresholds
from sftlab.train.batches import iterate_steps
from sftlab.checkpoints import latest_checkpoint
from sftlab.train.checkpoint import capture_rng, clear_interrupted_writes, restore_rng, save_best, save_model_dir
from sftlab.train.distributed import call_unsharded, combine_eval_sums, no_sync_unless_last, rank_share, reduce_sum
from sftlab.train.interrupts import stop_on_sigint
from sftlab.train.optim import warmup_note
from sftlab.train.precision import precision_line, resolve_precision
from sftlab.train.runlog import RunLog, SilentLog, keep_rows_up_to
from sftlab.train.scaling import TrainingDiverged, apply_update, diverged  # noqa: F401 (sftlab.train exports it)
from sftlab.heap_slack import SlackGuard
from sftlab.train.rundir import prepare_output_dir, replacing_previous_run
from sftlab.train.saving import (best_metric_line, checkpoint_on_interrupt, gathered, interrupted_message,
                                 maybe_checkpoint, restore_stream_counts, sidecar, stream_count_metrics, unwrapped,
                                 update_counted, update_started)
from sftlab.train.setup import Session, build_session, resume_lines
from sftlab.train.validate import evaluate_batches, improved, task_metrics

StepCallback = Callable[[int, float], None]


@dataclass
class RunResult:
    """What a finished run produced: its directory, final metrics and the loss of every optimizer step."""

    out_dir: Path
    metrics: dict
    losses: list[float] = field(default_factory=list)
    stopped: str = "completed"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint at `step` was written to `checkpoint` (None: stopped at once inside
    an optimizer update, which is not saved; `message` says so and names the latest checkpoint)."""

    def __init__(self, step: int, checkpoint: Path | None, message: str | None = None):
        super().__init__(message or f"interrupted at step {step}; checkpoint saved in {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


def log_setup(log, session: Session, precision_choice: str | None = None) -> None:
    """The run log's first lines: allocator, a classification head made or fitted for the data's labels, trainable
    count, fused layers, kernels, attention, precision, drops."""
    cfg = session.cfg
    log.message(allocator_line(cfg.train.allocator))
    head_line = getattr(session.model, "sftlab_head_line", None)  # cls: the head made or fitted (sftlab.models.head)
    if head_line and not session.resumed_from:  # a resumed run's head comes from its checkpoint
        log.message(head_line)
    log.message(session.trainable.summary())
    log.message(fused_summary(session.model, cfg.model.fused_layers))
    log.message(attention_line(session.model, cfg.model.attn_implementation))
    drops = drop_lines(getattr(session.prepared, "stats", None) or {}, cfg.train.max_length, cfg.data.truncation)
    warmup = warmup_note(cfg.train.warmup_steps, session.total_steps, cfg.train.lr)
    for line in (precision_choice, precision_line(cfg, session.accelerator.device), warmup, *drops):
        if line:
            log.message(line)


def run_training(cfg, resume: bool = False, overwrite: bool = False, base_dir: str | Path | None = None,
                 callbacks: list[StepCallback] | None = None, show_progress: bool = True) -> RunResult:
    """Train `cfg` (a RunConfig) to completion, or continue the latest checkpoint when `resume`.

    `callbacks` are called as `callback(step, loss)` after every optimizer step (and its logging,
    evaluation and checkpointing); raising KeyboardInterrupt from one behaves like Ctrl-C.
    `output.dir` is used as given (relative to the current directory); relative data paths are
    resolved against `base_dir` by the data pipeline. Under a multi-process launch the main process checks
    and clears the output directory before the other processes look at it.
    """
    from sftlab.train.distributed import make_accelerator

    cfg, precision_choice = resolve_precision(cfg)  # train.precision: auto becomes bf16 or fp32 here
    out_dir = Path(cfg.output.dir).expanduser()
    accelerator = make_accelerator(cfg)
    main, created = accelerator.is_main_process, not out_dir.exists()
    with accelerator.main_process_first():
        restored = clear_interrupted_writes(out_dir) if main and (resume or overwrite) else []  # a killed run's
        checkpoint = prepare_output_dir(out_dir, resume, overwrite) if main else (
            latest_checkpoint(out_dir) if resume else None)
    with replacing_previous_run(out_dir, main, created), progress_bars(show_progress):
        session, rng = build_session(cfg, out_dir, checkpoint, Path(base_dir) if base_dir else None, accelerator)
    if checkpoint is not None and main:
        keep_rows_up_to(out_dir, session.step)
    log = (RunLog(out_dir, session.total_steps, session.step, cfg.output.tensorboard, show_progress) if main
           else SilentLog())
    try:
        log_setup(log, session, precision_choice)
        if main and not session.resumed_from:
            from sftlab.strategy.report import write_trainable_report

            per_epoch = math.ceil(len(session.prepared.train) / cfg.train.batch_size) \
                if hasattr(session.prepared.train, "__len__") else None  # micro-batches, as calibration counts
            write_trainable_report(session.trainable, out_dir, per_epoch)
        for line in restored:
            log.message(line)
        if session.resumed_from:
            for line in resume_lines(session):
                log.message(line)
            if line := best_metric_line(session):  # best/ was picked by another metric: the next evaluation replaces it
                log.message(line)
                session.best, session.bad_evals = {}, 0
            if line := restore_stream_counts(session):  # a stream's truncation counts so far (sftlab.train.saving)
                log.message(line)
            restore_rng(rng)
        stopped = train(session, log, callbacks or [])
        metrics = save_final(session, log, stopped)
        return RunResult(out_dir=out_dir, metrics=metrics, losses=list(session.losses), stopped=stopped)
    finally:
        log.close()
        cleanup(session)


def cleanup(session: Session) -> None:
    """Release the accelerator state (another run in this process may use other precision settings), memory and
    the compiled kernels (fused layers run eagerly again)."""
    from accelerate.state import AcceleratorState

    session.accelerator.free_memory()
    kernels.release()
    if session.accelerator.num_processes > 1:
        session.accelerator.end_training()  # destroys the process group
    AcceleratorState._reset_state()
    restore_default_thresholds()


def train(session: Session, log: RunLog, callbacks: list[StepCallback]) -> str:
    """Run optimizer steps until the total, early stopping or an interrupt; return why it stopped."""
    cfg, flag, written = session.cfg, {}, None
    steps = step_groups(session)
    boundary_rng = capture_rng()
    heap = SlackGuard()  # jemalloc's unused pages returned when they pile up (sftlab.heap_slack)
    try:
        with stop_on_sigint(flag):
            while session.step < session.total_steps:
                started = time.perf_counter()
                rows, group, next_position = next(steps)
                loss, stats = optimizer_step(session, group, rows)
                if heap.after_step() and heap.purges == 1:
                    log.message(f"allocator: {heap.line()}")
                session.step, session.position = session.step + 1, next_position
                session.losses.append(loss)
                update_counted(session)  # a second Ctrl-C from here on leaves a state that can be saved
                log.count_tokens(stats["tokens"], time.perf_counter() - started)  # tokens/s: training time only
                log_step(session, log, loss, stats)
                stop = maybe_evaluate(session, log)
                boundary_rng = capture_rng()
                written = (session.step, path) if (path := maybe_checkpoint(session, boundary_rng)) else written
                for callback in callbacks:
                    callback(session.step, loss)
                if any_rank(session, flag.get("stop", False)):  # every rank stops at the same step
                    raise KeyboardInterrupt
                if stop:
                    log.message(f"early stopping at step {session.step}: no {cfg.eval.metric} improvement in "
                                f"{cfg.eval.patience} evaluations")
                    return "early_stopping"
    except KeyboardInterrupt:
        path = checkpoint_on_interrupt(session, boundary_rng, written)
        raise TrainingInterrupted(session.step, path, interrupted_message(session, path)) from None
    return "completed"


def step_groups(session: Session):
    """Endless (rows, micro-batch index groups, position after the step) for each optimizer step.

    Index plans draw global micro-batches of batch_size x processes rows; a stream yields its own rows."""
    cfg, processes = session.cfg, session.accelerator.num_processes
    if cfg.data.streaming:
        yield from session.prepared.train.steps(cfg.train.batch_size * processes, cfg.train.grad_accum, session.position)
        return
    rows = session.prepared.train
    lengths = [len(ids) for ids in rows["input_ids"]] if cfg.data.group_by_length else None
    for group, position in iterate_steps(len(rows), cfg.train.batch_size * processes, cfg.train.grad_accum,
                                         session.position, lengths):
        yield rows, group, position


def any_rank(session: Session, value: bool) -> bool:
    """True when `value` is true on any process (the value itself in a single process)."""
    return reduce_sum(session.accelerator, [1.0 if value else 0.0])[0] > 0


def optimizer_step(session: Session, group: list[list[int]], rows=None) -> tuple[float, dict]:
    """One update from the micro-batches in `group` (indices into `rows`, default the training rows).

    Returns the mean loss and {tokens, supervised_tokens, grad_norm} (fp16: also loss_scale, skipped);
    `supervised_tokens` counts loss terms (supervised tokens for pt/sft, examples for cls), summed over all
    processes, as are the loss and tokens. Each process runs its `rank_share` of every global micro-batch."""
    accelerator, stage = session.accelerator, session.cfg.train.stage
    rows = session.prepared.train if rows is None else rows
    processes = accelerator.num_processes
    shares = [rank_share(indices, accelerator.process_index, processes) for indices in group]
    parts = [[rows[i] for i in part] for part, _ in shares]
    batches = [session.collate(part) for part in parts]
    counts = [_loss_units(batch, stage) if carries else 0 for batch, (_, carries) in zip(batches, shares)]
    total = sum(counts)  # every micro-batch's summed loss is divided by the whole step's count (all ranks)
    if processes > 1:
        total = int(reduce_sum(accelerator, [float(total)])[0])
    loss_total = 0.0
    for index, (batch, (_, carries)) in enumerate(zip(batches, shares)):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        with no_sync_unless_last(accelerator, session.objective, index == len(batches) - 1):
            with session.autocast():  # bf16 or fp16 matmuls per train.precision; a no-op for fp32
                part, _ = session.objective(batch)
            value = float(part.detach())
            if not math.isfinite(value):
                diverged(session, f"train loss is {value}")
            scaled = part / max(total, 1)
            if processes > 1:  # the gradient all-reduce averages over ranks; the sum over ranks is wanted
                scaled = scaled * processes if carries else part * 0.0
            accelerator.backward(scaled if session.scaler is None else session.scaler.scale(scaled))
        loss_total += value if carries else 0.0
    update_started(session)  # until the loop counts the step, a stop at once cannot be saved (sftlab.train.saving)
    update = apply_update(session)  # clip, step (fp16: or skip an overflow), schedule, zero_grad
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else sum(len(r["input_ids"]) for r in part)
                 for b, part, (_, carries) in zip(batches, parts, shares) if carries)  # packed: no filler
    if processes > 1:
        loss_total, tokens = reduce_sum(accelerator, [loss_total, float(tokens)])
        tokens = int(tokens)
    return loss_total / max(total, 1), {"tokens": tokens, "supervised_tokens": total, **update}


def _loss_units(batch: dict, stage: str) -> int:
    """Supervised tokens (pt/sft: shifted labels != -100) or examples (cls) in a micro-batch."""
    labels = batch["labels"]
    return int(labels.numel()) if stage == "cls" else int((labels[:, 1:] != -100).sum())


def log_step(session: Session, log: RunLog, loss: float, stats: dict) -> None:
    """Write a metrics row every `train.log_every_n_steps` steps, at the last step and at every skipped fp16 step."""
    cfg, step = session.cfg, session.step
    write = step % cfg.train.log_every_n_steps == 0 or step == session.total_steps or stats.get("skipped", False)
    fp16 = {key: stats[key] for key in ("loss_scale", "skipped") if key in stats}
    log.step({"step": step, "loss": loss, "lr": session.scheduler.get_last_lr()[0], "grad_norm": stats["grad_norm"],
              "supervised_tokens": stats["supervised_tokens"], "epoch": round(_epoch(session), 4), **fp16}, write)


def _epoch(session: Session) -> float:
    """Epochs done so far (fractional); a stream counts its passes in whole epochs only."""
    if session.cfg.data.streaming:
        return float(session.position.epoch)
    global_batch = session.cfg.train.batch_size * session.accelerator.num_processes
    micro_per_epoch = math.ceil(len(session.prepared.train) / global_batch)
    return session.position.epoch + session.position.batches_done / micro_per_epoch


def validation_batches(session: Session) -> list[dict]:
    """This process's validation batches: the split (at most eval.max_samples rows) in order, eval.batch_size each.

    With several processes every global batch of eval.batch_size x processes rows is shared out like a
    training micro-batch, so all ranks run the same number of batches; an idle rank's batch has `_weight` 0."""
    rows = session.prepared.validation
    limit = min(len(rows), session.cfg.eval.max_samples or len(rows))
    accelerator = session.accelerator
    size, device = session.cfg.eval.batch_size * accelerator.num_processes, accelerator.device
    batches = []
    for start in range(0, limit, size):
        part, carries = rank_share(list(range(start, min(start + size, limit))), accelerator.process_index,
                                   accelerator.num_processes)
        batch = {k: v.to(device) for k, v in session.collate([rows[i] for i in part]).items()}
        batches.append(batch if carries else {**batch, "_weight": 0})
    return batches


def evaluate(session: Session) -> dict:
    """Validation metrics of the current weights (plus the evaluation package's task metrics).

    The validation loss is gathered over all processes; task metrics are computed by every process on the
    whole evaluation data (so every rank holds the same numbers)."""
    stage = session.cfg.train.stage
    metrics = call_unsharded(session, evaluate_batches, session.model, validation_batches(session), stage,
                             session.autocast, combine_eval_sums(session.accelerator))
    metrics.update(call_unsharded(session, task_metrics, session.model, session.tokenizer, session.prepared, session.cfg))
    return metrics


def maybe_evaluate(session: Session, log: RunLog) -> bool:
    """Evaluate every eval.every_n_steps; keep best/; return True when patience has run out."""
    cfg = session.cfg
    if not cfg.eval.every_n_steps or session.step % cfg.eval.every_n_steps:
        return False
    return record_evaluation(session, log, evaluate(session))


def record_evaluation(session: Session, log: RunLog, metrics: dict) -> bool:
    """Log an evaluation at this step, keep best/ when it improved on eval.metric; True when patience has run out."""
    cfg = session.cfg
    log.evaluation(session.step, metrics)
    session.eval_history.append({"step": session.step, **metrics})
    if cfg.eval.metric not in metrics:
        raise SftlabError(f"eval.metric {cfg.eval.metric!r} is not among the validation metrics: "
                          f"{', '.join(sorted(metrics))}")
    value = metrics[cfg.eval.metric]
    if improved(value, session.best.get("value"), cfg.eval.resolved_mode):
        session.best = {"metric": cfg.eval.metric, "mode": cfg.eval.resolved_mode, "value": value,
                        "step": session.step}
        session.bad_evals = 0
        state_dict = gathered(session)
        if session.accelerator.is_main_process:
            save_best(session.out_dir, unwrapped(session), session.tokenizer, {**sidecar(session), "metrics": metrics},
                      state_dict)
    else:
        session.bad_evals += 1
    return bool(cfg.eval.patience) and session.bad_evals >= cfg.eval.patience


def save_final(session: Session, log: RunLog, stopped: str) -> dict:
    """Write model/ (weights, tokenizer, model card), metrics.json (main process); return the final metrics."""
    from sftlab.train.card import model_card

    cfg = session.cfg
    metrics: dict = {"step": session.step, "train_loss": session.losses[-1] if session.losses else None,
                     "stopped": stopped}
    if session.scaler is not None:  # fp16: steps whose gradients overflowed and were skipped
        metrics["skipped_steps"] = session.skipped_steps
    counts, line = stream_count_metrics(session)  # streamed documents trained and truncated
    metrics.update(counts)
    if line:
        log.message(line)
    if session.prepared.validation:
        last = session.eval_history[-1] if session.eval_history else None
        final = {k: v for k, v in last.items() if k != "step"} if last and last["step"] == session.step else None
        if final is None and cfg.eval.every_n_steps:  # the evaluation at the end can be the best one too
            final = evaluate(session)
            record_evaluation(session, log, final)
        elif final is None:
            final = evaluate(session)
            log.evaluation(session.step, final)
        metrics.update({f"eval_{key}": value for key, value in final.items()})
    if session.best:
        metrics.update({"best_step": session.best["step"], f"best_{session.best['metric']}": session.best["value"]})
    model, state_dict = unwrapped(session), gathered(session)
    if session.accelerator.is_main_process:
        with atomic_dir(session.out_dir / "model", overwrite=True) as tmp:
            save_model_dir(model, session.tokenizer, tmp, state_dict, config=session.cfg)
            card = model_card(session.cfg, session.trainable, metrics, getattr(session.prepared, "stats", None),
                              is_adapter=hasattr(model, "peft_config"),
                              environment=session.environment)
            (tmp / "README.md").write_text(card, encoding="utf-8")
        atomic_write_json(session.out_dir / "metrics.json", metrics)
        log.message(f"saved {session.out_dir / 'model'}")
    session.accelerator.wait_for_everyone()
    return metrics
