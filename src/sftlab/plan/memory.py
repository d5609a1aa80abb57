"""Peak training memory, estimated from the model's shape, the trainable set and the batch.

    shape = ModelShape.from_model(model)
    depth = backprop_depth(model, trainable.names)
    est = estimate_memory(shape, trainable.total, trainable.trainable, depth, Workload(batch=8, seq=512))
    est.weights, est.gradients, est.optimizer, est.activations, est.total      # bytes

The peak of a training step is modelled from four parts:

- weights: every parameter, in the parameter dtype (`model.dtype`); with a 4-bit base (QLoRA,
  `strategy.lora.quantize_4bit`) the 4-bit weights at `nf4_bytes` each and the rest in float32 (peft's
  `prepare_model_for_kbit_training` casts them), plus one 4-bit weight dequantised to float32 at a time
  (bitsandbytes dequantises each weight for its matmul, in forward and in backward), counted with the activations;
- gradients: one value per *trainable* parameter, in the parameter dtype;
- optimizer: AdamW's two moment buffers per trainable parameter (`OPTIMIZER_STATES`), in the parameter
  dtype for fp32 parameters; bf16/fp16 parameters get fp32 moments and an fp32 master copy
  (`sftlab.train.optim.MasterWeightAdamW`);
- activations: what autograd keeps for the backward pass, for the blocks the backward pass runs
  through (`depth`: from the first block holding a trainable parameter to the top; all blocks when
  embeddings train, none when only the head trains), plus the output head's logits.

Weights and optimizer states live through the whole step. Activations peak when backward starts,
before most gradients exist; gradients peak at the optimizer step, after the activations are freed (the fused
AdamW step that `sftlab.train.optim.build_optimizer` runs on CPU and CUDA updates in place, with no temporary of
the gradients' size). So

    peak = weights + optimizer + max(activations, gradients)

Per block and per token, autograd keeps `HIDDEN_SAVED` tensors of the hidden width and
`INTERMEDIATE_SAVED` tensors of the MLP width (inputs of the norms and projections, q/k/v, the
attention output, the gated MLP's branches) and, during backward, their gradients; with fused layers
(`model.fused_layers`, `sftlab.models.fused`) RMSNorms and gated MLPs keep fewer (`FUSED_*_SAVED_LESS`). With eager
attention, or with attention dropout in training (sdpa then materialises the scores too), it also
keeps `ATTENTION_SAVED` copies of the [heads x T x T] score matrix (sdpa without dropout keeps none).
sftlab's matmul attention keeps its query blocks' probabilities (about the causal half of that matrix,
`matmul_attention_kept_bytes`) while one layer's take at most `sftlab.models.attention.KEEP_PROBS_BYTES`,
and otherwise recomputes them in backward; either way its backward holds one layer's worth of temporaries,
`MATMUL_ATTENTION_REBUILT` copies, added once, not per block.
Each dropout applied in training keeps its output and a one-byte mask (`DROPOUT_SAVED` copies in
units of the activation size): on the attention scores (attention dropout) and on the two residual
branches of every block (hidden dropout, as in gpt2 and bert). With gradient checkpointing only each
block's input is kept, and one block's activations are rebuilt at a time; with selective checkpointing
each block keeps the outputs of its matmuls and attention (`SELECTIVE_*_SAVED` tensors per token) and
one block's element-wise work is rebuilt at a time. The head's logits
(`LOGIT_COPIES` copies: logits, their softmax and its gradient) cover the supervised positions, one
chunk at a time: the fused head loss's (`head_chunk_rows`: about 64 MiB, at least 256 rows; W2's
262k-token head in fp32 256 rows), in the matmul dtype, plus a trainable head's fp32 weight gradient, or
`sftlab.train.loss.HEAD_CHUNK` positions in float32 for other heads (the loss recomputes chunks). The constants were calibrated against the
measured peaks of the tiny llama / qwen2 / gemma3 / gpt2 test models on CPU (`sftlab plan --check`,
resident memory under jemalloc, which `sftlab train` runs on by default and whose resident memory stays
near the live heap) and are per-tensor counts, so they scale with the widths and depth of models of the
same families. Under glibc's malloc resident peaks run higher (docs/planner.md).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

HIDDEN_SAVED = 18.0
INTERMEDIATE_SAVED = 4.0
ATTENTION_SAVED = 3.0
MATMUL_ATTENTION_REBUILT = 1.0  # matmul attention: its backward holds about one layer's probabilities (a block's and their gradients)
DROPOUT_SAVED = 1.25
LOGIT_COPIES = 3.0  # the fused head loss holds 1 chunk (without soft-capping): on Gemma 3 270M 256 MiB too many in bf16,
# 512 in fp32, which stand in for jemalloc's slack in the resident peaks --check measures (docs/planner.md, 2026-12-07)
SELECTIVE_HIDDEN_SAVED = 8.0  # train.gradient_checkpointing: selective (block input, q/k/v/o, attention, down)
SELECTIVE_INTERMEDIATE_SAVED = 2.0  # (the gate and up projections)
FUSED_NORMS_SAVED_LESS = 2.0  # model.fused_layers: each of a block's two RMSNorms keeps its input only
FUSED_MLP_SAVED_LESS = 1.0  # ... the gated MLP not act(gate)
FUSED_DOWN_SAVED_LESS = 1.0  # ... nor act(gate) * up when its down projection is folded in (not LoRA-wrapped)
OPTIMIZER_STATES = 2
# bf16/fp16 autocast over 4-byte weights: the residual stream, the norms' inputs and the element-wise outputs a block
# keeps stay float32 while its matmul outputs are 16-bit (bytes per kept value, on average), and every matmul weight
# the forward uses is cast to 16 bits, a copy that lives while the block activations do (`autocast_weight_copies`).
# Checkpointed blocks keep their input, that float32 stream (`Workload.residual_bytes`): measured on Gemma 3 270M
# (8 x 256 tokens) with checkpointing true / selective, the estimates were -15.5% / -15.0% (full) and -0.6% / -0.2%
# (last 4 blocks) of the --check peaks with the inputs at 2 bytes, full's as without checkpointing (-15.2%): jemalloc's
# slack, not these terms; 4 bytes adds 45 / 10 MiB (docs/planner.md).
AUTOCAST_FP32_ACTIVATION_BYTES = 3.0
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK = 64  # values per absmax constant (bitsandbytes' 4-bit blocksize)
NF4_NESTED_BLOCK = 256  # absmax constants per float32 scale of the double quantisation
NF4_TABLES = (16 + 256 + 1) * 4  # per weight: the NF4 code, the 8-bit map of the absmax constants, their offset


def nf4_bytes(values: int) -> int:
    """Bytes of one weight of `values` values in bitsandbytes' NF4 with double quantisation: 4-bit codes two to a
    byte, one 8-bit absmax constant per 64 values, one float32 scale per 256 constants, and the float32 tables."""
    blocks = -(-values // NF4_BLOCK)
    return -(-values // 2) + blocks + 4 * -(-blocks // NF4_NESTED_BLOCK) + NF4_TABLES


@dataclass
class ModelShape:
    """The sizes that drive activation memory: blocks, widths, heads, vocabulary."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    classifier: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    fused_norms: bool = False  # model.fused_layers: the RMSNorms keep only their input
    fused_mlp: bool = False  # ... and the gated MLPs act(gate) * up only for their down projection
    fused_mlp_down: bool = False  # ... or nothing more, when that projection is folded in (not LoRA-wrapped)
    fused_head: bool = False  # a bias-free linear head: sftlab.train.loss.FusedHeadLoss, chunks of head_chunk_rows
    head_softcap: bool = False  # final logit soft-capping: the fused loss's chunks are half as many rows
    head_trainable: bool = False  # the fused loss then holds the head's weight gradient through backward

    @classmethod
    def from_model(cls, model) -> "ModelShape":
        """Read the shape from a (possibly peft-wrapped) transformers model's config."""
        config = model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        hidden = _first_int(config, ("hidden_size", "n_embd", "d_model"), 0)
        from sftlab.models.fused import fused_counts, fused_down_projections

        fused = fused_counts(model)
        return cls(layers=_first_int(config, ("num_hidden_layers", "n_layer", "num_layers"), 0),
                   hidden=hidden,
                   intermediate=_first_int(config, ("intermediate_size", "n_inner", "ffn_dim"), 0) or 4 * hidden,
                   heads=_first_int(config, ("num_attention_heads", "n_head"), 1),
                   vocab=_first_int(config, ("vocab_size",), 0),
                   classifier=type(model).__name__.endswith("ForSequenceClassification"),
                   attention_dropout=_first_float(config, ("attn_pdrop", "attention_probs_dropout_prob",
                                                           "attention_dropout")),
                   hidden_dropout=_first_float(config, ("resid_pdrop", "hidden_dropout_prob", "hidden_dropout")),
                   fused_norms=fused["rmsnorm"] > 0, fused_mlp=fused["gated_mlp"] > 0,
                   fused_mlp_down=fused_down_projections(model) > 0, **_head_flags(model, config))


