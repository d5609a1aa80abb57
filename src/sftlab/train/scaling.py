"""The end of every optimizer step (clip, step, schedule), fp16 autocast and loss scaling, and the divergence stop.

    autocast = autocast_factory(cfg, accelerator)   # `with autocast():` around every forward pass of the run
    scaler = make_scaler(cfg, accelerator.device)   # a torch.amp.GradScaler under train.precision fp16, else None
    stats = apply_update(session)                   # {grad_norm} (+ {loss_scale, skipped} under fp16)

bf16 autocast is accelerate's (`Accelerator(mixed_precision="bf16")`). fp16 (`train.precision: fp16`, for GPUs
without bf16 such as the T4 and V100) is sftlab's own, because accelerate runs fp16 only on accelerators (given
mixed_precision "fp16" on a CPU it uses neither autocast nor a scaler) and the tests run on CPUs: the accelerator
stays at mixed_precision "no", forward passes run under `torch.autocast(device, float16)` over fp32 weights, and
the loss is multiplied by the scaler's scale before backward so that small gradients do not flush to zero in fp16.
Before clipping the gradients are unscaled; when any of them is inf or NaN the step overflowed: the optimizer step
is skipped (parameters and AdamW state stay bit-identical) and the scale halves (it doubles again after 2000 steps
without overflow). A skipped step still counts: its data is consumed and the learning-rate schedule advances. A
non-finite loss, or a loss scale that falls below 1, stops the run (`TrainingDiverged`). Without fp16
`apply_update` is the plain clip / step / schedule / zero_grad sequence.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

from sftlab.errors import SftlabError

INIT_SCALE = 2.0**16  # GradScaler's default first loss scale; tests lower or raise it


class TrainingDiverged(SftlabError):
    """The loss or the gradient became NaN/inf (or fp16 could not hold the gradients); training stopped before
    applying the update."""


def diverged(session, what: str, advice: str | None = None) -> None:
    """Stop the run at a non-finite loss/gradient, naming the step and the last good checkpoint."""
    from sftlab.checkpoints import latest_checkpoint

    session.optimizer.zero_grad(set_to_none=True)
    good = latest_checkpoint(session.out_dir)
    kept = f"last good checkpoint: {good}" if good else "no checkpoint was saved (set train.save_every_n_steps)"
    advice = advice or (f"start again with a lower train.lr (now {session.cfg.train.lr:g}) or check the data")
    raise TrainingDiverged(f"{what} at step {session.step + 1}; training stopped before that update; {kept}; {advice}")


def autocast_factory(cfg, accelerator) -> Callable:
    """What `with factory():` runs forward passes under: fp16 autocast on the accelerator's device for
    train.precision fp16, else the accelerator's own autocast (bf16 or a no-op)."""
    if cfg.train.precision != "fp16":
        return accelerator.autocast
    import torch

    return functools.partial(torch.autocast, accelerator.device.type, dtype=torch.float16)


def make_scaler(cfg, device):
    """A `torch.amp.GradScaler` for train.precision fp16 on `device` (starting at INIT_SCALE), else None."""
    if cfg.train.precision != "fp16":
        return None
    import torch

    return torch.amp.GradScaler(torch.device(device).type, init_scale=INIT_SCALE)


def _clip(session) -> float | None:
    """Clip the trainable gradients to train.max_grad_norm; the norm before clipping (None: off, or DeepSpeed)."""
    from sftlab.train.distributed import clip_grad_norm

    if session.cfg.train.max_grad_norm is None:
        return None
    params = [p for p in session.model.parameters() if p.requires_grad]
    return clip_grad_norm(session, params, session.cfg.train.max_grad_norm)


def apply_update(session) -> dict:
    """Clip, step the optimizer and the schedule, clear the gradients; {grad_norm} (None with clipping off).

    Under fp16 (`session.scaler`) also {loss_scale: the scale this step's backward used, skipped: whether the
    gradients overflowed and the optimizer step was skipped}. A non-finite gradient norm stops the run outside fp16."""
    if session.scaler is not None:
        return _scaled_update(session)
    grad_norm = _clip(session)
    if grad_norm is not None and not math.isfinite(grad_norm):
        diverged(session, f"gradient norm is {grad_norm}")
    session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": grad_norm}


def _scaled_update(session) -> dict:
    """apply_update under fp16: unscale (before clipping), step unless the gradients overflowed, update the scale."""
    scaler = session.scaler
    optimizer = getattr(session.optimizer, "optimizer", session.optimizer)  # the torch optimizer, as accelerate's is
    scale = scaler.get_scale()
    if session.cfg.train.max_grad_norm is not None:
        scaler.unscale_(optimizer)  # also records inf/NaN gradients; without clipping scaler.step does both
    grad_norm = _clip(session)
    scaler.step(optimizer)  # skipped when a gradient is inf or NaN
    scaler.update()  # halves the scale after an overflow
    now = scaler.get_scale()
    skipped = now < scale
    session.skipped_steps += skipped
    if now < 1:
        diverged(session, f"the fp16 loss scale fell below 1 ({now:g}; the gradients overflowed fp16 at every scale "
                 "tried)", "train with train.precision bf16 (where the hardware has it) or fp32")
    session.scheduler.step()  # a skipped step counts: its data is consumed and the schedule moves on
    session.optimizer.zero_grad(set_to_none=True)
    finite = grad_norm is not None and math.isfinite(grad_norm)
    return {"grad_norm": grad_norm if finite else None, "loss_scale": scale, "skipped": skipped}
