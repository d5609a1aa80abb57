"""Training losses as (sum, count) pairs, so the loop can normalise by a whole optimizer step.

Causal LMs: the backbone yields hidden states; only positions whose *shifted* label is supervised
(!= -100) go through the output head (plus the config's final logit soft-capping, as in gemma). Logits
at unsupervised positions are never built. When gradients are needed and the head is a plain bias-free
linear layer (the usual case), `FusedHeadLoss` computes, chunk by chunk, the logits, the loss and at once
the gradients of the head's input and weight (softmax minus one-hot, two matmuls), so no chunk's
logits are kept or recomputed for backward and the head's memory stays one chunk of
[positions x vocabulary] (`head_chunk_rows`: one chunk buffer, logits then gradient, in the matmul dtype, of
about 64 MiB, at least 256 rows; chunks are a multiple of `ROW_ALIGN` rows, the last one padded with zero rows). Otherwise the head runs in
chunks of `HEAD_CHUNK` positions, each recomputed in backward (activation checkpointing). (A model whose
head cannot be separated from its backbone falls back to full logits, then selects the positions.)

Classifiers: summed cross-entropy over the examples of the micro-batch (optionally class-weighted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
HEAD_CHUNK = 1024
FUSED_CHUNK_BYTES = 64 * 2**20  # sizes a chunk's rows as this many bytes of logits in the matmul dtype (W1 in bf16:
# 2,048 rows after ROW_ALIGN, its whole step in one or two chunks; a W1 step 4.6% faster than at 262 rows on AMX, where the
# weight-gradient matmul and its fp32 accumulation dominate thin chunks; docs/speed-work.md, eighth round)...
MIN_FUSED_ROWS = 256  # ...unless that is fewer rows than this (a 262k vocabulary: 128 MiB in bf16)
ROW_ALIGN = 256  # chunks are a multiple of this many rows (a shorter last one padded with zero rows): oneDNN builds
# a matmul kernel for every new shape (29 ms for a [rows x 16k] @ [16k x 512] on AMX), and the supervised count
# changes every step
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


def head_chunk_rows(vocab: int, dtype_bytes: int, budget: int | None = None) -> int:
    """Rows per chunk of the fused head loss: logits of `dtype_bytes` each, about `budget` bytes
    (default `FUSED_CHUNK_BYTES`), but at least
    `MIN_FUSED_ROWS`: thinner chunks starve the head's matmuls (Gemma's 262k x 640 head on 2 CPU cores:
    76-106 GFLOP/s at 64 rows, 112-168 at 256; a W2 step 16.2 s at 64 rows, 12.7 s at 256)."""
    rows = max(MIN_FUSED_ROWS, (budget or FUSED_CHUNK_BYTES) // (dtype_bytes * vocab))
    return rows // ROW_ALIGN * ROW_ALIGN if rows >= ROW_ALIGN else rows


def float32_chunk_rows(head) -> int | None:
    """Rows per chunk of `head`'s float32 logits without gradients (evaluation, scoring): about `FUSED_CHUNK_BYTES`,
    at least `MIN_FUSED_ROWS` (`head_chunk_rows`); None for a head without a weight matrix."""
    weight = getattr(head, "weight", None)
    return head_chunk_rows(weight.shape[0], 4) if weight is not None and weight.dim() == 2 else None


def _round_up(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


def _padded(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`rows` followed by zero rows up to `count`."""
    missing = count - rows.shape[0]
    return rows if not missing else torch.cat([rows, rows.new_zeros((missing, *rows.shape[1:]))])


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would use on the weight's device (the weight's own dtype without autocast)."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class FusedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` (optionally soft-capped) whose gradients are made in forward.

    Per chunk of rows: logits in the autocast dtype (the weight's dtype without autocast); the gradient of
    the summed loss w.r.t. the logits is softmax - one_hot (times 1 - tanh^2 under soft-capping),
    multiplied back through the head at once (`_softmax_loss_and_grad`, `_capped_loss_and_grad`).
    Backward only scales the stored gradients by the incoming scalar. The weight gradient is skipped
    when the head is frozen."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, rows):
        dtype = _compute_dtype(weight)
        w = weight.to(dtype)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight_t = None  # fp32 [dim x vocab]: the first chunk's product, then the others added to it
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # one chunk buffer for all chunks, in the matmul dtype: the logits as the matmul writes them, then,
        # in place, their softmax and the gradient the next matmuls read
        count, align = hidden.shape[0], min(rows, ROW_ALIGN)
        buffer = hidden.new_empty((min(rows, _round_up(count, align)), w.shape[0]), dtype=dtype)
        with torch.autocast(hidden.device.type, enabled=False):  # operands are cast already; out= needs it off
            for start in range(0, count, rows):
                real = min(rows, count - start)
                width = _round_up(real, align)  # a shorter last chunk gets zero rows: the matmuls keep their shapes
                h = _padded(hidden[start:start + real].to(dtype), width)
                t = _padded(targets[start:start + real], width)
                logits = torch.mm(h, w.T, out=buffer[:width])
                if softcap is None:
                    loss, grad = _softmax_loss_and_grad(logits, t, lambda lost: h[lost] @ w.T, real)
                else:
                    loss, grad = _capped_loss_and_grad(logits, t, softcap, real)
                total += loss
                if want_hidden:
                    grad_hidden[start:start + real] = (grad @ w)[:real]
                if want_weight:  # the zero rows add nothing; h^T made contiguous: oneDNN runs h^T @ grad at
                    # 1.7x the rate of grad^T @ h on AMX (17 against 28.5 ms for 2,048 rows of W1)
                    part = h.t().contiguous() @ grad
                    grad_weight_t = part.float() if grad_weight_t is None else grad_weight_t.add_(part)
                    del part  # else it stays alive while the next chunk's is made: a third weight-sized tensor
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight_t)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight_t = ctx.saved_tensors
        grad_h = None if grad_hidden is None else grad_hidden * grad_output.to(grad_hidden.dtype)
        grad_w = None
        if grad_weight_t is not None:  # scaled, cast and transposed back to [vocab x dim] in one pass
            grad_w = grad_weight_t.new_empty(grad_weight_t.shape[::-1], dtype=ctx.weight_dtype)
            torch.mul(grad_weight_t.t(), grad_output.float(), out=grad_w)
        return grad_h, grad_w, None, None, None