def _head_flags(model, config) -> dict[str, bool]:
    """Whether the causal LM's output head runs through the fused head loss, soft-capped, and trainable."""
    from sftlab.train.loss import _fusable

    get_head = getattr(_unwrap(model), "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return {}
    return {"fused_head": _fusable(head), "head_softcap": bool(getattr(config, "final_logit_softcapping", None)),
            "head_trainable": any(p.requires_grad for p in head.parameters())}


def _first_int(config, names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return default


def _first_float(config, names: tuple[str, ...]) -> float:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


@dataclass
class Workload:
    """One micro-batch as the estimate sees it: rows x tokens, supervised positions, dtypes, options."""

    batch: int
    seq: int
    supervised: int | None = None  # supervised positions in the micro-batch (default: all but one per row)
    param_dtype: str = "float32"
    precision: str = "fp32"
    checkpointing: bool | str = False  # True (full), "selective" or False, as train.gradient_checkpointing
    attention: str = "sdpa"  # model.attn_implementation: sdpa, eager or matmul (the planner counts auto as matmul)

    @property
    def param_bytes(self) -> int:
        return _DTYPE_BYTES[self.param_dtype]

    @property
    def activation_bytes(self) -> int:
        return 2 if self.precision in ("bf16", "fp16") else self.param_bytes  # autocast's 16-bit activations

    @property
    def autocast_over_fp32(self) -> bool:
        """16-bit autocast over 4-byte weights (`train.precision` bf16/fp16 with `model.dtype` float32)."""
        return self.precision in ("bf16", "fp16") and self.param_bytes == 4

    @property
    def residual_bytes(self) -> int:
        """Bytes per value of a block's input, the residual stream: float32 under autocast over 4-byte weights (a
        block adds its 16-bit matmul outputs to a float32 stream), else the activation dtype's."""
        return self.param_bytes if self.autocast_over_fp32 else self.activation_bytes

    @property
    def block_activation_bytes(self) -> float:
        """Bytes per value a block keeps for backward (`AUTOCAST_FP32_ACTIVATION_BYTES` under autocast over fp32)."""
        return AUTOCAST_FP32_ACTIVATION_BYTES if self.autocast_over_fp32 else self.activation_bytes


@dataclass
class MemoryEstimate:
    """Estimated bytes by part; `total` is the peak: weights + optimizer + max(activations, gradients)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + max(self.activations, self.gradients)

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def backprop_depth(model, trainable_names: list[str]) -> int:
    """How many transformer blocks the backward pass goes through for these trainable names.

    Blocks below the lowest trainable one run without autograd. Trainable parameters outside the
    blocks count as below them (embeddings: every block) unless they belong to the output side
    (head, final norm, classifier, score), which needs no block at all.
    """
    from sftlab.errors import SftlabError
    from sftlab.strategy.structure import find_layer_list

    try:
        prefix, blocks = find_layer_list(_unwrap(model))
    except SftlabError:
        return ModelShape.from_model(model).layers
    pattern = re.compile(rf"(?:^|\.){re.escape(prefix)}\.(\d+)\.")
    lowest = len(blocks)
    for name in trainable_names:
        match = pattern.search(name)
        if match:
            lowest = min(lowest, int(match.group(1)))
        elif _below_blocks(name, prefix):
            return len(blocks)
    return len(blocks) - lowest


_OUTPUT_SIDE = ("lm_head", "score", "classifier", "pooler", "norm", "ln_f", "final_layer_norm", "head")


def _below_blocks(name: str, prefix: str) -> bool:
    """True for parameters that sit before the blocks (embeddings), False for the output side."""
    stripped = re.sub(r"^base_model\.model\.", "", name)
    parts = [part for part in stripped.split(".") if part not in ("weight", "bias")]
    if not parts:
        return False
    module = parts[-1] if parts[-1] not in ("default", "modules_to_save", "original_module") else parts[0]
    return not any(module == side or module.endswith(side) for side in _OUTPUT_SIDE)


def _unwrap(model):
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def block_activation_elements(shape: ModelShape, work: Workload) -> float:
    """Elements autograd keeps (with their backward gradients) for one block of one micro-batch."""
    tokens = work.batch * work.seq
    per_token = ((HIDDEN_SAVED - FUSED_NORMS_SAVED_LESS * shape.fused_norms) * shape.hidden
                 + (INTERMEDIATE_SAVED - FUSED_MLP_SAVED_LESS * shape.fused_mlp
                    - FUSED_DOWN_SAVED_LESS * shape.fused_mlp_down) * shape.intermediate)
    if shape.hidden_dropout > 0:
        per_token += 2 * DROPOUT_SAVED * shape.hidden
    copies = ATTENTION_SAVED if work.attention == "eager" or shape.attention_dropout > 0 else 0.0
    if shape.attention_dropout > 0:
        copies += DROPOUT_SAVED
    return tokens * per_token + copies * work.batch * shape.heads * work.seq * work.seq


def matmul_attention_kept_bytes(shape: ModelShape, work: Workload) -> int:
    """Probabilities one block's matmul attention keeps for backward: its query blocks' share of the
    [heads x T x T] matrix under a causal mask, or 0 where that exceeds `KEEP_PROBS_BYTES` (recomputed)."""
    from sftlab.models.attention import KEEP_PROBS_BYTES, QUERY_BLOCK

    if work.attention != "matmul" or shape.attention_dropout:
        return 0
    blocks = -(-work.seq // QUERY_BLOCK)
    kept = work.batch * shape.heads * work.seq ** 2 * (blocks + 1) / (2 * blocks) * work.activation_bytes
    return int(kept) if kept <= KEEP_PROBS_BYTES else 0


def head_activation_bytes(shape: ModelShape, work: Workload) -> int:
    """The output head's logits (and their softmax / gradient) over the supervised positions, chunked as the loss does.

    The fused head loss (`shape.fused_head`) works on one chunk of `head_chunk_rows` rows at a time in the
    matmul dtype (half as many rows under soft-capping) and, for a trainable head, holds its fp32 weight
    gradient and one chunk's product of the weight's size through backward; the other path keeps float32
    logits, `HEAD_CHUNK` positions at a time."""
    from sftlab.train.loss import HEAD_CHUNK, head_chunk_rows

    if shape.classifier:  # a few logits per row
        return 0
    positions = work.supervised if work.supervised is not None else work.batch * max(work.seq - 1, 1)
    if not shape.fused_head:
        return int(LOGIT_COPIES * min(positions, HEAD_CHUNK) * shape.vocab * 4)
    rows = head_chunk_rows(shape.vocab, work.activation_bytes)
    rows = max(1, rows // 2) if shape.head_softcap else rows
    kept = LOGIT_COPIES * min(positions, rows) * shape.vocab * work.activation_bytes
    if shape.head_trainable:
        kept += shape.vocab * shape.hidden * (4 + work.activation_bytes)
    return int(kept)


def autocast_weight_copies(shape: ModelShape, depth: int, work: Workload) -> int:
    """Under 16-bit autocast over 4-byte weights, the 16-bit copies of the matmul weights the forward casts and the
    backward needs: each of the `depth` blocks' projections (q, k, v, o at the hidden width, the MLP's three) and
    the output head; 0 otherwise."""
    if not work.autocast_over_fp32:
        return 0
    block = 4 * shape.hidden * shape.hidden + 3 * shape.hidden * shape.intermediate
    head = 0 if shape.classifier else shape.vocab * shape.hidden
    return 2 * (depth * block + head)


def estimate_memory(shape: ModelShape, total_params: int, trainable_params: int, depth: int,
                    work: Workload, four_bit: list[int] | None = None) -> MemoryEstimate:
    """The four-part peak estimate for one optimizer step (see the module docstring); `four_bit`: the sizes (values)
    of the weights held in 4-bit (QLoRA), whose dequantised copy, one at a time, counts with the activations."""
    four_bit = four_bit or []
    weights = (total_params - sum(four_bit)) * work.param_bytes + sum(nf4_bytes(values) for values in four_bit)
    gradients = trainable_params * work.param_bytes
    # fp32 parameters: the moments in their dtype; bf16/fp16 ones: fp32 moments and the fp32 master copy
    optimizer = trainable_params * (OPTIMIZER_STATES * 4 if work.param_bytes == 4 else (OPTIMIZER_STATES + 1) * 4)
    block = (block_activation_elements(shape, work) * work.block_activation_bytes
             + matmul_attention_kept_bytes(shape, work))
    tokens = work.batch * work.seq
    if work.checkpointing == "selective" and depth:  # matmul/attention outputs kept; one block rebuilt at a time
        kept = tokens * ((SELECTIVE_HIDDEN_SAVED - 1) * shape.hidden + SELECTIVE_INTERMEDIATE_SAVED
                         * shape.intermediate) * work.activation_bytes + tokens * shape.hidden * work.residual_bytes
        activations = depth * kept + block
    elif work.checkpointing and depth:
        saved_inputs = depth * tokens * shape.hidden * work.residual_bytes
        activations = saved_inputs + block
    else:
        activations = depth * block
    if work.attention == "matmul" and depth and not shape.attention_dropout:  # one layer's probabilities, rebuilt
        activations += MATMUL_ATTENTION_REBUILT * work.batch * shape.heads * work.seq ** 2 * work.activation_bytes
    dequantized = 4 * max(four_bit, default=0)
    activations += head_activation_bytes(shape, work) + dequantized + autocast_weight_copies(shape, depth, work)
    return MemoryEstimate(weights=int(weights), gradients=int(gradients), optimizer=optimizer,
                          activations=int(activations))
