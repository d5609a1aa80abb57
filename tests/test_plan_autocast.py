"""The planner under 16-bit autocast over float32 weights with gradient checkpointing (`sftlab.plan.memory`).

A checkpointed block keeps its input, the residual stream, which autocast leaves in float32 (each block adds its
16-bit matmul outputs to it); the estimate counted it at 2 bytes until 2026-12-07. Measured on Gemma 3 270M
(docs/planner.md) the difference is small (45 MiB for 18 blocks of 8 x 256 tokens), and the checkpointing terms
were within 1% of the measured peak for the last 4 blocks.
"""

import pytest
import torch

from sftlab.models.fused import fuse_layers
from sftlab.models.tiny import make_tiny_model
from sftlab.plan.memory import ModelShape, Workload, autocast_weight_copies, block_activation_elements, estimate_memory

SHAPE = ModelShape(layers=4, hidden=64, intermediate=256, heads=4, vocab=1000, fused_head=True)


@pytest.mark.parametrize("arch", ["gemma3", "llama", "qwen2"])
def test_a_blocks_input_is_float32_under_bf16_autocast_over_float32_weights(arch):
    """What the estimate's `residual_bytes` stands for: the input each decoder block gets (and checkpointing keeps)."""
    model = make_tiny_model(arch, hidden=32, layers=2)
    fuse_layers(model)  # as training runs them (model.fused_layers)
    seen = []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
            (args[0] if args else kwargs["hidden_states"]).dtype), with_kwargs=True)
    with torch.autocast("cpu", torch.bfloat16):
        model(input_ids=torch.randint(0, 100, (2, 12)))
    assert seen == [torch.float32, torch.float32]


@pytest.mark.parametrize("mode", [True, "selective"])
def test_checkpointed_block_inputs_count_4_bytes_under_autocast_over_float32(mode):
    tokens, depth = 2 * 32, 3
    autocast = Workload(batch=2, seq=32, precision="bf16", checkpointing=mode)
    bf16_weights = Workload(batch=2, seq=32, precision="bf16", param_dtype="bfloat16", checkpointing=mode)
    assert autocast.residual_bytes == 4 and bf16_weights.residual_bytes == 2
    assert Workload(batch=2, seq=32).residual_bytes == 4  # fp32: as before, the activation dtype's
    with_autocast = estimate_memory(SHAPE, 500_000, 500_000, depth, autocast).activations
    plain_bf16 = estimate_memory(SHAPE, 500_000, 500_000, depth, bf16_weights).activations
    rebuilt_block = block_activation_elements(SHAPE, autocast) * (3 - 2)  # the one block rebuilt: 3 bytes, not 2
    inputs = depth * tokens * SHAPE.hidden * (4 - 2)  # the kept block inputs: float32, not bf16
    extra = rebuilt_block + inputs + autocast_weight_copies(SHAPE, depth, autocast)
    assert abs(with_autocast - plain_bf16 - extra) <= 1  # int() rounding
