"""Run TRL's SFTTrainer for the benchmark (in bench/.venv-trl): `python run_trl.py SPEC.json`.

TRL gets the rows sftlab tokenised (`train_tokens`: input_ids, and labels that are -100 except on the
assistant tokens; TRL uses a `labels` column as is), so both train on identical tokens. `packing: false` is TRL's default (padded batches);
`packing: true` is its fastest setting: best-fit-decreasing packing (`packing_strategy="bfd"`) with
`padding_free=True`. Gradient checkpointing is off, as in sftlab; everything else is TRL's default.
"""

from __future__ import annotations

from pathlib import Path

import common


def make_trainer(spec: dict, clock: common.Clock):
    """An SFTTrainer on the spec's model and rows, with a callback that times the training loop."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_train_end(self, args, state, control, **kwargs):
            clock.stop()

    rows = common.read_jsonl(spec["train_tokens"])
    data = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    common.freeze_all_but_last(model, spec.get("trainable_last_layers"))
    packed = {"packing": True, "packing_strategy": "bfd", "padding_free": True} if spec["packing"] else {}
    args = SFTConfig(output_dir=str(Path(spec["work"]) / f"trl-{spec['name']}"), per_device_train_batch_size=spec["batch_size"],
                     gradient_accumulation_steps=1, learning_rate=spec["lr"], weight_decay=0.0, warmup_steps=0,
                     lr_scheduler_type="linear", num_train_epochs=1, seed=spec["seed"], data_seed=spec["seed"],
                     max_length=spec["max_length"], bf16=spec["precision"] == "bf16", fp16=False, use_cpu=True,
                     gradient_checkpointing=False, logging_steps=1, save_strategy="no",
                     report_to="none", disable_tqdm=True, **packed)
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Timer()])


def main() -> None:
    spec = common.read_spec()
    clock = common.Clock()
    trainer = make_trainer(spec, clock)
    rows = trainer.train_dataset
    tokens = sum(len(ids) for ids in rows["input_ids"])
    supervised = sum(sum(1 for t in labels[1:] if t != common.IGNORE_INDEX) for labels in rows["labels"])
    trainer.train()
    peak = common.peak_rss_bytes()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    value = common.eval_loss(trainer.model, common.read_jsonl(spec["eval_tokens"]), trainer.processing_class.pad_token_id)
    common.write_result(spec, "trl", clock, tokens, supervised, losses[-1], value, trainer.state.global_step, peak)


if __name__ == "__main__":
    main()
