"""Smoke checks of the benchmark's own pieces (workload builders, FLOP count, table, ratio line); no timing."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH / "_peers"))
sys.path.insert(0, str(BENCH))

bench = importlib.import_module("sft_vs_peers")
workloads = importlib.import_module("workloads")
matmul_peak = importlib.import_module("matmul_peak")

RECORDS = [{"instruction": f"Say {w}.", "input": "twice" if i % 2 else "", "output": f"{w} {w}."}
           for i, w in enumerate(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])]


def result(setting, precision, tokens, seconds, rss, eval_loss):
    runner, tool, _, _ = bench.SETTINGS[setting]
    return {"setting": setting, "tool": tool, "precision": precision, "tokens": tokens, "supervised_tokens": tokens // 2,
            "train_seconds": seconds, "peak_rss_bytes": rss, "train_loss": 1.0, "eval_loss": eval_loss,
            "optimizer_steps": 3}


def test_split_keeps_train_and_eval_apart():
    train, held_out = workloads.split_records(RECORDS, 4, 2)
    assert train == RECORDS[:4] and held_out == RECORDS[4:]
    with pytest.raises(ValueError, match="needs 5 \\+ 2"):
        workloads.split_records(RECORDS, 5, 2)


def test_tokenizer_has_chatml_specials_and_template():
    tokenizer = workloads.train_tokenizer(RECORDS, vocab_size=300)
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") != tokenizer.unk_token_id


def test_training_flops_counts_head_on_supervised_tokens_only():
    config = {"hidden_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "intermediate_size": 8, "vocab_size": 10}
    per_layer = 4 * 2 * (2 * 2 + 2 * 1) + 3 * 4 * 8  # q,o (2 heads) + k,v (1 kv head) + 3 MLP matrices
    full = matmul_peak.training_flops(config, tokens=100, supervised=10)
    assert full == 6 * 2 * per_layer * 100 + 6 * 40 * 10
    partial = matmul_peak.training_flops(config, tokens=100, supervised=10, trainable_last_layers=1)
    assert partial == (2 * 2 + 4 * 1) * per_layer * 100 + 4 * 40 * 10


def test_table_and_ratio_compare_with_the_fastest_peer():
    results = [result("sftlab-packed", "bf16", 3000, 1.0, 2 * 2**30, 5.05),
               result("trl-packed", "bf16", 1000, 1.0, 4 * 2**30, 5.0),
               result("lf-neat", "bf16", 1500, 1.0, 4 * 2**30, 5.0),
               {"setting": "trl-default", "tool": "TRL SFTTrainer", "precision": "fp32", "error": "boom"}]
    table = bench.format_table(results)
    assert table.count("\n") == 5 and "| LLaMA-Factory | neat_packing (its default gradient checkpointing) | bf16 | 3 | 1500 | 750 | 4.00 GiB |" in table
    assert "failed: boom" in table
    assert bench.ratio_line(results) == "tokens_per_s_ratio=2.00 peak_rss_ratio=0.50 eval_loss_delta=+0.0100"
    assert bench.ratio_line(results[:1]).endswith("eval_loss_delta=nan")
    config = {"hidden_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "intermediate_size": 8, "vocab_size": 10}
    flops = matmul_peak.training_flops(config, 1500, 750)  # the LLaMA-Factory row's tokens in its 1 s
    bench.add_mfu(results, {"bf16": flops / 0.4 / 1e9, "fp32": 1.0}, config, None)
    assert results[2]["mfu"] == pytest.approx(0.4) and "mfu" in results[0] and "mfu" not in results[3]
    assert bench.ceiling_line(results) == ("fastest peer's MFU: 40.0% (lf-neat, bf16); a tool running every useful "
                                           "matmul at the measured peak would be at most 2.50x as fast")


def test_stub_torchaudio_raises_on_use(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH / "_peers" / "stub_torchaudio"))
    monkeypatch.delitem(sys.modules, "torchaudio", raising=False)
    stub = importlib.import_module("torchaudio")
    assert stub.__version__.endswith("bench-stub")
    with pytest.raises(ImportError, match="stand-in"):
        stub.load  # noqa: B018
    monkeypatch.delitem(sys.modules, "torchaudio")


def test_sftlab_runner_config_follows_the_spec(tmp_path):
    run_sftlab = importlib.import_module("run_sftlab")
    spec = {"model": str(tmp_path / "model"), "train_json": str(tmp_path / "train.json"), "work": str(tmp_path),
            "name": "w2", "precision": "fp32", "packing": True, "batch_size": 8, "lr": 1e-4, "max_length": 256,
            "seed": 0, "trainable_last_layers": 4, "truncation": "left", "sftlab_checkpointing": "selective"}
    cfg = run_sftlab.build_config(spec)
    assert cfg.data.truncation == "left" and cfg.train.gradient_checkpointing == "selective"
    assert cfg.strategy.kind == "freeze" and cfg.strategy.freeze.layers == "last:4" and cfg.model.dtype == "float32"
    w1 = run_sftlab.build_config({**spec, "trainable_last_layers": None, "precision": "bf16", "truncation": "drop",
                                  "sftlab_checkpointing": False})
    assert w1.data.truncation == "drop" and w1.strategy.kind == "full" and w1.model.dtype == "bfloat16"
    assert not w1.data.group_by_length
    grouped = run_sftlab.build_config({**spec, "packing": False, "sftlab_group_by_length": True})
    assert grouped.data.group_by_length and not grouped.data.packing
    assert w1.model.attn_implementation == "auto"  # sftlab's default
    assert run_sftlab.build_config({**spec, "sftlab_attention": "sdpa"}).model.attn_implementation == "sdpa"
    assert workloads.TRUNCATION == {"w1": "drop", "w2": "left"}


def test_default_precisions_skip_emulated_bf16():
    assert bench.native_bf16("flags : fpu avx2 amx_bf16 amx_tile") and bench.native_bf16("flags : avx512_bf16")
    assert not bench.native_bf16("flags : fpu sse avx2 fma")
    assert bench.default_precisions(quick=True, bf16_native=True) == "bf16"
    assert bench.default_precisions(quick=False, bf16_native=True) == "fp32,bf16"
    assert bench.default_precisions(quick=True, bf16_native=False) == "fp32"
    assert bench.default_precisions(quick=False, bf16_native=False) == "fp32"


def test_sftlab_runner_trains_a_tiny_workload_end_to_end(tmp_path):
    """The runner's imports and its result file: a refactor of sftlab's training modules once broke the benchmark's
    sftlab rows (an ImportError), which only a real run of the runner shows."""
    import json
    import math

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    records = [{**r, "output": f"{r['output']} {i}"} for i in range(8) for r in RECORDS]  # 48 distinct records
    data = tmp_path / "records.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    tokenizer = workloads.train_tokenizer(records, vocab_size=300)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "work" / "model")
    tokenizer.save_pretrained(tmp_path / "work" / "model")
    spec = workloads.build("w1", data, tmp_path / "work", quick=True, log=lambda *_: None)
    result = bench.run_setting("sftlab-packed", "fp32", {**spec, "sftlab_allocator": "system"}, timeout=300,
                               log=lambda *_: None)
    assert "error" not in result, result.get("error")
    assert result["optimizer_steps"] >= 1 and result["tokens"] > 0 and result["train_seconds"] > 0
    assert math.isfinite(result["eval_loss"]) and result["peak_rss_bytes"] > 0
