"""Optimizer and learning-rate schedule: AdamW with decoupled weight decay and a warmup schedule.

Biases and normalisation weights (every parameter with fewer than 2 dimensions) get no weight decay.
AdamW runs with the fused kernel (CUDA and CPU; on the benchmark's CPU it took a third of the foreach
kernel's time per step, docs/speed-work.md) and falls back to foreach on other devices.

Trainable parameters held in bf16/fp16 (`model.dtype: bfloat16`) get fp32 master copies
(`MasterWeightAdamW`): AdamW updates the fp32 copies from the low-precision gradients and copies them
back into the model after each step, so updates smaller than the weights' bf16 resolution are not
lost. The optimizer's state_dict carries the master copies, so a resumed run continues from them.
"""

from __future__ import annotations

import math

import torch

from sftlab.errors import SftlabError


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (matrices) and an undecayed one (biases, norms)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


STEP_CHUNK_BYTES = 32 * 2**20  # fp32 gradients made at a time by MasterWeightAdamW.step


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW on fp32 master copies of low-precision model parameters.

    `step()` goes through the parameters in chunks of about `STEP_CHUNK_BYTES` of fp32 gradient: it reads
    each model parameter's gradient (as fp32) into its master copy, runs AdamW on those masters and
    copies them back into the model parameters, so the fp32 gradients of the whole model never exist at
    once (on W1, 156 MB less made and freed per step, and 28 MiB less peak RSS). `zero_grad()` clears the
    model's gradients. Gradient accumulation acts on the model parameters' own gradients as usual;
    `clip_in_step` clips them inside the next step instead of rescaling them in place."""

    def __init__(self, groups: list[dict], **kwargs):
        self.model_params = [list(group["params"]) for group in groups]
        masters = [{**group, "params": [p.detach().float().clone() for p in group["params"]]} for group in groups]
        super().__init__(masters, **kwargs)
        self.clip_divisor = None  # set by clip_in_step for the next step only

    @torch.no_grad()
    def clip_in_step(self, max_norm: float) -> float:
        """Clip the model gradients' total L2 norm to `max_norm` in the next `step()`, as
        `torch.nn.utils.clip_grad_norm_` would (coefficient max_norm / (norm + 1e-6) when below 1); returns
        the norm before clipping. The fused AdamW kernel divides the fp32 master gradients by the
        coefficient's inverse (its `grad_scale`), so the bf16 gradients are not rescaled in place: on W1
        that pass over every gradient took 17 of the 27 ms torch's clipping took (docs/speed-work.md,
        eighth round)."""
        grads = [param.grad for params in self.model_params for param in params if param.grad is not None]
        norms = [torch.linalg.vector_norm(grad, dtype=torch.float32) for grad in grads]  # fp32 even for bf16 ones
        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        coefficient = max_norm / (norm + 1e-6)
        self.clip_divisor = 1.0 / coefficient if coefficient < 1.0 else None
        return norm

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():  # as torch's optimizers run it: the closure computes a loss to backward
                loss = closure()
        divide_here = self.clip_divisor is not None and not self.defaults.get("fused")
        if self.clip_divisor is not None and not divide_here:  # torch's AdamW hands this to the fused kernel
            self.grad_scale = torch.tensor(self.clip_divisor, dtype=torch.float32)
        for chunk in self._chunks():
            for master, param in chunk:
                master.grad = param.grad.float()
                if divide_here:
                    master.grad.div_(self.clip_divisor)
            super().step()  # AdamW skips parameters without a gradient: only this chunk's masters move
            torch._foreach_copy_([param for _, param in chunk], [master for master, _ in chunk])
            for master, _ in chunk:
                master.grad = None
        self.clip_divisor = self.grad_scale = None
        return loss

    def _chunks(self) -> list[list[tuple[torch.Tensor, torch.nn.Parameter]]]:
        """(master, parameter) pairs with gradients, in runs of about `STEP_CHUNK_BYTES` of fp32 gradient."""
        chunks, current, size = [], [], 0
        for group, params in zip(self.param_groups, self.model_params):
            for master, param in zip(group["params"], params):
                if param.grad is None:
                    continue
                current.append((master, param))
                size += master.numel() * 4
                if size >= STEP_CHUNK_BYTES:
                    chunks.append(current)
                    current, size = [], 0
        return chunks + ([current] if current else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for params in self.model_params:
            for param in params:
                if set_to_none:
                    param.grad = None
                elif param.grad is not None:
                    param.grad.zero_()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["master_weights"] = [m.detach().clone() for group in self.param_groups for m in group["params"]]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        masters = state_dict.pop("master_weights", None)
        super().load_state_dict(state_dict)
        if masters is not None:
            with torch.no_grad():
                current = [m for group in self.param_groups for m in group["params"]]
                torch._foreach_copy_(current, list(masters))
                for group, params in zip(self.param_groups, self.model_params):
                    torch._foreach_copy_(params, group["params"])


def _needs_master_weights(groups: list[dict]) -> bool:
    """Low-precision trainable parameters on one process's own tensors (not FSDP's sharded DTensors)."""
    params = [p for group in groups for p in group["params"]]
    low = any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
    return low and not any(type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor" for p in params)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    master_weights: bool = True) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel on CUDA/CPU, foreach kernels otherwise.

    With `master_weights` (default), bf16/fp16 trainable parameters are updated through fp32 master
    copies (`MasterWeightAdamW`); DeepSpeed, which keeps its own, passes False."""
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise SftlabError("strategy: no trainable parameters are left; the strategy froze the whole model")
    fusable = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for g in groups for p in g["params"])
    kernel = {"fused": True} if fusable else {"foreach": True}
    if master_weights and _needs_master_weights(groups):
        return MasterWeightAdamW(groups, lr=lr, **kernel)
    return torch.optim.AdamW(groups, lr=lr, **kernel)


def lr_factor(kind: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate at optimizer step `step` as a fraction of train.lr: linear warmup from 0, then
    linear decay to 0, half a cosine to 0, or constant (transformers' `linear`, `cosine` and
    `constant_with_warmup` schedules, which tests/test_walk_optim.py checks these against)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int):
    """A per-optimizer-step LR schedule (`lr_factor`): linear or cosine decay to 0, or constant, after linear
    warmup. Written here rather than taken from `transformers.get_scheduler`, whose module imports the
    Trainer's utilities and peft (11 MiB in every training process). Warmup as long as the run or longer is
    kept as given, as transformers keeps it (no longer cut to the run's length): the rate rises by
    train.lr / warmup_steps a step and never reaches train.lr (`warmup_note` says so)."""
    if kind not in ("linear", "cosine", "constant"):
        raise SftlabError(f"train.scheduler {kind!r}: expected linear, cosine or constant")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(kind, step, warmup_steps, total_steps))


def warmup_note(warmup_steps: int, total_steps: int, lr: float) -> str | None:
    """A run-log line when train.warmup_steps leaves no optimizer step at train.lr (warmup_steps >= the run's
    steps: the last step, at index total_steps - 1, is still warming up), else None."""
    if warmup_steps < total_steps:
        return None
    last = lr * lr_factor("constant", total_steps - 1, warmup_steps, total_steps)
    return (f"note: train.warmup_steps {warmup_steps} is not less than the run's {total_steps} optimizer steps: the "
            f"learning rate never reaches train.lr {lr:g} (the last step runs at {last:.3g}, as transformers' "
            f"schedules would); set train.warmup_steps below {total_steps} to reach it")
