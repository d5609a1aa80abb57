"""Interleaved A/B timing of one W1 training step (forward, backward, AdamW) for speed work on a shared machine.

    OMP_NUM_THREADS=1 python bench/step_ab.py --data ../shared/data/sft_demo/alpaca_en_demo.json autocast bf16-weights
    python bench/step_ab.py --data ... autocast unfused-head compiled --rounds 6

Builds W1 (bench/_peers/workloads.py: the tiny Qwen2 and its tokenised alpaca rows), packs the rows as
sftlab does (`pack_rows`, `[8, 512]` batches), loads the model as sftlab does with its defaults (fp32,
`model.attn_implementation: auto`, `model.fused_layers`) and gives every variant its own copy of the same
initial weights. Each round runs one step of every variant in turn, so a change of machine load hits all of
them; it prints, per variant, the best and median wall time and process CPU time (`time.process_time`,
all threads) after a warm-up step. With a loaded machine prefer 1 thread and CPU time.

The compiled element-wise kernels (`model.compiled_kernels: auto`, on for W1) are prepared once, in bf16 where
any variant is bf16 (other dtypes compile in the warm-up round). Variants in bf16: `autocast` (fp32 weights
under bf16 autocast, the fused head loss), `bf16-weights` (model.dtype bfloat16: bf16 weights, fp32 master
weights in AdamW), `bf16-weights-eager` (the same with the compiled kernels off), `bf16-weights-compiled` (the
same with each decoder layer `torch.compile`d), `bf16-weights-split2` and `-split4` (the same batch of 8 rows
as 2 or 4 micro-batches whose gradients accumulate, each loss divided by the whole batch's supervised tokens, so
the update is the same), `unfused-head` (autocast, the
checkpointed per-chunk head instead of the fused one), `compiled` (autocast, each decoder layer
`torch.compile`d). In fp32 (no autocast): `fp32`, `fp32-selective` (train.gradient_checkpointing:
selective), `fp32-checkpointed` (train.gradient_checkpointing: true), `fp32-compiled`, `fp32-eager` (the
compiled element-wise kernels off).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR / "_peers"))

VARIANTS = ("autocast", "bf16-weights", "bf16-weights-eager", "bf16-weights-compiled", "unfused-head", "compiled",
            "bf16-weights-split2", "bf16-weights-split4", "fp32", "fp32-eager", "fp32-selective", "fp32-checkpointed",
            "fp32-compiled")


def w1_batches(data: Path, work: Path, count: int, log) -> tuple[Path, list[dict]]:
    """W1's model directory and the first `count` packed batches of 8 rows (sftlab's packing, seed 0)."""
    import workloads  # bench/_peers

    from sftlab.data.collate import pack_rows, packed_collate
    from sftlab.data.rows import TokenRows

    spec = workloads.build("w1", data, work, False, None, log)
    rows = [json.loads(line) for line in Path(spec["train_tokens"]).read_text(encoding="utf-8").splitlines()]
    packed = pack_rows(TokenRows.from_dict({key: [row[key] for row in rows] for key in ("input_ids", "labels")}),
                       spec["max_length"], 0)
    return Path(spec["model"]), [packed_collate([packed[i] for i in range(b * 8, b * 8 + 8)], 0) for b in range(count)]


def make_step(variant: str, model):
    """A function running one training step of `variant` on its own `model`."""
    import torch

    import sftlab.train.loss as loss_module
    from sftlab.models import kernels
    from sftlab.train.checkpointing import enable_activation_checkpointing
    from sftlab.train.optim import build_optimizer

    if variant.startswith("bf16-weights"):
        model.to(torch.bfloat16)
    if variant.endswith("compiled"):
        for layer in model.model.layers:
            layer.compile(dynamic=False)
    if variant in ("fp32-selective", "fp32-checkpointed"):
        enable_activation_checkpointing(model, "selective" if variant == "fp32-selective" else True)
    precision = contextlib.nullcontext if variant.startswith("fp32") else partial(torch.autocast, "cpu", torch.bfloat16)
    optimizer = build_optimizer(model, 1e-4, 0.0)

    def step(batch):
        fusable, compiled_on = loss_module._fusable, kernels._state["on"]
        if variant == "unfused-head":
            loss_module._fusable = lambda head: False
        if variant.endswith("-eager"):
            kernels._state["on"] = False
        try:
            parts = int(variant.rsplit("split", 1)[1]) if "-split" in variant else 1
            rows, supervised = len(batch["input_ids"]) // parts, loss_module.count_supervised_tokens(batch["labels"])
            for part in range(parts):
                with precision():
                    total, _ = loss_module.causal_lm_loss_sum(
                        model, {key: value[part * rows:(part + 1) * rows] for key, value in batch.items()})
                (total / supervised).backward()
        finally:
            loss_module._fusable, kernels._state["on"] = fusable, compiled_on
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=VARIANTS)
    parser.add_argument("--data", required=True, help="alpaca_en_demo.json of the shared sft_demo data")
    parser.add_argument("--work", default=str(BENCH_DIR / "results" / "w1"), help="W1 scratch directory")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds after the warm-up round")
    args = parser.parse_args(argv)
    import torch

    from sftlab.config.schema import ModelConfig
    from sftlab.models.fused import fuse_layers
    from sftlab.models.kernels import prepare_kernels
    from sftlab.models.load import load_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    model_dir, batches = w1_batches(Path(args.data), Path(args.work), 3, lambda text: print(text, file=sys.stderr))
    base = load_model(ModelConfig(path=str(model_dir)), "sft")  # sftlab's defaults: attention auto (matmul)
    base.train()
    fuse_layers(base)  # model.fused_layers, on by default
    bf16 = any(not name.startswith("fp32") for name in args.variants)
    print(prepare_kernels(copy.deepcopy(base).to(torch.bfloat16) if bf16 else base, "auto", torch.device("cpu"),
                          partial(torch.autocast, "cpu", torch.bfloat16, enabled=bf16)))  # model.compiled_kernels: auto
    steps = {name: make_step(name, copy.deepcopy(base)) for name in args.variants}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds + 1):
        for name, step in steps.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            step(batches[round_index % len(batches)])
            if round_index:  # round 0 warms up (and compiles)
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_started)
            else:
                print(f"{name}: warm-up step {time.perf_counter() - started:.1f} s", flush=True)
    print(f"threads {torch.get_num_threads()}, {args.rounds} rounds")
    for name in steps:
        print(f"{name:14s} wall best {min(wall[name]):.2f} s median {statistics.median(wall[name]):.2f} s | "
              f"cpu best {min(cpu[name]):.2f} s median {statistics.median(cpu[name]):.2f} s")


if __name__ == "__main__":
    main()
