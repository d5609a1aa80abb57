"""Optimizer and learning-rate schedule: AdamW with decoupled weight decay and a warmup schedule.

Biases and normalisation weights (every parameter with fewer than 2 dimensions) get no weight decay.
AdamW runs with the fused kernel (CUDA and CPU; on the benchmark's CPU it took a third of the foreach
kernel's time per step, docs/benchmarks.md) and falls back to foreach on other devices.

Trainable parameters held in bf16/fp16 (`model.dtype: bfloat16`) are updated through exact fp32 master
weights (`sftlab.train.master_weights.MasterWeightAdamW`; for bf16 the model's weights plus 16-bit
remainders), so updates smaller than the weights' bf16 resolution are not lost. The optimizer's
state_dict carries what rebuilds the masters, so a resumed run continues from them.
"""

from __future__ import annotations

import torch

from sftlab.errors import SftlabError
from sftlab.train.master_weights import MasterWeightAdamW

_SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (matrices) and an undecayed one (biases, norms)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _needs_master_weights(groups: list[dict]) -> bool:
    """Low-precision trainable parameters on one process's own tensors (not FSDP's sharded DTensors)."""
    params = [p for group in groups for p in group["params"]]
    low = any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
    return low and not any(type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor" for p in params)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    master_weights: bool = True) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel on CUDA/CPU, foreach kernels otherwise.

    With `master_weights` (default), bf16/fp16 trainable parameters are updated through exact fp32
    master weights (`MasterWeightAdamW`); DeepSpeed, which keeps its own, passes False."""
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise SftlabError("strategy: no trainable parameters are left; the strategy froze the whole model")
    fusable = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for g in groups for p in g["params"])
    kernel = {"fused": True} if fusable else {"foreach": True}
    if master_weights and _needs_master_weights(groups):
        return MasterWeightAdamW(groups, lr=lr, **kernel)
    return torch.optim.AdamW(groups, lr=lr, **kernel)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int):
    """A per-optimizer-step LR schedule: linear or cosine decay to 0, or constant, after linear warmup."""
    from transformers import get_scheduler

    return get_scheduler(_SCHEDULES[kind], optimizer, num_warmup_steps=min(warmup_steps, total_steps),
                         num_training_steps=total_steps)
