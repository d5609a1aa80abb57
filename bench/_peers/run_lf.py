"""Run LLaMA-Factory 0.9.5 SFT for the benchmark (in bench/.venv-lf): `python run_lf.py SPEC.json`.

LLaMA-Factory tokenises the alpaca records itself (`spec["lf_dataset_dir"]`, dataset `bench_train`)
with its own chat template (`spec["lf_template"]`: qwen for W1, the text-only gemma template for W2),
so its token counts are its own; packing is its fastest setting, `packing: true` + `neat_packing: true`
(packed rows whose samples cannot attend to each other). LLaMA-Factory turns gradient checkpointing on
by default; the `lf-neat-nogc` setting turns it off (`disable_gradient_checkpointing`). A trainer
callback times the training loop and scores the common eval loss on the final weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import common

sys.path.insert(0, str(Path(__file__).resolve().parent / "stub_torchaudio"))


def lf_arguments(spec: dict) -> dict:
    """LLaMA-Factory's training arguments for the spec."""
    args = {
        "model_name_or_path": spec["model"], "stage": "sft", "do_train": True, "finetuning_type": "full",
        "dataset": "bench_train", "dataset_dir": spec["lf_dataset_dir"], "template": spec["lf_template"],
        "cutoff_len": spec["max_length"], "output_dir": str(Path(spec["work"]) / f"lf-{spec['name']}"),
        "overwrite_output_dir": True, "per_device_train_batch_size": spec["batch_size"],
        "gradient_accumulation_steps": 1, "learning_rate": spec["lr"], "weight_decay": 0.0, "warmup_steps": 0,
        "lr_scheduler_type": "linear", "num_train_epochs": 1.0, "seed": spec["seed"], "data_seed": spec["seed"],
        "bf16": spec["precision"] == "bf16", "use_cpu": True, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "plot_loss": False, "disable_tqdm": True, "packing": spec["packing"],
        "neat_packing": spec["packing"],
        "disable_gradient_checkpointing": bool(spec.get("lf_disable_gradient_checkpointing")),
    }
    if spec.get("trainable_last_layers"):
        args.update({"finetuning_type": "freeze", "freeze_trainable_layers": spec["trainable_last_layers"],
                     "freeze_trainable_modules": "all", "freeze_extra_modules": "norm"})
    return args


def make_callback(spec: dict, clock: common.Clock, found: dict):
    """A TrainerCallback that counts the packed tokens, times training and scores the final weights."""
    from transformers import AutoTokenizer, TrainerCallback

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            rows = train_dataloader.dataset
            masks = rows["attention_mask"] if "attention_mask" in rows.column_names else None
            found["tokens"] = (sum(sum(1 for m in mask if m) for mask in masks) if masks is not None
                               else sum(len(ids) for ids in rows["input_ids"]))
            found["supervised"] = sum(sum(1 for t in labels[1:] if t != common.IGNORE_INDEX) for labels in rows["labels"])
            clock.start()

        def on_train_end(self, args, state, control, model=None, **kwargs):
            clock.stop()
            found["peak"] = common.peak_rss_bytes()
            found["steps"] = state.global_step
            found["train_loss"] = [e["loss"] for e in state.log_history if "loss" in e][-1]
            pad_id = AutoTokenizer.from_pretrained(spec["model"]).pad_token_id
            found["eval_loss"] = common.eval_loss(model, common.read_jsonl(spec["eval_tokens"]), pad_id)

    return Probe()


def main() -> None:
    from llamafactory.train.tuner import run_exp

    spec = common.read_spec()
    clock, found = common.Clock(), {}
    run_exp(args=lf_arguments(spec), callbacks=[make_callback(spec, clock, found)])
    common.write_result(spec, "llamafactory", clock, found["tokens"], found["supervised"], found["train_loss"],
                        found["eval_loss"], found["steps"], found["peak"])


if __name__ == "__main__":
    main()
