"""What the training loop writes as it goes: step checkpoints (`write_checkpoint`, every train.save_every_n_steps and on
Ctrl-C / SIGTERM), the sidecar state that lets a run continue exactly, and what a run is told on resume about its
`best/` when eval.metric or eval.mode changed.

An update in flight cannot be saved: `Session.in_update` marks a session from the moment an optimizer update starts until the
loop has counted its step, so a second Ctrl-C that stops the run at once inside that window writes no checkpoint (its
weights would be one update ahead of the step, data position and random states it records); the latest complete
checkpoint stays the one to resume from.

A streamed `document`-mode run's counts of trained and truncated documents (`sftlab.data.streaming.StreamCounts`)
are stored beside the data position (`stream_counts`); `restore_stream_counts` puts them back on resume, and
`stream_count_metrics` gives metrics.json's entries and the run log's line at the end.
"""

from __future__ import annotations

from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.checkpoints import latest_checkpoint
from sftlab.train.checkpoint import data_fingerprint, prune_checkpoints, save_checkpoint
from sftlab.train.distributed import gather_objects, gathered_state_dict, optimizer_writer, sharded

def update_started(session) -> None:
    """Mark `session` as mid-update from here until `update_counted`."""
    session.in_update = True


def update_counted(session) -> None:
    """The update's step is counted (step, position, loss): the session is consistent again."""
    session.in_update = False


def unwrapped(session):
    """The model inside the accelerator-prepared training objective."""
    return session.accelerator.unwrap_model(session.objective).model


def gathered(session) -> dict | None:
    """The full state dict of a sharded model (None when the model holds its own tensors)."""
    return gathered_state_dict(session.cfg, session.accelerator, session.objective, unwrapped(session))


def sidecar(session) -> dict:
    """The JSON state that, with the weights and optimizer files, lets a run continue exactly."""
    return {"step": session.step, "total_steps": session.total_steps, "position": session.position.to_dict(),
            "losses": session.losses, "eval_history": session.eval_history, "best": session.best,
            "bad_evals": session.bad_evals, "skipped_steps": session.skipped_steps,
            "trainable": session.trainable.trainable, "processes": session.accelerator.num_processes,
            "data": data_fingerprint(session.prepared), **_stream_counts(session),
            "config": session.cfg.model_dump(mode="json"), "environment": session.environment}


def _stream_counts(session) -> dict:
    counts = getattr(session.position, "counts", None)  # a stream's position (sftlab.data.streaming)
    return {"stream_counts": counts.to_dict()} if counts is not None else {}


def restore_stream_counts(session) -> str | None:
    """A resumed stream's counts from its checkpoint's sidecar, put on `session.position`; a note when the
    checkpoint has none (written before they were counted: the totals then start at its step)."""
    from sftlab.data.streaming import StreamCounts
    from sftlab.train.checkpoint import read_sidecar

    if session.resumed_from is None or not session.cfg.data.streaming:
        return None
    saved = read_sidecar(session.resumed_from).get("stream_counts")
    if not isinstance(saved, dict):
        return (f"note: {session.resumed_from.name} has no stream_counts; the truncated-document counts at the end "
                f"cover the steps after {session.step} only" if session.cfg.data.pt_mode == "document" else None)
    session.position.counts = StreamCounts.from_dict(saved)
    return None


def stream_count_metrics(session) -> tuple[dict, str | None]:
    """A streamed `document`-mode run's metrics.json entries (streamed_documents, truncated, truncated_tokens) and
    run-log line (None when nothing was cut); nothing for other runs."""
    counts = getattr(session.position, "counts", None)
    if counts is None or session.cfg.data.pt_mode != "document":
        return {}, None
    return counts.metrics(), counts.line(session.cfg.train.max_length)


def write_checkpoint(session, rng: dict) -> Path:
    """Save checkpoints/step-N (main process; every rank's RNG) and prune old ones to output.keep_checkpoints."""
    accelerator, write_optimizer = session.accelerator, optimizer_writer(session)  # fsdp: sharded optimizer
    if sharded(session.cfg, accelerator) and write_optimizer is None:  # ZeRO: refused at start; reached by Ctrl-C
        raise SftlabError(f"stopped at step {session.step}; train.distributed={session.cfg.train.distributed} "
                          "writes no resumable checkpoint yet, so this run cannot be resumed")
    path = session.out_dir / "checkpoints" / f"step-{session.step}"
    rank_rngs = gather_objects(accelerator, rng) if accelerator.num_processes > 1 else None
    state_dict = gathered(session)
    if accelerator.is_main_process:
        path = save_checkpoint(session.out_dir, session.step, unwrapped(session), session.tokenizer,
                               session.optimizer, session.scheduler, rng, sidecar(session), state_dict, rank_rngs,
                               write_optimizer, session.scaler)
        prune_checkpoints(session.out_dir, session.cfg.output.keep_checkpoints)
    elif write_optimizer is not None:
        write_optimizer(None)
    accelerator.wait_for_everyone()
    return path


def maybe_checkpoint(session, rng: dict) -> Path | None:
    """Checkpoint every train.save_every_n_steps steps; the path written, else None."""
    every = session.cfg.train.save_every_n_steps
    if every and session.step % every == 0:
        return write_checkpoint(session, rng)
    return None


def checkpoint_on_interrupt(session, rng: dict, written: tuple[int, Path] | None) -> Path | None:
    """The checkpoint of a run stopped by Ctrl-C or SIGTERM: the one already `written` at this step, else a new one;
    None when the stop came inside an optimizer update (nothing consistent to save)."""
    if session.in_update:
        update_counted(session)
        return None
    if written is not None and written[0] == session.step:
        return written[1]
    session.optimizer.zero_grad(set_to_none=True)
    return write_checkpoint(session, rng)


def interrupted_message(session, path: Path | None) -> str:
    """What the user is told when the run stops: where its checkpoint is, or why none was written."""
    if path is not None:
        return f"interrupted at step {session.step}; checkpoint saved in {path}"
    latest = latest_checkpoint(session.out_dir)
    where = f"latest checkpoint: {latest}" if latest else "no checkpoint was written"
    return (f"interrupted at once during the optimizer update of step {session.step + 1}, which cannot be saved "
            f"half-done; {where}")


def best_metric_line(session) -> str | None:
    """On resume: the line saying that best/ was picked by another eval.metric or eval.mode, which resets it (the
    next evaluation replaces it); None when nothing changed or there is no best yet."""
    best, cfg = session.best, session.cfg.eval
    if not best or not cfg.every_n_steps:
        return None
    mode = cfg.resolved_mode
    if best.get("metric") == cfg.metric and best.get("mode", mode) == mode:
        return None
    was = f"{best.get('metric')} ({best.get('mode', 'its mode')})"
    return (f"note: best/ (step {best.get('step')}) was picked by eval.metric {was}; this run picks by {cfg.metric} "
            f"({mode}), so the next evaluation replaces it")
