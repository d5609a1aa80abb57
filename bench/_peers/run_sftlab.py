"""Run one sftlab training for the benchmark (project venv): `python run_sftlab.py SPEC.json`.

Builds the RunConfig from the spec, times `sftlab.train.loop.train` only (data preparation, model loading
and saving are outside the clock, as for the peers), then scores the common eval loss. In bf16 the model's
weights are loaded in bf16 (`model.dtype: bfloat16`, fp32 master weights in AdamW) unless the spec's
`sftlab_weights` says float32 (bf16 autocast over fp32 weights); `sftlab_checkpointing` sets
train.gradient_checkpointing (false, true or selective), `sftlab_group_by_length` data.group_by_length,
`sftlab_attention` model.attn_implementation (default auto, as in sftlab), `sftlab_allocator` train.allocator (default auto).

The allocator is decided as `sftlab train` decides it, by the same function
(`sftlab.jemalloc.reexec_on_jemalloc`): where train.allocator resolves to jemalloc and this process is not
on it yet, the runner re-executes itself with jemalloc preloaded before torch is imported, so the
benchmark measures what users of `sftlab train` get. The log names the allocator the run used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import common


def build_config(spec: dict):
    """The sftlab RunConfig equivalent to the workload spec."""
    from sftlab.config.schema import RunConfig

    strategy = {"kind": "full"}
    if spec.get("trainable_last_layers"):
        strategy = {"kind": "freeze", "freeze": {"layers": f"last:{spec['trainable_last_layers']}",
                                                 "modules": ["model.norm.*"]}}
    work = Path(spec["work"])
    bf16_weights = spec["precision"] == "bf16" and spec.get("sftlab_weights", "bfloat16") == "bfloat16"
    return RunConfig(
        model={"path": spec["model"], "dtype": "bfloat16" if bf16_weights else "float32",
               "attn_implementation": spec.get("sftlab_attention", "auto")},
        data={"train": spec["train_json"], "format": "alpaca", "packing": spec["packing"],
              "truncation": spec.get("truncation", "drop"), "group_by_length": spec.get("sftlab_group_by_length", False),
              "cache_dir": str(work / "sftlab-cache")},
        strategy=strategy,
        train={"stage": "sft", "epochs": 1, "batch_size": spec["batch_size"], "lr": spec["lr"], "weight_decay": 0.0,
               "warmup_steps": 0, "scheduler": "linear", "max_length": spec["max_length"], "seed": spec["seed"],
               "precision": spec["precision"], "log_every_n_steps": 1000,
               "gradient_checkpointing": spec.get("sftlab_checkpointing", False),
               "allocator": spec.get("sftlab_allocator", "auto")},
        output={"dir": str(work / f"sftlab-{spec['name']}"), "tensorboard": False},
    )


def main() -> None:
    from sftlab.jemalloc import allocator_line, reexec_on_jemalloc

    spec = common.read_spec()
    cfg = build_config(spec)
    reexec_on_jemalloc(cfg.train.allocator, [os.path.abspath(sys.argv[0]), *sys.argv[1:]])  # returns if not needed

    from sftlab.models.fused import fused_summary
    from sftlab.train.loop import cleanup, train
    from sftlab.train.runlog import RunLog
    from sftlab.train.rundir import prepare_output_dir
    from sftlab.train.setup import build_session

    print(allocator_line(cfg.train.allocator), file=sys.stderr, flush=True)
    out_dir = Path(cfg.output.dir)
    prepare_output_dir(out_dir, resume=False, overwrite=True)
    setup = common.Clock()
    setup.start()
    session, _ = build_session(cfg, out_dir, None, None)
    setup.stop()
    print(fused_summary(session.model), file=sys.stderr, flush=True)  # with the compiled kernels' line
    print(f"setup (data, model, compiled kernels; outside the clock): {setup.seconds:.1f} s", file=sys.stderr, flush=True)
    rows = session.prepared.train
    tokens = sum(len(ids) for ids in rows["input_ids"])
    supervised = sum(sum(1 for t in labels[1:] if t != common.IGNORE_INDEX) for labels in rows["labels"])
    log = RunLog(out_dir, session.total_steps, 0, tensorboard=False, show_bar=False)
    clock = common.Clock()
    try:
        clock.start()
        train(session, log, [])
        clock.stop()
        peak = common.peak_rss_bytes()
        model = session.accelerator.unwrap_model(session.objective).model
        value = common.eval_loss(model, common.read_jsonl(spec["eval_tokens"]), session.tokenizer.pad_token_id)
    finally:
        log.close()
        cleanup(session)
    common.write_result(spec, "sftlab", clock, tokens, supervised, session.losses[-1], value, session.step, peak)


if __name__ == "__main__":
    main()
