"""Matmul attention: an attention function for training on the CPU, registered with transformers.

`model.attn_implementation: matmul` selects it, and so does the default `auto` for every model whose
attention goes through transformers' attention interface (`_supports_attention_backend`; others keep
transformers' default, sdpa where the model has it): see `attention_to_load` / `settle_attention`. It
computes calls on the CPU with gradients only, so on a GPU, and in generation, `auto` means sdpa.

PyTorch's CPU flash-attention kernel (what `sdpa` runs) reached about 150 GFLOP/s in bf16 on a
2-core Zen 5 whose bf16 matrix multiplies run at 900 GFLOP/s, and took as long with a causal or packed
(block-diagonal) mask as with none at 512 tokens. This function writes the scores out,
`softmax(q k^T * scale + mask) v`, as batched matmuls with one fused softmax pass each way, computes
grouped-query heads against their shared key/value head without repeating it, and takes the queries in
blocks of `QUERY_BLOCK`, each against only the keys some query of the block may see (`key_ranges`: none
after the block under a causal mask, none before the block's sample in a packed row). One W1 layer (8
packed rows of 512 tokens, 8 query and 2 key/value heads of 64, bf16, 2 threads): 20 ms forward +
backward instead of sdpa's 78 ms (docs/speed-work.md).

The key ranges and each block's mask bias are built once per mask tensor (`_mask_parts`: the first
layer's forward builds them, the other layers and every backward reuse them). All blocks' biases
together take at most 1 / heads of the bytes of the call's full probabilities (half that under a causal
mask), and those are at most `MAX_PROBS_BYTES` for a call it computes.

For backward a call keeps its blocks' probabilities when together they take at most `KEEP_PROBS_BYTES`
(W1: about 20 MiB per layer, 8 packed rows of 512 tokens); a larger call keeps only the scaled query
blocks (the size of the queries) and recomputes each block's probabilities in backward, one block at a
time (one more q k^T matmul, bias add and softmax per block). On the AMX box keeping them made one W1
layer's attention 19.0 ms forward + backward instead of 26.6 ms and a W1 step 7.7% faster, for about 160 MiB
more per step (docs/speed-work.md, eighth round).

Calls whose full [queries x keys] probabilities would exceed `MAX_PROBS_BYTES` (long rows, where the
blocks themselves grow large), and every call it does not cover (no gradient, dropout, soft-capping,
position bias, a float mask, a device other than the CPU), run transformers' `sdpa` function. Under CPU
autocast the query, key and value are cast to the autocast dtype first, as autocast casts sdpa's. Scores
are rounded to the compute dtype before the softmax, as in transformers' `eager` attention.
"""

from __future__ import annotations

import torch

NAME = "matmul"
AUTO = "auto"  # model.attn_implementation default: matmul where the model supports it
MAX_PROBS_BYTES = 512 * 2**20  # [queries x keys] probabilities of one call, were they all made at once
KEEP_PROBS_BYTES = 64 * 2**20  # a call's block probabilities kept for backward up to this; above, recomputed there
QUERY_BLOCK = 128  # queries per block; each block meets only the keys it may see


def key_ranges(keep: torch.Tensor, block: int) -> list[tuple[int, int, int, int]]:
    """(q0, q1, k0, k1) per block of `block` queries: every key outside [k0, k1) is masked for all of them.

    keep: bool [B or 1, 1, T, S]. Under a causal mask a block needs no key after its last query, and in
    a packed row none before the start of the sample its first query belongs to; the range covers the
    rows of the whole batch. A block no query of which may attend anything gets an empty range."""
    seen = keep.any(dim=0)[0]  # [T, S]: some row lets query t see key s
    ranges = []
    for q0 in range(0, seen.shape[0], block):
        q1 = min(q0 + block, seen.shape[0])
        columns = seen[q0:q1].any(dim=0).nonzero()
        k0, k1 = (int(columns[0]), int(columns[-1]) + 1) if len(columns) else (0, 0)
        ranges.append((q0, q1, k0, k1))
    return ranges


