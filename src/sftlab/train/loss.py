"""Training losses as (sum, count) pairs, so the loop can normalise by a whole optimizer step.

Causal LMs: the backbone yields hidden states; only positions whose *shifted* label is supervised
(!= -100) go through the output head (plus the config's final logit soft-capping, as in gemma), in
chunks of `HEAD_CHUNK` positions. Logits at unsupervised positions are never built, and with more
than one chunk each chunk's logits are recomputed in backward (activation checkpointing), so the
head's memory stays one chunk of [positions x vocabulary] even for 262k vocabularies. (A model whose
head cannot be separated from its backbone falls back to full logits, then selects the positions.)

Classifiers: summed cross-entropy over the examples of the micro-batch (optionally class-weighted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
HEAD_CHUNK = 1024
_BACKBONE_INPUTS = ("attention_mask", "position_ids",  # + image inputs of vision-language batches (sftlab.vision)
                    "pixel_values", "image_grid_thw", "image_sizes", "mm_token_type_ids", "token_type_ids")


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (adapter layers stay injected), else `model`."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def count_supervised_tokens(labels: torch.Tensor) -> int:
    """Positions that contribute to the causal-LM loss: shifted labels that are not -100."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def _head_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def _backbone_and_head(model: torch.nn.Module):
    """(transformers model, backbone, output head or None, soft-capping) of a causal LM (peft unwrapped)."""
    hf_model = unwrap_peft(model)
    head = hf_model.get_output_embeddings()
    backbone = hf_model.base_model
    separable = backbone is not hf_model and head is not None
    return hf_model, (backbone if separable else None), head, getattr(hf_model.config, "final_logit_softcapping", None)


def causal_lm_loss_sum(model: torch.nn.Module, batch: dict, chunk: int = HEAD_CHUNK) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over supervised positions, and how many there were."""
    _, backbone, head, softcap = _backbone_and_head(model)
    labels = batch["labels"]
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    extra = {key: batch[key] for key in _BACKBONE_INPUTS if batch.get(key) is not None}
    if backbone is None:  # no separable head: fall back to full logits
        logits = model(input_ids=batch["input_ids"], use_cache=False, **extra).logits[:, :-1][supervised].float()
        return F.cross_entropy(logits, targets[supervised], reduction="sum"), int(supervised.sum())
    hidden = backbone(input_ids=batch["input_ids"], use_cache=False, **extra).last_hidden_state
    hidden = hidden[:, :-1][supervised]
    targets = targets[supervised]
    count = int(targets.numel())
    if count == 0:
        return hidden.sum() * 0.0, 0  # keeps the graph connected so backward still works
    recompute = torch.is_grad_enabled() and count > chunk
    total = None
    for start in range(0, count, chunk):
        args = (head, hidden[start:start + chunk], targets[start:start + chunk], softcap)
        part = checkpoint(_head_loss, *args, use_reentrant=False) if recompute else _head_loss(*args)
        total = part if total is None else total + part
    return total, count


@torch.no_grad()
def row_logprobs(model: torch.nn.Module, batch: dict, chunk: int = HEAD_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its supervised tokens, and how many there were.

    Like `causal_lm_loss_sum`, the output head runs only at supervised positions, so scoring a short
    answer after a long prompt never builds [prompt x vocabulary] logits."""
    _, backbone, head, softcap = _backbone_and_head(model)
    targets = batch["labels"][:, 1:]
    supervised = targets != IGNORE_INDEX
    extra = {key: batch[key] for key in _BACKBONE_INPUTS if batch.get(key) is not None}
    if backbone is None:
        logits = model(input_ids=batch["input_ids"], use_cache=False, **extra).logits[:, :-1][supervised]
        hidden, head = logits, (lambda x: x)
    else:
        hidden = backbone(input_ids=batch["input_ids"], use_cache=False, **extra).last_hidden_state[:, :-1][supervised]
    flat_targets, rows = targets[supervised], supervised.nonzero()[:, 0]
    logprobs = torch.empty(flat_targets.shape[0], device=flat_targets.device)
    for start in range(0, flat_targets.shape[0], chunk):
        logits = head(hidden[start:start + chunk]).float()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        picked = logits.log_softmax(-1).gather(-1, flat_targets[start:start + chunk, None])[:, 0]
        logprobs[start:start + chunk] = picked
    sums = torch.zeros(targets.shape[0], device=logprobs.device).index_add_(0, rows, logprobs)
    return sums, supervised.sum(dim=1)


def classification_loss_sum(model: torch.nn.Module, batch: dict,
                            class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed (optionally class-weighted) cross-entropy of a sequence classifier, and the example count."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask") if batch.get(key) is not None}
    logits = model(**inputs).logits.float()
    weight = class_weights.to(logits.device) if class_weights is not None else None
    losses = F.cross_entropy(logits, batch["labels"], weight=weight, reduction="none")
    return losses.sum(), int(batch["labels"].numel())


def loss_sum(model: torch.nn.Module, batch: dict, stage: str,
             class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Dispatch on the training stage: cls -> classifier loss, pt/sft -> supervised-position LM loss."""
    if stage == "cls":
        return classification_loss_sum(model, batch, class_weights)
    return causal_lm_loss_sum(model, batch)
