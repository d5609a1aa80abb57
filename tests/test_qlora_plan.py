"""QLoRA in the planner: NF4 byte counts equal bitsandbytes' storage, the plan's rows and advice for 4-bit bases."""

from __future__ import annotations

import pytest
import torch

from test_qlora import QLORA, load_four_bit


@pytest.mark.parametrize("arch, hidden", [("llama", 64), ("qwen2", 40), ("gemma3", 64), ("gpt2", 64)])
def test_nf4_bytes_equal_the_4bit_storage_and_the_rule_finds_the_4bit_weights(tmp_path, arch, hidden):
    """The planner's per-weight NF4 size is exactly what bitsandbytes stores (codes, absmax, code tables, offset),
    and transformers' rule applied to a meta-device model names exactly the weights that were quantised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlab.models.nf4 import quantizable_weights, quantized_weights, storage_bytes
    from sftlab.models.tiny import save_tiny
    from sftlab.plan.memory import nf4_bytes

    base = save_tiny(arch, tmp_path / arch, hidden=hidden)  # qwen2 at 40 wide: 800-value k/v weights, 12.5 blocks
    model = load_four_bit(base)
    quantized = quantized_weights(model)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    assert quantizable_weights(meta) == quantized and len(quantized) == 2 * (4 if arch == "gpt2" else 7)
    assert sum(nf4_bytes(values) for values in quantized.values()) == storage_bytes(model)
    kept = [name for name, p in model.named_parameters() if type(p).__name__ != "Params4bit"]
    assert any("embed" in name or "wte" in name for name in kept)  # embeddings, norms and the head stay
    head = model.get_output_embeddings()
    assert type(head.weight).__name__ != "Params4bit"


def _qlora_plan_config(tmp_path, dtype: str = "float32", quantize: bool = True):
    from test_plan import tiny_config

    raw = tiny_config(tmp_path, arch="qwen2", hidden=64, layers=2)
    raw["model"]["dtype"] = dtype
    raw["strategy"] = {"kind": "lora", "lora": {"rank": 4, "quantize_4bit": quantize}}
    return raw


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_plan_counts_the_qlora_weights_the_training_model_holds(tmp_path, monkeypatch, dtype):
    """The lora row of a QLoRA config: its weights estimate equals the bytes of the model sftlab trains (4-bit
    storage + every other parameter, float32 after peft's cast), on the real and on the meta-device path."""
    import sftlab.plan.planner as planner
    from sftlab.config import load_config
    from sftlab.data.pipeline import prepare_data
    from sftlab.models.load import load_tokenizer
    from sftlab.models.nf4 import storage_bytes
    from sftlab.plan.recommend import load_thresholds
    from sftlab.plan.table import render_plan
    from sftlab.train.setup import _load_model, make_collate

    cfg = load_config(None, [], base=_qlora_plan_config(tmp_path, dtype))
    plan = planner.build_plan(cfg, None, load_thresholds(), ("full", "lora"))
    row = plan["rows"]["lora"]
    tokenizer = load_tokenizer(cfg.model)
    model, trainable = _load_model(cfg, tokenizer, prepare_data(cfg, tokenizer, None), make_collate(cfg, tokenizer))
    others = sum(p.numel() * p.element_size() for p in model.parameters() if type(p).__name__ != "Params4bit")
    assert row["estimate"]["weights"] == storage_bytes(model) + others
    assert row["total"] == trainable.total == plan["rows"]["full"]["total"] + trainable.trainable
    assert "lora (4-bit)" in render_plan(plan) and "qlora" not in row
    monkeypatch.setattr(planner, "REAL_COUNT_MAX_BYTES", 0)
    meta = planner.build_plan(cfg, None, load_thresholds(), ("full", "lora"))
    assert meta["rows"]["lora"]["estimate"] == row["estimate"]


def test_qlora_is_recommended_when_nothing_fits_but_lora_on_a_4bit_base_would():
    from sftlab.plan.recommend import load_thresholds, recommend

    thresholds = load_thresholds()
    rows = {kind: {"trainable": count, "fits": False, "estimate": {"total": 10 * count}}
            for kind, count in {"full": 1000, "freeze": 300, "lora": 50}.items()}
    rows["lora"]["qlora"] = {"fits": True, "estimate": {"total": 200}}
    advice = recommend(rows, 5000, 1000, thresholds)
    assert advice["kind"] == "lora" and advice["settings"] == {"strategy.lora.quantize_4bit": True}
    assert "strategy.lora.quantize_4bit=true" in advice["reasons"][-1] and "200 B instead of 500 B" in advice["reasons"][-1]
    rows["lora"]["qlora"]["fits"] = False  # not even then: the smallest peak, with the advice to shrink the batch
    nothing = recommend(rows, 5000, 1000, thresholds)
    assert nothing["kind"] == "lora" and "settings" not in nothing and "no strategy fits" in nothing["reasons"][-1]
    rows["lora"]["qlora"]["fits"] = True
    rows["freeze"]["fits"] = True  # a strategy that fits as configured comes first
    fitting = recommend(rows, 5000, 1000, thresholds)
    assert fitting["kind"] == "freeze" and "settings" not in fitting


def test_the_plan_recommends_qlora_when_only_it_fits(tmp_path, monkeypatch):
    """A plain LoRA config's lora row carries the 4-bit what-if, equal to the row of the same config with
    quantize_4bit; with memory for that and no more, the plan recommends lora with strategy.lora.quantize_4bit."""
    import sftlab.plan.planner as planner
    from sftlab.config import load_config
    from sftlab.plan.recommend import load_thresholds
    from sftlab.plan.table import render_plan

    thresholds = load_thresholds()
    plain = load_config(None, [], base=_qlora_plan_config(tmp_path, quantize=False))
    plan = planner.build_plan(plain, None, thresholds, ("full", "lora"))
    four_bit = planner.build_plan(load_config(None, [], base=_qlora_plan_config(tmp_path)), None, thresholds,
                                  ("full", "lora"))
    what_if = plan["rows"]["lora"]["qlora"]["estimate"]
    assert what_if == four_bit["rows"]["lora"]["estimate"]
    assert what_if["total"] < plan["rows"]["lora"]["estimate"]["total"]
    room = (what_if["total"] + plan["rows"]["lora"]["estimate"]["total"]) / 2 / thresholds["memory_headroom"]
    monkeypatch.setattr(planner, "available_memory", lambda: {"device": "cpu", "bytes": room})
    tight = planner.build_plan(plain, None, thresholds, ("full", "lora"))
    assert not tight["rows"]["lora"]["fits"] and tight["rows"]["lora"]["qlora"]["fits"]
    assert tight["recommendation"]["settings"] == {"strategy.lora.quantize_4bit": True}
    assert "recommendation: lora with strategy.lora.quantize_4bit=true" in render_plan(tight)


@pytest.mark.slow  # a probe process per architecture (about 15 s each on 2 cores)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_check_estimate_of_qlora_within_25_percent_of_measured_peak(tmp_path, arch):
    """As tests/test_plan.py's check, for the QLoRA row (docs/planner.md has the errors measured)."""
    from sftlab.config import load_config
    from sftlab.jemalloc import find_jemalloc
    from sftlab.plan.planner import build_plan
    from sftlab.plan.recommend import load_thresholds
    from test_plan import tiny_config

    if find_jemalloc() is None:
        pytest.skip("no jemalloc library (apt install libjemalloc2): the estimates are calibrated on it")
    raw = tiny_config(tmp_path, arch=arch)
    raw["strategy"] = QLORA
    plan = build_plan(load_config(None, [], base=raw), None, load_thresholds(), ("lora",), probe_steps=2, check=True)
    row = plan["rows"]["lora"]
    assert row["probe"]["allocator"] == "jemalloc" and row["probe"]["trainable"] == row["trainable"]
    assert abs(row["probe"]["estimate_error"]) <= 0.25, (row["estimate"], row["probe"])


def test_the_estimate_counts_4bit_weights_at_nf4_size_and_one_dequantised_copy():
    from sftlab.plan.memory import ModelShape, Workload, estimate_memory, nf4_bytes

    assert nf4_bytes(4096 * 4096) == 8_388_608 + 262_144 + 4 * 1024 + 1092  # about 4.13 bits a value
    assert nf4_bytes(800) == 400 + 13 + 4 + 1092  # 12.5 blocks: 13 constants, one float32 scale
    shape = ModelShape(layers=2, hidden=64, intermediate=128, heads=4, vocab=600)
    work = Workload(batch=2, seq=32)
    plain = estimate_memory(shape, 100_000, 1_000, 2, work)
    four_bit = estimate_memory(shape, 100_000, 1_000, 2, work, [8192, 4096, 4096])
    assert four_bit.weights == (100_000 - 16_384) * 4 + nf4_bytes(8192) + 2 * nf4_bytes(4096)
    assert four_bit.activations == plain.activations + 4 * 8192
    assert (four_bit.gradients, four_bit.optimizer) == (plain.gradients, plain.optimizer)