class MatmulAttention(torch.autograd.Function):
    """softmax(q k^T * scale masked by `keep`) v for query heads grouped over shared key/value heads.

    query [B, H, T, D]; key, value [B, Hkv, S, D] with H a multiple of Hkv (head h uses key/value head
    h // (H / Hkv), as transformers' `repeat_kv` pairs them); keep: bool [B or 1, 1, T, S],
    True where a query may attend. A query with nothing to attend gets a zero output, as in sdpa.
    Queries go in blocks of `QUERY_BLOCK`, each against only the keys its block may see (`key_ranges`); their
    probabilities are kept for backward up to `KEEP_PROBS_BYTES` per call, else recomputed there."""

    @staticmethod
    def forward(ctx, query, key, value, keep, scale):
        batch, heads, length, dim = query.shape
        kv_heads = key.shape[1]
        group = heads // kv_heads
        scaled = (query * scale).reshape(batch, kv_heads, group, length, dim)
        out = query.new_zeros(batch, kv_heads, group, length, dim)
        ranges = _mask_parts(keep, ("ranges", QUERY_BLOCK), lambda: key_ranges(keep, QUERY_BLOCK))
        kept = probs_bytes(ranges, batch * heads, query.element_size()) <= KEEP_PROBS_BYTES
        blocks, block_probs = [], []
        for q0, q1, k0, k1 in ranges:
            block = scaled[:, :, :, q0:q1].reshape(batch, kv_heads, group * (q1 - q0), dim)
            blocks.append(block)
            if k1 == k0:
                continue
            probs = _block_probs(block, key, keep, group, (q0, q1, k0, k1))
            if kept:
                block_probs.append(probs)
            out[:, :, :, q0:q1] = torch.matmul(probs, value[:, :, k0:k1]).view(batch, kv_heads, group, q1 - q0, dim)
        ctx.save_for_backward(key, value, keep, *blocks, *block_probs)
        ctx.ranges, ctx.scale, ctx.kept = ranges, scale, kept
        return out.view(batch, heads, length, dim)

    @staticmethod
    def backward(ctx, grad_out):
        key, value, keep, *saved = ctx.saved_tensors
        blocks, block_probs = saved[:len(ctx.ranges)], iter(saved[len(ctx.ranges):])
        batch, heads, length, dim = grad_out.shape
        kv_heads = key.shape[1]
        group = heads // kv_heads
        grad = grad_out.to(key.dtype).reshape(batch, kv_heads, group, length, dim)
        grad_query = torch.zeros_like(grad)
        grad_key = torch.zeros_like(key, dtype=torch.float32)  # blocks add up here, in fp32
        grad_value = torch.zeros_like(value, dtype=torch.float32)
        for block, (q0, q1, k0, k1) in zip(blocks, ctx.ranges):
            if k1 == k0:
                continue
            if ctx.kept:
                probs = next(block_probs)
            else:  # recomputed: one block's probabilities at a time
                probs = _block_probs(block, key, keep, group, (q0, q1, k0, k1))
            grad_block = grad[:, :, :, q0:q1].reshape(block.shape)
            grad_value[:, :, k0:k1] += torch.matmul(probs.transpose(-1, -2), grad_block)
            grad_probs = torch.matmul(grad_block, value[:, :, k0:k1].transpose(-1, -2))
            # (dP - rowsum(dP * P)) * P in one pass, fp32 inside (what softmax's own backward runs)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            grad_query[:, :, :, q0:q1] = torch.matmul(grad_scores, key[:, :, k0:k1]).view(
                batch, kv_heads, group, q1 - q0, dim)
            grad_key[:, :, k0:k1] += torch.matmul(grad_scores.transpose(-1, -2), block)
        grad_query = grad_query.mul_(ctx.scale).view(batch, heads, length, dim)
        return grad_query, grad_key.to(key.dtype), grad_value.to(value.dtype), None, None


def probs_bytes(ranges: list[tuple[int, int, int, int]], rows: int, element_size: int) -> int:
    """Bytes of the block probabilities of one call: `rows` (batch x heads) x each block's queries x keys."""
    return rows * element_size * sum((q1 - q0) * (k1 - k0) for q0, q1, k0, k1 in ranges)


