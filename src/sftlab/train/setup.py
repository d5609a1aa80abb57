"""Everything a run needs before its first step: data, model, strategy, optimizer, resume state (the output
directory: `sftlab.train.rundir`).

`build_session` loads the tokenizer, prepares the data, loads the model for the stage, applies the
strategy, and builds the accelerator, AdamW, the LR schedule, the autocast context of every forward pass and,
under train.precision fp16, the gradient scaler (`sftlab.train.scaling`). On resume it also checks that the
saved run used the same model/data/strategy/schedule settings and restores weights, optimizer,
scheduler, gradient scaler and the data position from the latest checkpoint. With several processes
(`sftlab.train.distributed`) the main process tokenizes first and the others read its cache, only the
main process writes files, and a resume must use the same number of processes. `build_session(..., write=False)`
(`sftlab train --dry-run`, `sftlab.train.dry_run`) sets a run up without writing anything under its directory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sftlab.config import dump_config
from sftlab.errors import SftlabError
from sftlab.io import atomic_write_json, atomic_write_text
from sftlab.train import batches as plan
from sftlab.checkpoints import SIDECAR, incomplete_checkpoints
from sftlab.train.checkpoint import check_resume_data, load_training_state, load_weights, read_sidecar
from sftlab.train.loss import loss_sum
from sftlab.train.environment import collect_environment, version_warning

# Settings a resumed run may change; everything else under model/data/strategy/train must match.
RESUMABLE_CHANGES = {"train.log_every_n_steps", "train.save_every_n_steps", "data.num_workers", "data.cache_dir",
                     "train.dist_timeout_s", "train.keep_freed_memory", "train.allocator", "model.fused_layers"}
# Settings that give a resumed run another length: the schedule is recomputed for it (`_resize`).
LENGTH_CHANGES = {"train.max_steps", "train.epochs"}


class TrainingObjective(torch.nn.Module):
    """Wraps the model so one forward call returns (loss sum, count); this is what accelerate prepares."""

    def __init__(self, model: torch.nn.Module, stage: str, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.stage = stage
        self.class_weights = class_weights

    def forward(self, batch: dict) -> tuple[torch.Tensor, int]:
        return loss_sum(self.model, batch, self.stage, self.class_weights)


@dataclass
class Session:
    """The live state of one run (built by `build_session`, advanced by the loop)."""

    cfg: Any
    out_dir: Path
    accelerator: Any
    model: torch.nn.Module
    objective: torch.nn.Module
    optimizer: Any
    scheduler: Any
    tokenizer: Any
    prepared: Any
    trainable: Any
    collate: Callable[[list[dict]], dict]
    total_steps: int
    step: int = 0
    position: Any = field(default_factory=plan.DataPosition)  # or sftlab.data.streaming.StreamPosition
    losses: list[float] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    bad_evals: int = 0
    resumed_from: Path | None = None
    resized_from: int | None = None  # the checkpoint run's total steps, when the resumed run has another length
    environment: dict = field(default_factory=dict)  # this run's (sftlab.train.environment), collected once at setup
    checkpoint_environment: dict | None = None  # the resumed checkpoint's, from its sidecar
    autocast: Callable = contextlib.nullcontext  # `with session.autocast():` around forward passes (scaling.py)
    scaler: Any = None  # torch.amp.GradScaler under train.precision fp16
    skipped_steps: int = 0  # fp16 steps whose gradients overflowed (the optimizer step was skipped)
    writes: bool = True  # False for a dry run (`build_session(write=False)`): nothing is written under out_dir
    in_update: bool = False  # an optimizer update started and its step is not yet counted (sftlab.train.saving)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): obj}


_NO_DEFAULT = object()


def _schema_default(cfg, key: str):
    """The JSON default of a dotted config key (e.g. train.distributed), or _NO_DEFAULT."""
    from pydantic import BaseModel

    *groups, name = key.split(".")
    node = cfg
    for group in groups:
        node = getattr(node, group, None)
    field = type(node).model_fields.get(name) if isinstance(node, BaseModel) else None
    if field is None or field.is_required():
        return _NO_DEFAULT
    value = field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def check_resume_config(saved: dict, cfg) -> None:
    """Fail when the model, data, strategy or schedule settings differ from the checkpoint's run."""
    now = _flatten(cfg.model_dump(mode="json"))
    before = _flatten(saved)
    for key in set(now) - set(before):  # a setting added to sftlab after the checkpoint: its default then applied
        default = _schema_default(cfg, key)
        if default is not _NO_DEFAULT:
            before[key] = default
    keys = sorted(key for key in set(now) | set(before)
                  if key.split(".")[0] in ("model", "data", "strategy", "train")
                  and key not in RESUMABLE_CHANGES | LENGTH_CHANGES
                  and now.get(key) != before.get(key))
    if keys:
        shown = ", ".join(f"{key} ({before.get(key)!r} -> {now.get(key)!r})" for key in keys[:5])
        raise SftlabError(f"--resume: the config differs from the checkpoint's run in {shown}; resume with the same "
                          "settings (train.max_steps and train.epochs may change), or start a new run (model.path may point at the "
                          "trained weights)")


