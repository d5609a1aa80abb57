"""Activation checkpointing of the decoder layers: full (recompute everything) or selective.

`train.gradient_checkpointing: true` recomputes each layer's forward in backward (least memory, one
extra forward). `selective` keeps the outputs of the linear layers' matrix multiplies and of sdpa's attention
kernels and recomputes the rest (norms, rotary embeddings, activation functions, the gated product, GQA's
key/value repeats, and attention written as batched matmuls: eager attention's and sftlab's matmul attention's
scores, which are [queries x keys] per head and would take more than the rest), using torch's selective
activation checkpointing. Keeping the batched matmuls' outputs too made selective keep more than no
checkpointing on sftlab's default path (fused layers, matmul attention): W1 in bf16 peaked at 1.99 GiB against
1.87 GiB; without them 1.66 GiB (docs/speed-work.md, fifteenth round). Both go through transformers' per-layer
checkpointing hook (`GradientCheckpointingLayer`), so they apply to the models that support
`gradient_checkpointing_enable`; selective is tested on qwen2, llama and gemma3 (same loss and gradients as no
checkpointing, less memory kept, also with fused layers and matmul attention).
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_SAVED_NAMES = ("mm", "addmm", "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention")
SAVED_OPS = frozenset(getattr(torch.ops.aten, name).default for name in _SAVED_NAMES
                      if hasattr(torch.ops.aten, name))  # outputs `selective` keeps: the linear layers and sdpa


def save_matmuls_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpointing policy: keep the linear layers' matmul and sdpa outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def enable_activation_checkpointing(model: torch.nn.Module, mode: bool | str) -> None:
    """Turn on per-layer activation checkpointing: `True` (full) or `"selective"`; `False` does nothing."""
    if mode is False:
        return
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, save_matmuls_policy)
    elif mode is not True:
        raise ValueError(f"train.gradient_checkpointing: expected true, false or selective, got {mode!r}")
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5 name; the old one warns
    if enable is not None:
        enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    drop_input_grad_hook(model)


def drop_input_grad_hook(model: torch.nn.Module) -> None:
    """Remove the hook that makes the embedding output require grad (transformers adds it when checkpointing
    is enabled, peft again when it wraps a checkpointed model). Only reentrant checkpointing needs it;
    with frozen lower layers it would make backward run through all of them for nothing."""
    from sftlab.train.loss import unwrap_peft

    disable = getattr(unwrap_peft(model), "disable_input_require_grads", None)
    if disable is not None:
        disable()