def _mask_parts(keep: torch.Tensor, key, make):
    """What `make()` builds from the mask `keep`, built once per mask tensor and kept on it.

    transformers builds one mask per forward pass and hands the same tensor to every layer, and each
    layer's backward gets it back from its saved tensors: the key ranges and the blocks' biases are
    built by the first layer's forward and reused by the others' and by every backward (the cache
    goes with the mask tensor, and is rebuilt if the mask is changed in place)."""
    cache = getattr(keep, "_sftlab_attention_parts", None)
    if cache is None or cache[0] != keep._version:
        cache = (keep._version, {})
        keep._sftlab_attention_parts = cache
    parts = cache[1]
    if key not in parts:
        parts[key] = make()
    return parts[key]


def _block_mask(keep: torch.Tensor, span: tuple[int, int, int, int], dtype: torch.dtype):
    """The [B, 1, 1, queries, keys] bias of one block (0, or the dtype's minimum where masked) and whether
    any of its queries sees nothing (then the [B, 1, 1, queries, 1] rows that see nothing, else None)."""
    q0, q1, k0, k1 = span
    visible = keep[:, :, None, q0:q1, k0:k1]
    # masked scores pushed to the dtype's minimum (as masked_fill would leave them, after rounding): adding a
    # [B, 1, 1, queries, keys] bias broadcast over the heads ran 14x faster than masked_fill_ with that mask
    bias = torch.zeros(visible.shape, dtype=dtype, device=keep.device).masked_fill_(~visible, torch.finfo(dtype).min)
    empty = ~visible.any(dim=-1, keepdim=True)  # queries with nothing to attend (left padding): 0, as in sdpa
    return bias, (empty if empty.any() else None)


def _block_probs(block, key, keep, group: int, span: tuple[int, int, int, int]) -> torch.Tensor:
    """softmax of one query block's scores against keys k0:k1, masked by `keep`; 0 for a query seeing nothing."""
    q0, q1, k0, k1 = span
    batch, kv_heads = block.shape[:2]
    scores = torch.matmul(block, key[:, :, k0:k1].transpose(-1, -2))
    bias, empty = _mask_parts(keep, (span, scores.dtype), lambda: _block_mask(keep, span, scores.dtype))
    scores.view(batch, kv_heads, group, q1 - q0, k1 - k0).add_(bias)
    probs = torch.softmax(scores, dim=-1)
    if empty is not None:
        probs.view(batch, kv_heads, group, q1 - q0, k1 - k0).masked_fill_(empty, 0.0)
    return probs


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
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):  # rotary embeddings leave q, k in fp32
        dtype = torch.get_autocast_dtype("cpu")
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if not _covered(query, key, value, attention_mask, dropout, kwargs) or (attention_mask is None and not causal):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    keep = attention_mask
    if keep is None:  # causal without padding: transformers leaves the mask to the kernel
        length = query.shape[2]
        keep = torch.ones(1, 1, length, length, dtype=torch.bool, device=query.device).tril_()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.autocast("cpu", enabled=False):  # operands are in the compute dtype; keep the softmax there too
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


def resolve_attention(requested: str) -> str:
    """`model.attn_implementation` as loaded: `auto` is matmul (until `settle_attention` says otherwise)."""
    return NAME if requested == AUTO else requested


def attention_to_load(requested: str) -> str:
    """The `attn_implementation` to pass to `from_pretrained` for `model.attn_implementation` (registered).

    `auto` loads matmul; `settle_attention` then puts a model that does not dispatch through
    transformers' attention interface back on transformers' default."""
    name = resolve_attention(requested)
    register_attention(name)
    return name


def settle_attention(model, requested: str) -> None:
    """After loading with `attention_to_load(requested)`: with `auto`, a model class without
    `_supports_attention_backend` (its attention modules never call a registered function) is switched
    to sdpa, or eager where it has no sdpa."""
    if requested == AUTO and not getattr(type(model), "_supports_attention_backend", False):
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError):
            model.set_attn_implementation("eager")


def attention_line(model, requested: str) -> str:
    """The run log's line naming the attention implementation in use."""
    used = getattr(model.config, "_attn_implementation", None) or "default"
    note = " (model.attn_implementation: auto)" if requested == AUTO else ""
    where = "; on the CPU with gradients, sdpa elsewhere" if used == NAME else ""
    return f"attention: {used}{note}{where}"
