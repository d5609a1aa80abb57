"""`sftlab compare` keeps each strategy's train.log as clean as `sftlab train`'s log (found comparing lora and freeze
on Gemma 3 270M): its training process did not drop the library messages `sftlab train` drops, so a LoRA run's
train.log began with transformers' `is_gradient_checkpointing` FutureWarning (peft's code triggers it) and, on CPUs
with AVX-512 BF16, bitsandbytes' failed hub-kernel fetch."""

from __future__ import annotations

import json

import yaml

from sftlab.cli import main
from sftlab.models.tiny import save_tiny


def test_compare_train_log_has_no_library_noise(tmp_path, capsys):
    save_tiny("llama", tmp_path / "base", hidden=32, layers=1)
    rows = [{"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a " * (2 + i)}]}
            for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(tmp_path / "base")},
        "data": {"train": "train.jsonl", "val_ratio": 0.25, "cache_dir": "cache"},
        "train": {"stage": "sft", "batch_size": 4, "max_length": 32, "allocator": "system"},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}), encoding="utf-8")
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--strategies", "lora", "--budget", "1steps", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    log = (out / "lora" / "train.log").read_text(encoding="utf-8")
    assert "trainable " in log and "[lora]" in log  # the run's own lines are there
    assert "FutureWarning" not in log and "is_gradient_checkpointing" not in log, log
    assert "kernels-community" not in log, log
