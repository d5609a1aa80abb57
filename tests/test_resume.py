"""--resume continues the latest checkpoint exactly; a changed config or a missing checkpoint is refused."""

import json

import pytest

from sftlab.errors import SftlabError
from test_train_loop import tiny_run, train


def _interrupt_at(step_to_stop):
    def callback(step, loss):
        if step == step_to_stop:
            raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize("arch, extra", [
    ("gpt2", {}),  # full fine-tuning; gpt2 has dropout, so the restored RNG state matters
    ("qwen2", {"precision": "bf16", "gradient_checkpointing": True, "lora": True}),  # adapter checkpoints, autocast
    ("llama", {"precision": "bf16", "bf16_weights": True}),  # bf16 weights: the fp32 master copies must be restored
])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, arch, extra):
    from sftlab.train import TrainingInterrupted

    settings = dict(train={"max_steps": 6, "batch_size": 3, "grad_accum": 1, "scheduler": "cosine", "warmup_steps": 2},
                    output={"dir": str(tmp_path / "a"), "keep_checkpoints": 2, "tensorboard": False})
    if extra.pop("lora", False):
        settings["strategy"] = {"kind": "lora", "lora": {"rank": 4, "dropout": 0.1}}
    if extra.pop("bf16_weights", False):
        settings["model"] = {"dtype": "bfloat16"}
    settings["train"].update(extra)
    straight = train(tiny_run(tmp_path, arch, **settings))
    settings["output"]["dir"] = str(tmp_path / "b")
    with pytest.raises(TrainingInterrupted):  # 8 rows / batch 3: step 3 stops mid-epoch 2
        train(tiny_run(tmp_path, arch, **settings), callbacks=[_interrupt_at(4)])
    resumed = train(tiny_run(tmp_path, arch, **settings), resume=True)
    assert len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    if "strategy" in settings:  # the final adapter loads with peft on top of its base model
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base-qwen2-causal_lm")
        assert isinstance(PeftModel.from_pretrained(base, resumed.out_dir / "model"), PeftModel)


def test_resume_with_changed_schedule_names_the_keys(tmp_path):
    from sftlab.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(tiny_run(tmp_path, train={"max_steps": 3}), callbacks=[_interrupt_at(1)])
    with pytest.raises(SftlabError, match=r"differs from the checkpoint's run in train\.lr .*train\.max_steps \(3 -> 5\)"):
        train(tiny_run(tmp_path, train={"max_steps": 5, "lr": 5e-4}), resume=True)
    # how freed memory is kept, and by which malloc, changes no arithmetic: it may differ on resume
    resumed = train(tiny_run(tmp_path, train={"max_steps": 3, "keep_freed_memory": False, "allocator": "system"}),
                    resume=True)
    assert len(resumed.losses) == 3


def test_existing_output_needs_overwrite_or_resume(tmp_path):
    train(tiny_run(tmp_path, train={"max_steps": 1}))
    with pytest.raises(SftlabError, match="already exists and is not empty; pass --overwrite"):
        train(tiny_run(tmp_path, train={"max_steps": 1}))
    with pytest.raises(SftlabError, match="--resume: no checkpoint"):
        train(tiny_run(tmp_path, train={"max_steps": 1}), resume=True)
    again = train(tiny_run(tmp_path, train={"max_steps": 1}), overwrite=True)
    assert (again.out_dir / "model" / "config.json").is_file()


def test_trained_weights_start_a_new_run_through_model_path(tmp_path):
    first = train(tiny_run(tmp_path, train={"max_steps": 2}))
    raw = tiny_run(tmp_path, name="second", train={"max_steps": 1})
    raw["model"]["path"] = str(first.out_dir / "model")
    second = train(raw)
    assert second.losses[0] < first.losses[0]  # it starts from the trained weights, not the random base
    assert (second.out_dir / "model" / "model.safetensors").is_file()
