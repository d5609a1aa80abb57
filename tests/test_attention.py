"""model.attn_implementation: matmul (sftlab.models.attention): same loss and gradients as sdpa, its fallbacks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sftlab.models import attention
from sftlab.models.attention import MatmulAttention, register_attention
from sftlab.models.tiny import save_tiny


@pytest.fixture()
def kernel_calls(monkeypatch) -> list:
    """One entry per MatmulAttention call made while the test runs."""
    calls = []
    original = MatmulAttention.apply
    monkeypatch.setattr(MatmulAttention, "apply", lambda *args: calls.append(1) or original(*args))
    return calls


def packed_keep(lengths_per_row: list[list[int]], width: int) -> torch.Tensor:
    """Block-diagonal causal bool mask [B, 1, T, T] for rows made of samples of the given lengths."""
    segments = torch.full((len(lengths_per_row), width), -1)
    for row, lengths in enumerate(lengths_per_row):
        start = 0
        for index, length in enumerate(lengths):
            segments[row, start:start + length] = index
            start += length
    same = segments[:, None, :, None] == segments[:, None, None, :]
    return same & torch.ones(width, width, dtype=torch.bool).tril()


def attention_and_grads(kind: str, q, k, v, keep, grad):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    if kind == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)
    else:
        out = MatmulAttention.apply(q, k, v, keep, q.shape[-1] ** -0.5)
    out.backward(grad)
    return [out, q.grad, k.grad, v.grad]


def test_key_ranges_skip_keys_no_query_of_a_block_may_see():
    causal = torch.ones(1, 1, 24, 24, dtype=torch.bool).tril()
    assert attention.key_ranges(causal, 8) == [(0, 8, 0, 8), (8, 16, 0, 16), (16, 24, 0, 24)]
    packed = packed_keep([[5, 9, 10]], 24)  # samples at 0-4, 5-13, 14-23
    assert attention.key_ranges(packed, 8) == [(0, 8, 0, 8), (8, 16, 5, 16), (16, 24, 14, 24)]
    two_rows = packed_keep([[5, 9, 10], [12, 12]], 24)  # the second row's sample at 12-23 widens the last block
    assert attention.key_ranges(two_rows, 8)[2] == (16, 24, 12, 24)
    nothing = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    assert attention.key_ranges(nothing, 8) == [(0, 4, 0, 0)]


@pytest.mark.parametrize("keep_probs_bytes", [0, attention.KEEP_PROBS_BYTES])  # recomputed / kept for backward
@pytest.mark.parametrize("block", [128, 8, 5])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_matches_sdpa_on_packed_grouped_query_heads(dtype, tolerance, block, keep_probs_bytes, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_BLOCK", block)
    monkeypatch.setattr(attention, "KEEP_PROBS_BYTES", keep_probs_bytes)
    torch.manual_seed(0)
    keep = packed_keep([[5, 9, 10], [24], [3, 3, 3, 15]], 24)
    q = torch.randn(3, 8, 24, 16)
    k, v = torch.randn(3, 2, 24, 16), torch.randn(3, 2, 24, 16)
    grad = torch.randn(3, 8, 24, 16)
    reference = attention_and_grads("sdpa", q.double(), k.double(), v.double(), keep, grad.double())
    got = attention_and_grads("matmul", q.to(dtype), k.to(dtype), v.to(dtype), keep, grad.to(dtype))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, reference):
        assert a.dtype == dtype
        relative = ((a.double() - b).norm() / b.norm()).item()
        assert relative < tolerance, (name, relative)


def _kept_by_one_call(q, k, v, keep) -> int:
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.untyped_storage().nbytes()) or t, lambda t: t):
        MatmulAttention.apply(q, k, v, keep, 0.25)
    return sum(kept)


def test_backward_keeps_the_block_probabilities_up_to_the_limit_then_only_the_queries(monkeypatch):
    """Per call autograd keeps q (in blocks), k, v and the mask, plus each block's probabilities while they
    take at most KEEP_PROBS_BYTES; above that, nothing of the [heads x T x T] probabilities."""
    torch.manual_seed(0)
    q = torch.randn(2, 8, 256, 16, requires_grad=True)
    k, v = torch.randn(2, 2, 256, 16, requires_grad=True), torch.randn(2, 2, 256, 16, requires_grad=True)
    keep = torch.ones(1, 1, 256, 256, dtype=torch.bool).tril()
    inputs = sum(x.numel() * x.element_size() for x in (q, k, v, keep))
    blocks = attention.key_ranges(keep, attention.QUERY_BLOCK)  # 2 blocks: keys 0-128, then 0-256
    probs = attention.probs_bytes(blocks, 2 * 8, 4)
    assert probs == 2 * 8 * 128 * (128 + 256) * 4
    monkeypatch.setattr(attention, "KEEP_PROBS_BYTES", probs)
    assert _kept_by_one_call(q, k, v, keep) == inputs + probs
    monkeypatch.setattr(attention, "KEEP_PROBS_BYTES", probs - 1)
    assert _kept_by_one_call(q, k, v, keep) == inputs < probs / 4


@pytest.mark.parametrize("block", [128, 2, 3])
def test_a_query_with_nothing_to_attend_gets_zero_output_and_no_gradient(block, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_BLOCK", block)
    torch.manual_seed(0)
    keep = packed_keep([[6]], 6)
    keep[0, 0, :2] = False  # two left-padding queries (with block 2, a block with nothing to attend)
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    out, dq, _, _ = attention_and_grads("matmul", q, k, v, keep, torch.ones(1, 2, 6, 4))
    assert torch.equal(out[0, :, :2], torch.zeros(2, 2, 4)) and torch.equal(dq[0, :, :2], torch.zeros(2, 2, 4))
    assert torch.isfinite(out).all()


def model_loss_and_grads(model_dir, attn: str, batch: dict, classifier: bool = False, **config):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    register_attention(attn)
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, attn_implementation=attn, dtype=torch.float32, **config)
    model.train()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
@pytest.mark.parametrize("layout", ["packed", "left-padded"])
def test_tiny_models_train_as_with_sdpa(tmp_path, arch, layout, monkeypatch, kernel_calls):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 6)  # several blocks on 20 tokens
    model_dir = save_tiny(arch, tmp_path / arch)
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (2, 20))
    if layout == "packed":  # position_ids restarting at 0 make transformers build a block-diagonal mask
        positions = torch.tensor([list(range(7)) + list(range(13)), list(range(20))])
        batch = {"input_ids": ids, "position_ids": positions, "labels": ids}
    else:
        mask = torch.ones(2, 20, dtype=torch.long)
        mask[1, :4] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    loss_sdpa, grads_sdpa = model_loss_and_grads(model_dir, "sdpa", batch)
    assert not kernel_calls
    loss_matmul, grads_matmul = model_loss_and_grads(model_dir, "matmul", batch)
    assert kernel_calls, "the matmul kernel must have run"
    assert torch.allclose(loss_matmul, loss_sdpa, rtol=1e-5)
    assert grads_matmul.keys() == grads_sdpa.keys()
    for name, grad in grads_sdpa.items():
        assert torch.allclose(grads_matmul[name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_auto_defaults_beyond_decoders_train_as_with_sdpa(tmp_path, arch, monkeypatch, kernel_calls):
    """`auto` gives matmul to every model with the attention interface: a padded bidirectional encoder
    (classifier) and gpt2 (learned positions, biased projections) get sdpa's loss and gradients. Dropout
    is off so that the runs can be compared (with attention dropout matmul hands the call to sdpa)."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 6)
    classifier = arch == "bert"
    model_dir = save_tiny(arch, tmp_path / arch, task="cls" if classifier else "causal_lm")
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 13:] = 0  # right padding
    labels = torch.tensor([0, 1]) if classifier else ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    no_dropout = ({"attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0} if classifier else
                  {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0})
    loss_sdpa, grads_sdpa = model_loss_and_grads(model_dir, "sdpa", batch, classifier, **no_dropout)
    assert not kernel_calls
    loss_matmul, grads_matmul = model_loss_and_grads(model_dir, "matmul", batch, classifier, **no_dropout)
    assert kernel_calls, "the matmul kernel must have run"
    assert torch.allclose(loss_matmul, loss_sdpa, rtol=1e-5)
    assert grads_matmul.keys() == grads_sdpa.keys()
    for name, grad in grads_sdpa.items():
        assert torch.allclose(grads_matmul[name], grad, rtol=1e-4, atol=1e-6), name


def test_calls_it_does_not_cover_run_sdpa(tmp_path, monkeypatch, kernel_calls):
    from transformers import AutoModelForCausalLM

    register_attention("matmul")
    model = AutoModelForCausalLM.from_pretrained(save_tiny("qwen2", tmp_path / "m"), attn_implementation="matmul")
    ids = torch.randint(3, 100, (2, 12))
    calls = kernel_calls
    with torch.no_grad():  # inference keeps no probabilities: sdpa
        model(input_ids=ids)
    assert not calls
    monkeypatch.setattr(attention, "MAX_PROBS_BYTES", 2 * 4 * 12 * 12 * 4 - 1)  # one byte short of [2, 4, 12, 12] fp32
    model(input_ids=ids).logits.sum().backward()
    assert not calls
    monkeypatch.setattr(attention, "MAX_PROBS_BYTES", 2 * 4 * 12 * 12 * 4)
    model(input_ids=ids).logits.sum().backward()
    assert calls


def test_config_loads_it_and_saved_models_do_not_need_it(tmp_path):
    from transformers import AutoModelForCausalLM

    from sftlab.config.schema import ModelConfig
    from sftlab.models.load import load_model

    model_dir = save_tiny("llama", tmp_path / "m")
    model = load_model(ModelConfig(path=str(model_dir), attn_implementation="matmul"), "sft")
    assert model.config._attn_implementation == "matmul"
    model.save_pretrained(tmp_path / "saved")
    assert "matmul" not in json.dumps(json.loads((tmp_path / "saved" / "config.json").read_text()))
    AutoModelForCausalLM.from_pretrained(tmp_path / "saved")  # loads with transformers' default attention


def test_unknown_attention_is_refused_with_the_choices():
    from pydantic import ValidationError

    from sftlab.config.schema import ModelConfig

    with pytest.raises(ValidationError, match="'auto', 'sdpa', 'eager' or 'matmul'"):
        ModelConfig(path="m", attn_implementation="flash")


@pytest.mark.parametrize("arch", ["qwen2", "bert"])
def test_auto_is_the_default_and_loads_matmul_where_the_model_dispatches_through_the_interface(tmp_path, arch):
    from sftlab.config.schema import ModelConfig
    from sftlab.models.attention import attention_line
    from sftlab.models.load import load_model

    task = "cls" if arch == "bert" else "causal_lm"
    model_dir = save_tiny(arch, tmp_path / "m", task=task)
    cfg = ModelConfig(path=str(model_dir))
    assert cfg.attn_implementation == "auto"
    model = load_model(cfg, "cls" if arch == "bert" else "sft", num_labels=2 if arch == "bert" else None)
    assert model.config._attn_implementation == "matmul"
    assert attention_line(model, "auto") == ("attention: matmul (model.attn_implementation: auto); "
                                             "on the CPU with gradients, sdpa elsewhere")


def test_auto_keeps_transformers_default_for_a_model_outside_the_attention_interface(tmp_path, monkeypatch):
    from transformers import Qwen2ForCausalLM

    from sftlab.config.schema import ModelConfig
    from sftlab.models.attention import attention_line
    from sftlab.models.load import load_model

    monkeypatch.setattr(Qwen2ForCausalLM, "_supports_attention_backend", False)
    model_dir = save_tiny("qwen2", tmp_path / "m")
    model = load_model(ModelConfig(path=str(model_dir)), "sft")
    assert model.config._attn_implementation == "sdpa"
    assert attention_line(model, "auto") == "attention: sdpa (model.attn_implementation: auto)"
    explicit = load_model(ModelConfig(path=str(model_dir), attn_implementation="matmul"), "sft")
    assert explicit.config._attn_implementation == "matmul"  # asked for by name: kept


def run_losses(tmp_path, name: str, base: dict, attention_kind: str, overrides: list[str]) -> list[float]:
    from sftlab.config import load_config
    from sftlab.train import run_training

    raw = {**base, "model": {**base["model"], "attn_implementation": attention_kind}}
    cfg = load_config(None, [f"output.dir={tmp_path / f'{name}-{attention_kind}'}", *overrides], base=raw)
    return run_training(cfg, show_progress=False).losses


CLS_ROWS = [{"text": f"{'good fine' if i % 3 else 'bad awful'} item {i} " + "x " * (i % 7), "label": "pos" if i % 3 else "neg"}
            for i in range(12)]


@pytest.mark.parametrize("name, arch, overrides", [
    ("lora-selective", "llama", ["strategy.kind=lora", "train.gradient_checkpointing=selective"]),
    ("freeze-checkpointed", "gemma3", ["strategy.kind=freeze", "strategy.freeze.layers=last:1",
                                       "train.gradient_checkpointing=true"]),
    ("packed-bf16", "qwen2", ["data.packing=true", "train.precision=bf16"]),
    ("cls-decoder", "qwen2", ["train.stage=cls"]),
    ("cls-encoder", "bert", ["train.stage=cls"]),  # attention dropout 0.1: every call goes to sdpa
])
def test_training_runs_give_sdpa_losses(tmp_path, monkeypatch, kernel_calls, name, arch, overrides):
    """Through the loop with strategies, checkpointing, packing, bf16 (autocast over fp32 weights) and classifiers:
    the same losses as sdpa."""
    from test_plan import tiny_config

    monkeypatch.setattr(attention, "QUERY_BLOCK", 16)
    base = tiny_config(tmp_path, arch=arch, hidden=32, max_steps=3)
    if "train.stage=cls" in overrides:
        model_dir = save_tiny(arch, tmp_path / f"{arch}-cls", task="cls", hidden=32, layers=2)
        data = tmp_path / "cls.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in CLS_ROWS), encoding="utf-8")
        base = {**base, "model": {"path": str(model_dir)},
                "data": {"train": str(data), "format": "label", "cache_dir": str(tmp_path / "cls-cache")}}
    calls = kernel_calls
    matmul = run_losses(tmp_path, name, base, "matmul", overrides)
    assert bool(calls) == (arch != "bert"), "the matmul kernel runs unless dropout hands the calls to sdpa"
    sdpa = run_losses(tmp_path, name, base, "sdpa", overrides)
    tolerance = 2e-2 if "train.precision=bf16" in overrides else 1e-4
    assert len(matmul) == len(sdpa) == 3 and all(abs(a - b) <= tolerance * abs(b) for a, b in zip(matmul, sdpa)), \
        (matmul, sdpa)


def test_masks_are_built_once_per_forward_and_reused_by_every_layer_and_backward(tmp_path, monkeypatch):
    """The key ranges and block biases come from the mask tensor transformers hands to every layer: one
    build per block for a whole forward + backward of a 2-layer model, not one per layer and pass."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(attention, "QUERY_BLOCK", 6)
    built = []
    real = attention._block_mask
    monkeypatch.setattr(attention, "_block_mask", lambda *args: built.append(args[1]) or real(*args))
    register_attention("matmul")
    model = AutoModelForCausalLM.from_pretrained(save_tiny("qwen2", tmp_path / "m", layers=2), attn_implementation="matmul")
    ids = torch.randint(3, 100, (2, 20))
    positions = torch.tensor([list(range(7)) + list(range(13)), list(range(20))])
    model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss.backward()
    assert len(built) == len(set(built)) == 4  # 20 queries in blocks of 6, each block's bias built once