def _classifier_weights(prepared, cfg) -> torch.Tensor | None:
    """Balanced class weights (sklearn) when data.balance=class_weight, from the training labels."""
    if cfg.train.stage != "cls" or cfg.data.balance != "class_weight":
        return None
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray([row["label"] for row in prepared.train])
    classes = np.arange(len(prepared.label_names))
    present = np.isin(classes, labels)
    weights = np.ones(len(classes))
    weights[present] = compute_class_weight("balanced", classes=classes[present], y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def _calibration(prepared, cfg, collate) -> list[dict]:
    """The first `strategy.auto.batches` micro-batches of epoch 0, for importance-based selection."""
    if cfg.strategy.kind != "auto":
        return []
    groups = plan.epoch_micro_batches(len(prepared.train), cfg.train.batch_size, cfg.train.seed, 0)
    return [collate([prepared.train[i] for i in idx]) for idx in groups[:cfg.strategy.auto.batches]]


def _load_model(cfg, tokenizer, prepared, collate):
    """The stage's model with the strategy applied; fused layers and gradient checkpointing when asked for."""
    from sftlab.models.fused import fuse_layers
    from sftlab.models.load import load_model
    from sftlab.strategy import select_trainable
    from sftlab.train.checkpointing import drop_input_grad_hook, enable_activation_checkpointing

    label_names = prepared.label_names if cfg.train.stage == "cls" else None
    model = load_model(cfg.model, cfg.train.stage, num_labels=len(label_names) if label_names else None,
                       label_names=label_names, tokenizer=tokenizer,
                       quantize_4bit=cfg.strategy.kind == "lora" and cfg.strategy.lora.quantize_4bit,
                       keep_adapter=cfg.strategy.kind == "lora")
    if cfg.model.fused_layers:
        fuse_layers(model)
    enable_activation_checkpointing(model, cfg.train.gradient_checkpointing)

    def mean_loss(m, batch):  # auto's calibration: bf16 matmuls where the run trains in bf16 (fp16 has no scaler here)
        with torch.autocast(next(m.parameters()).device.type, torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            total, count = loss_sum(m, batch, cfg.train.stage)
        return total / max(count, 1)

    model, trainable = select_trainable(model, cfg.strategy, _calibration(prepared, cfg, collate), mean_loss)
    if cfg.train.gradient_checkpointing:
        drop_input_grad_hook(model)  # peft re-adds it when it wraps a checkpointed model
    model.train()
    return model, trainable


def _start_position(cfg, saved: dict | None = None):
    """Where the data starts: a checkpoint's saved position, else the beginning (an index plan or a stream)."""
    if cfg.data.streaming:
        from sftlab.data.streaming import StreamPosition

        return StreamPosition(**saved) if saved else StreamPosition(seed=cfg.train.seed)
    return plan.DataPosition(**saved) if saved else plan.DataPosition(seed=cfg.train.seed)


def _prepare_for_processes(accelerator, model, cfg, prepared):
    """The objective and AdamW prepared by the accelerator (DeepSpeed wraps both in one call; fsdp shards first)."""
    from sftlab.train.distributed import fsdp, shard_objective, sharded
    from sftlab.train.optim import build_optimizer

    objective = TrainingObjective(model, cfg.train.stage, _classifier_weights(prepared, cfg))
    if fsdp(cfg, accelerator):  # sharded first: AdamW then holds the sharded parameters
        objective = shard_objective(objective, accelerator)
        return objective, accelerator.prepare_optimizer(build_optimizer(model, cfg.train.lr, cfg.train.weight_decay))
    if sharded(cfg, accelerator):
        objective._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP wraps these layers
        return accelerator.prepare(objective, build_optimizer(model, cfg.train.lr, cfg.train.weight_decay,
                                                              master_weights=False))  # DeepSpeed keeps its own
    objective = accelerator.prepare_model(objective)
    return objective, accelerator.prepare_optimizer(build_optimizer(model, cfg.train.lr, cfg.train.weight_decay))


def make_collate(cfg, tokenizer) -> Callable[[list[dict]], dict]:
    """Padded batches, or packed [B, T] rows when data.packing is on (pt/sft only)."""
    from sftlab.data.collate import make_collator
    from sftlab.vision.load import is_vision_model

    if cfg.train.stage == "sft" and is_vision_model(cfg.model):  # rows with images: sftlab.vision.collate
        from sftlab.vision.collate import make_vision_collator
        from sftlab.vision.load import load_processor

        return make_vision_collator(load_processor(cfg.model), tokenizer.pad_token_id)
    return make_collator(cfg.data.packing and cfg.train.stage != "cls", tokenizer.pad_token_id)


def _prepare(cfg, tokenizer, base_dir: Path | None, accelerator):
    """The run's data, tokenized by the main process first so the other processes read its cache."""
    from sftlab.data.pipeline import prepare_data

    with accelerator.main_process_first():
        if cfg.data.streaming:
            from sftlab.data.streaming import prepare_streaming

            return prepare_streaming(cfg, tokenizer, base_dir)
        return prepare_data(cfg, tokenizer, base_dir)


def _check_resume_processes(saved: dict, now: int) -> None:
    """A checkpoint continues only with the process count that wrote it (its data position counts global batches)."""
    before = saved.get("processes", 1)
    if before != now:
        raise SftlabError(f"--resume: the checkpoint was written by {before} process(es) and this run has {now}; "
                          f"resume with --nproc {before} (the global batch and data order depend on it)")


def _check_prepared(cfg, prepared, saved: dict | None) -> None:
    """The prepared data can train this run: rows left, a validation split when evaluations are asked for, and
    for a resume the rows the checkpoint's run trained on (`check_resume_data`)."""
    if saved:
        check_resume_data(saved, prepared)
    if not cfg.data.streaming and len(prepared.train) == 0:
        raise SftlabError("data.train: no training examples left after preparation")
    if cfg.eval.every_n_steps and not prepared.validation:
        raise SftlabError("eval.every_n_steps is set but there is no validation split; set data.validation or data.val_ratio")


def _check_start(cfg, checkpoint: Path | None, accelerator, processes: int | None) -> tuple[dict | None, int]:
    """What fails before anything loads: a resume's changed settings or process count, an unknown eval.metric (not
    at the first evaluation), a process setup train.distributed cannot use. Returns the checkpoint's sidecar (None
    for a fresh run) and the run's process count."""
    from sftlab.eval.hooks import task_for_config
    from sftlab.train.distributed import check_processes

    saved = read_sidecar(checkpoint) if checkpoint else None
    if saved:
        check_resume_config(saved["config"], cfg)
    task_for_config(cfg)
    check_processes(cfg, accelerator)
    processes = processes or accelerator.num_processes
    if saved:
        _check_resume_processes(saved, processes)
    return saved, processes


def build_session(cfg, out_dir: Path, checkpoint: Path | None, base_dir: Path | None,
                  accelerator=None, write: bool = True, processes: int | None = None) -> tuple[Session, dict | None]:
    """Set up a run (fresh, or from `checkpoint`); return the session and the RNG state to restore, if any.

    `accelerator` defaults to a new one for this process (`sftlab.train.distributed.make_accelerator`). With
    `write=False` nothing is written under `out_dir` (a fresh run's config.yaml and data_stats.json, a resized
    resume's config.yaml). `processes` (default: the accelerator's) is the run's process count where this one
    process stands in for a launch of several (a dry run of `--nproc N`): the resume check and the step count use it."""
    from accelerate.utils import set_seed  # transformers.set_seed imports its trainer_utils, and peft with it (11 MiB)

    from sftlab.models.load import load_tokenizer
    from sftlab.progress import say
    from sftlab.strategy.importance import scoring_progress, scoring_reporter
    from sftlab.train.allocator import keep_freed_memory
    from sftlab.train.distributed import make_accelerator
    from sftlab.train.optim import build_scheduler
    from sftlab.train.precision import resolve_precision
    from sftlab.train.scaling import autocast_factory, make_scaler

    cfg, _ = resolve_precision(cfg)  # train.precision: auto, for callers that did not resolve it (run_training does)
    accelerator = accelerator or make_accelerator(cfg)
    saved, processes = _check_start(cfg, checkpoint, accelerator, processes)
    set_seed(cfg.train.seed)
    if cfg.train.keep_freed_memory:
        keep_freed_memory()  # undone by sftlab.train.loop.cleanup
    tokenizer = load_tokenizer(cfg.model)
    prepared = _prepare(cfg, tokenizer, base_dir, accelerator)
    _check_prepared(cfg, prepared, saved)
    collate = make_collate(cfg, tokenizer)
    report = say if accelerator.is_main_process else None  # auto's scoring takes minutes on larger models
    with scoring_progress(scoring_reporter() or report):  # a caller's own (plan's probe) goes first
        model, trainable = _load_model(cfg, tokenizer, prepared, collate)
    if saved:
        load_weights(model, checkpoint, trainable.names)
    autocast = autocast_factory(cfg, accelerator)
    if cfg.model.fused_layers:  # before DDP wraps the model: the warm-up's backward must not reach its hooks
        from sftlab.models.kernels import prepare_kernels

        prepare_kernels(model, cfg.model.compiled_kernels, accelerator.device, autocast)
    objective, optimizer = _prepare_for_processes(accelerator, model, cfg, prepared)
    total = (cfg.train.max_steps if cfg.data.streaming else
             plan.total_steps(len(prepared.train), cfg.train.batch_size * processes,
                              cfg.train.grad_accum, cfg.train.epochs, cfg.train.max_steps))
    scheduler = build_scheduler(optimizer.optimizer, cfg.train.scheduler, cfg.train.warmup_steps, total)
    session = Session(cfg=cfg, out_dir=out_dir, accelerator=accelerator, model=model, objective=objective,
                      optimizer=optimizer, scheduler=scheduler, tokenizer=tokenizer, prepared=prepared,
                      trainable=trainable, collate=collate, total_steps=total,
                      position=_start_position(cfg), environment=collect_environment(accelerator.device,
                                                                                     cfg.train.allocator),
                      autocast=autocast, scaler=make_scaler(cfg, accelerator.device), writes=write)
    if not saved:
        if write and accelerator.is_main_process:
            atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
            atomic_write_json(out_dir / "data_stats.json", getattr(prepared, "stats", {}) or {})
        return session, None
    return session, _resume(session, saved, checkpoint)


def _resume(session: Session, saved: dict, checkpoint: Path) -> dict:
    """Put the checkpoint's optimizer, scheduler, gradient scaler, counters and data position into `session`; return
    its RNG state."""
    rng = load_training_state(checkpoint, session.optimizer, session.scheduler, session.accelerator.process_index,
                              session.objective, session.scaler)
    session.step, session.losses = saved["step"], list(saved["losses"])
    session.position = _start_position(session.cfg, saved["position"])
    session.eval_history, session.best = list(saved["eval_history"]), dict(saved["best"])
    session.bad_evals, session.resumed_from = saved["bad_evals"], checkpoint
    session.skipped_steps = saved.get("skipped_steps", 0)
    session.checkpoint_environment = saved.get("environment")
    if saved.get("total_steps", session.total_steps) != session.total_steps:
        _resize(session, saved["total_steps"])
    return rng


def resume_lines(session: Session) -> list[str]:
    """The run log's lines for a resumed run: checkpoint, step, the new length when it changed, and a warning when
    the checkpoint was written with other torch/transformers/peft versions."""
    resized = (f"; the run was {session.resized_from} steps, and the learning-rate schedule now runs to step "
               f"{session.total_steps}" if session.resized_from else "")
    warning = version_warning(session.checkpoint_environment, session.environment.get("packages"))
    newer = [path.name for path in incomplete_checkpoints(session.out_dir, after=session.step)]
    skipped = (f"note: skipped {', '.join(newer)}: no {SIDECAR} (a checkpoint cut short or copied in part)"
               if newer else None)
    return [f"resuming from {session.resumed_from} (step {session.step} of {session.total_steps}{resized})",
            *([skipped] if skipped else []), *([warning] if warning else [])]



def _resize(session: Session, before: int) -> None:
    """A resumed run given another length (train.max_steps or train.epochs): the learning rate from here on follows
    the schedule for the new length, and config.yaml records the new settings."""
    if session.total_steps <= session.step:
        raise SftlabError(f"--resume: train.max_steps / train.epochs now give {session.total_steps} steps, but the "
                          f"checkpoint is at step {session.step}; ask for more steps than that")
    scheduler = session.scheduler
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    session.resized_from = before
    if session.writes and session.accelerator.is_main_process:
        atomic_write_text(session.out_dir / "config.yaml", dump_config(session.cfg))
