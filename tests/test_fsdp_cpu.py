"""train.distributed=fsdp on CPU: two gloo processes (torchrun) with FSDP2 against one process with twice the batch.

Covers the loss curve, gradient norms (clipping) and evaluation, the sharded optimizer checkpoint and an exact
resume, the consolidated model/ and best/ (ordinary safetensors), LoRA and freeze with gradient checkpointing,
and the presets still refused on CPU. The two-process tests are slow (20-60 s each on two shared cores).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sftlab.models.tiny import save_tiny
from test_distributed_gloo import REPO, ROWS, _cli, _env, _interrupt_then_resume, _rows
from test_train_loop import tiny_run, train


def _raw(tmp_path: Path, name: str, batch_size: int, **groups) -> dict:
    """A 2-layer tiny llama run (two FSDP layer groups besides the root); batch_size is per process."""
    model_dir = tmp_path / "base-llama-causal_lm"
    if not model_dir.exists():
        save_tiny("llama", model_dir, task="causal_lm", hidden=32, layers=2)
    train_cfg = {"batch_size": batch_size, "grad_accum": 2, "max_steps": 4, "max_grad_norm": 0.5, **groups.pop("train", {})}
    raw = tiny_run(tmp_path, rows=ROWS, name=name, train=train_cfg, data={"validation": str(tmp_path / "train.jsonl")},
                   eval={"every_n_steps": 2, "batch_size": 3 * batch_size // 2},
                   output={"dir": str(tmp_path / name), "tensorboard": False, "keep_checkpoints": 4})
    for group, values in groups.items():
        raw.setdefault(group, {}).update(values)
    return raw


def _fsdp_config(tmp_path: Path, name: str, **groups) -> Path:
    raw = _raw(tmp_path, name, 2, **groups)
    raw["train"].update(distributed="fsdp", save_every_n_steps=1)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _steps(run_dir: Path, key: str) -> list:
    return [row[key] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if not row.get("eval")]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """An uninterrupted 2-process fsdp run (batch 2 each) and the 1-process run with batch 4 it must equal."""
    tmp_path = tmp_path_factory.mktemp("fsdp")
    done = _cli(str(_fsdp_config(tmp_path, "two")), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(_raw(tmp_path, "one", 4))
    return tmp_path, single


@pytest.mark.slow
def test_fsdp_two_processes_batch_b_equal_one_process_batch_2b(fsdp_run):
    tmp_path, single = fsdp_run
    two = tmp_path / "two"
    losses, evals = _rows(two)
    assert len(losses) == 4 and losses == pytest.approx(single.losses, rel=1e-5)
    assert evals == pytest.approx(_rows(single.out_dir)[1], rel=1e-5)  # gathered over both ranks
    assert _steps(two, "supervised_tokens") == _steps(single.out_dir, "supervised_tokens")
    norms = _steps(two, "grad_norm")  # the norm before clipping, over both ranks' shards
    assert norms == pytest.approx(_steps(single.out_dir, "grad_norm"), rel=1e-5) and min(norms) > 0.5
    step = two / "checkpoints" / "step-4"
    assert not (step / "optimizer.pt").exists()
    shards = sorted(p.name for p in (step / "optimizer").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its optimizer shard
    assert len(torch.load(step / "rng_state_ranks.pt", weights_only=True)) == 2


@pytest.mark.slow
def test_fsdp_model_dir_is_consolidated_and_holds_the_trained_weights(fsdp_run):
    from transformers import AutoModelForCausalLM

    tmp_path, single = fsdp_run
    initial = load_file(tmp_path / "base-llama-causal_lm" / "model.safetensors")
    expected = load_file(single.out_dir / "model" / "model.safetensors")
    for folder in ("model", "best"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / folder)
        weights = model.state_dict()
        assert sorted(weights) == sorted(expected)
        assert not all(torch.equal(weights[key], initial[key]) for key in initial)  # trained
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6)
        assert not any(type(p).__name__ == "DTensor" for p in model.parameters())


@pytest.mark.slow
def test_fsdp_resume_with_two_processes_continues_exactly(fsdp_run):
    tmp_path, _ = fsdp_run
    config = _fsdp_config(tmp_path, "resumed")
    resumed = _interrupt_then_resume(tmp_path, config)
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert _rows(tmp_path / "resumed") == (pytest.approx(_rows(tmp_path / "two")[0], rel=1e-6),
                                           pytest.approx(_rows(tmp_path / "two")[1], rel=1e-6))
    torch.testing.assert_close(load_file(tmp_path / "resumed" / "model" / "model.safetensors"),
                               load_file(tmp_path / "two" / "model" / "model.safetensors"), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, extra, weights", [
    ({"kind": "lora"}, {}, "adapter_model.safetensors"),
    ({"kind": "freeze", "freeze": {"layers": "none", "modules": ["*.self_attn.*", "lm_head"]}},
     {"gradient_checkpointing": True}, "model.safetensors")])
def test_fsdp_trains_lora_and_frozen_sets_like_one_process(tmp_path, strategy, extra, weights):
    config = _fsdp_config(tmp_path, "two", strategy=strategy, train=extra)
    done = _cli(str(config), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(_raw(tmp_path, "one", 4, strategy=strategy, train=extra))
    assert _rows(tmp_path / "two")[0] == pytest.approx(single.losses, rel=1e-5)
    ours, expected = load_file(tmp_path / "two" / "model" / weights), load_file(single.out_dir / "model" / weights)
    assert sorted(ours) == sorted(expected)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", ["zero2", "zero3"])
def test_deepspeed_presets_are_still_refused_on_cpu_by_the_cli(tmp_path, preset):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    raw = _raw(tmp_path, "zero", 2)
    raw["train"]["distributed"] = preset
    config = tmp_path / "zero.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "sftlab", "train", str(config), "--nproc", "2", "--no-progress"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert (f"train.distributed={preset} (DeepSpeed ZeRO) needs CUDA GPUs; this machine has none. "
            "On CPU use train.distributed=ddp") in done.stderr
    assert not (tmp_path / "zero").exists()  # refused before any process trained
