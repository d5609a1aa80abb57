"""This machine's matrix-multiply peak in fp32 and bf16, and model FLOPs utilisation (MFU) against it.

    python bench/matmul_peak.py                 # prints GFLOP/s for fp32 and bf16 (square matmuls, best of N)
    peak = measure_peak("bf16")                 # GFLOP/s, from the bench in the same run

The peak is the best sustained rate of `torch.matmul` over a few square sizes (1024-2048), each timed
over several repeats after a warm-up, with torch's current thread count; on CPUs with AMX, bf16
matmuls use the AMX tiles through oneDNN. MFU = model FLOPs per second / peak, with the
model FLOPs of `training_flops` (6 x matrix parameters per token for full fine-tuning, the output head
counted on supervised tokens only).
"""

from __future__ import annotations

import argparse
import time

SIZES = (1024, 1536, 2048)


def _rate(size: int, dtype, repeats: int) -> float:
    """GFLOP/s of `size` x `size` matmuls in `dtype`, best of `repeats` timed calls after one warm-up."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def measure_peak(precision: str, repeats: int = 5, sizes: tuple[int, ...] = SIZES) -> float:
    """Best matmul GFLOP/s over `sizes` for precision 'fp32' or 'bf16'."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    return max(_rate(size, dtype, repeats) for size in sizes)


def training_flops(model_config: dict, tokens: int, supervised: int, trainable_last_layers: int | None = None) -> float:
    """Approximate matmul FLOPs of training on `tokens` tokens of which `supervised` carry a label.

    Forward: 2 x matrix parameters of the decoder layers per token (embedding lookups are free), and
    2 x the head's parameters per *supervised* token only (sftlab never builds the other logits, so
    counting them would flatter its MFU). Backward: trained matrices cost 4 x (input and weight
    gradients); the frozen head still passes input gradients (2 x); frozen layers below the lowest
    trained one cost nothing. Attention scores are left out (a few percent at these lengths), so the
    MFU is a slight underestimate.
    """
    hidden, layers = model_config["hidden_size"], model_config["num_hidden_layers"]
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or hidden // heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * model_config["intermediate_size"]
    head = hidden * model_config["vocab_size"]
    if not trainable_last_layers:
        return 6.0 * layers * per_layer * tokens + 6.0 * head * supervised
    trained = min(trainable_last_layers, layers)
    body = (2.0 * layers + 4.0 * trained) * per_layer * tokens
    return body + 4.0 * head * supervised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for precision in ("fp32", "bf16"):
        print(f"{precision} matmul peak: {measure_peak(precision, args.repeats):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
