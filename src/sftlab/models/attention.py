"""Matmul attention: an attention function for training on the CPU, registered with transformers.

`model.attn_implementation: matmul` selects it. PyTorch's CPU flash-attention kernel (what `sdpa`
runs) reaches about 150 GFLOP/s in bf16 on a 2-core Zen 5 whose bf16 matrix multiplies run at
900 GFLOP/s, and it skips no work for causal or packed (block-diagonal) masks at 512 tokens. This
function instead writes the scores out, `softmax(q k^T * scale + mask) v`, as two batched matmuls
forward and four backward, with one fused softmax pass each way, and computes grouped-query heads
against their shared key/value head without repeating it. One W1 layer (8 x 512 tokens, 8 heads of 64,
bf16, 2 threads): 55 ms forward + backward instead of 78 ms (docs/benchmarks.md).

The price is memory: the probabilities, [batch, heads, queries, keys] in the compute dtype, are kept
for backward, where the flash kernel keeps one number per query. Calls whose probabilities would
exceed `MAX_PROBS_BYTES`, and every call it does not cover (no gradient, dropout, soft-capping,
position bias, a float mask, a device other than the CPU), run transformers' `sdpa` function.
Scores are rounded to the compute dtype before the softmax, as in transformers' `eager` attention.
"""

from __future__ import annotations

import torch

NAME = "matmul"
MAX_PROBS_BYTES = 512 * 2**20  # probabilities kept per call (one layer)


class MatmulAttention(torch.autograd.Function):
    """softmax(q k^T * scale masked by `keep`) v for query heads grouped over shared key/value heads.

    query [B, H, T, D]; key, value [B, Hkv, S, D] with H a multiple of Hkv (head h uses key/value head
    h // (H / Hkv), as transformers' `repeat_kv` pairs them); keep: bool [B or 1, 1, T, S],
    True where a query may attend. A query with nothing to attend gets a zero output, as in sdpa."""

    @staticmethod
    def forward(ctx, query, key, value, keep, scale):
        batch, heads, length, dim = query.shape
        kv_heads, keys = key.shape[1], key.shape[2]
        group = heads // kv_heads
        scaled = (query * scale).reshape(batch, kv_heads, group * length, dim)
        scores = torch.matmul(scaled, key.transpose(-1, -2)).view(batch, kv_heads, group, length, keys)
        scores.masked_fill_(~keep[:, :, None], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        empty = ~keep.any(dim=-1, keepdim=True)  # queries with nothing to attend (left padding) give 0, as in sdpa
        if empty.any():
            probs.masked_fill_(empty[:, :, None], 0.0)
        probs = probs.view(batch, kv_heads, group * length, keys)
        out = torch.matmul(probs, value)
        ctx.save_for_backward(scaled, key, value, probs)
        ctx.scale = scale
        return out.view(batch, heads, length, dim)

    @staticmethod
    def backward(ctx, grad_out):
        scaled, key, value, probs = ctx.saved_tensors
        batch, heads, length, dim = grad_out.shape
        grad = grad_out.reshape(scaled.shape).to(probs.dtype)
        grad_value = torch.matmul(probs.transpose(-1, -2), grad)
        grad_probs = torch.matmul(grad, value.transpose(-1, -2))
        # (dP - rowsum(dP * P)) * P in one pass, fp32 inside (what softmax's own backward runs)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_query = torch.matmul(grad_scores, key).mul_(ctx.scale).view(batch, heads, length, dim)
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), scaled)
        return grad_query, grad_key, grad_value, None, None


def _covered(query, key, value, attention_mask, dropout: float, kwargs: dict) -> bool:
    """Whether `matmul_attention_forward` computes this call itself (else it hands it to sdpa)."""
    if not torch.is_grad_enabled() or dropout or kwargs.get("softcap") is not None:
        return False
    if kwargs.get("position_bias") is not None or kwargs.get("output_attentions"):
        return False
    if query.device.type != "cpu" or not (query.dtype == key.dtype == value.dtype):
        return False
    if query.shape[1] % key.shape[1]:
        return False
    if attention_mask is None:
        if query.shape[2] != key.shape[2]:
            return False
    elif attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or attention_mask.shape[1] != 1:
        return False
    batch, heads, length = query.shape[:3]
    return batch * heads * length * key.shape[2] * query.element_size() <= MAX_PROBS_BYTES


def matmul_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention function (`AttentionInterface`): [B, T, H, D] output and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not _covered(query, key, value, attention_mask, dropout, kwargs) or (attention_mask is None and not causal):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    keep = attention_mask
    if keep is None:  # causal without padding: transformers leaves the mask to the kernel
        length = query.shape[2]
        keep = torch.ones(1, 1, length, length, dtype=torch.bool, device=query.device).tril_()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = MatmulAttention.apply(query, key, value, keep, scale)
    return out.transpose(1, 2).contiguous(), None


def register_attention(name: str) -> None:
    """Make `attn_implementation=name` known to transformers when it is sftlab's (`matmul`); others are its own."""
    if name != NAME:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, matmul_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # boolean masks, None where causal suffices