def _softmax_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, relogits, real: int):
    """Summed cross-entropy of the first `real` rows of one chunk (fp32; the rest is padding) and the
    chunk's gradient softmax - one_hot, in place of `logits`.

    One softmax pass in the logits' dtype (fp32 inside; on a 256 x 262,144 bf16 chunk 24 ms, against 92 ms
    for an fp32 copy, log-softmax, exp and copy back). Rounded to bf16, a confident target's probability
    would be 1.0 and its gradient 0; so the target's gradient p_t - 1 is taken as minus the summed
    probability of the other tokens, and its loss -log(p_t) as -log1p(-that sum) where p_t >= 0.5. A
    probability that underflowed to 0 gets its loss from an fp32 log-sum-exp of its row's logits,
    `relogits(row mask)` (made again: the softmax has replaced them)."""
    probs = torch._softmax(logits, -1, False, out=logits)  # in place: row by row, each element read before written
    rows = torch.arange(targets.shape[0], device=targets.device)
    picked = probs[rows, targets].float()  # p_t
    probs[rows, targets] = 0.0
    others = probs.sum(-1).float()  # 1 - p_t, with the precision of the small side
    probs[rows, targets] = others.neg().to(probs.dtype)
    losses = torch.where(picked < 0.5, -picked.log(), -torch.log1p(-others.clamp(max=0.5)))
    lost = picked == 0
    lost[real:] = False
    if lost.any():
        again = relogits(lost).float()
        exact = torch.logsumexp(again, -1) - again.gather(1, targets[lost][:, None])[:, 0]
        losses = losses.masked_scatter(lost, exact)
    return losses[:real].sum(), probs


def _capped_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, softcap: float, real: int):
    """`_softmax_loss_and_grad` under final logit soft-capping (cap * tanh(logits / cap)), in fp32; the
    gradient goes in place of `logits`."""
    capped = torch.tanh(logits.float() / softcap)
    slope = 1.0 - capped.square()  # d(cap * tanh(x / cap)) / dx
    logprobs = torch.log_softmax(capped.mul_(softcap), dim=-1)
    loss = -logprobs[:real].gather(1, targets[:real, None]).sum()
    grad = logprobs.exp_()
    grad[torch.arange(targets.shape[0], device=targets.device), targets] -= 1.0
    return loss, logits.copy_(grad.mul_(slope))


def fused_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                    rows: int) -> torch.Tensor:
    """`FusedHeadLoss` over `rows`-row chunks (half as many under soft-capping, whose fp32 temporaries take more)."""
    return FusedHeadLoss.apply(hidden, weight, targets, softcap, rows if softcap is None else max(1, rows // 2))


def _fusable(head) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None


def causal_lm_loss_sum(model: torch.nn.Module, batch: dict, chunk: int | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over supervised positions, and how many there were.

    `chunk`: head rows per chunk (default: `head_chunk_rows` for the fused loss, else `HEAD_CHUNK`)."""
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
    if torch.is_grad_enabled() and _fusable(head):
        rows = chunk or head_chunk_rows(head.weight.shape[0], _compute_dtype(head.weight).itemsize)
        return fused_head_loss(hidden, head.weight, targets, softcap, rows), count
    chunk = chunk or HEAD_CHUNK
    recompute = torch.is_grad_enabled() and count > chunk
    total = None
    for start in range(0, count, chunk):
        args = (head, hidden[start:start + chunk], targets[start:start + chunk], softcap)
        part = checkpoint(_head_loss, *args, use_reentrant=False) if recompute else _head_loss(*args)
        total = part if total is None else total + part
    return total, count


@torch.no_grad()
def row_logprobs(model: torch.nn.Module, batch: dict, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its supervised tokens, and how many there were.

    Like `causal_lm_loss_sum`, the output head runs only at supervised positions, so scoring a short
    answer after a long prompt never builds [prompt x vocabulary] logits. `chunk` positions at a time: by default
    float32 logits of about `FUSED_CHUNK_BYTES` (`head_chunk_rows`; 256 rows for a 262k vocabulary, where 1,024
    made 3 GiB of logits and copies at once), `HEAD_CHUNK` for a head without a weight matrix."""
    _, backbone, head, softcap = _backbone_and_head(model)
    chunk = chunk or float32_chunk_rows(head) or HEAD_CHUNK
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
