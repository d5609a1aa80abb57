"""Strategy settings where they meet: LoRA's modules_to_save in the parameter total (trainable.json and the log line),
and the near-miss hints of freeze globs and LoRA targets across model families and letter case."""

from __future__ import annotations

import json

import pytest

from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tiny_model, make_tokenizer
from sftlab.strategy.report import write_trainable_report
from sftlab.strategy.select import select_trainable


def tiny(arch, task="causal_lm"):
    template = {"llama": "llama3", "bert": "none"}.get(arch, "chatml")
    return make_tiny_model(arch, make_tokenizer(template), task=task, num_labels=3)


@pytest.mark.parametrize("arch, task, saved", [("qwen2", "causal_lm", ["lm_head"]), ("gpt2", "causal_lm", ["lm_head"]),
                                               ("llama", "cls", []), ("bert", "cls", [])])
def test_modules_to_save_counts_the_model_once_in_the_total(arch, task, saved, tmp_path):
    """peft keeps the module and its trained copy; the total counted both (a classifier's head always)."""
    targets = ["c_attn"] if arch == "gpt2" else ["query"] if arch == "bert" else ["q_proj"]
    plain, without = select_trainable(tiny(arch, task), {"kind": "lora", "lora": {"target_modules": targets}})
    model, with_saved = select_trainable(tiny(arch, task), {"kind": "lora", "lora": {"target_modules": targets,
                                                                                     "modules_to_save": saved}})
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    own = sum(p.numel() for p in tiny(arch, task).parameters())
    assert with_saved.total == own + lora
    if not saved:  # a classifier's head is in modules_to_save either way
        assert without.total == with_saved.total
    copies = sum(p.numel() for n, p in model.named_parameters() if ".modules_to_save." in n)
    assert with_saved.copies == copies > 0
    assert with_saved.trainable == lora + copies
    write_trainable_report(with_saved, tmp_path)
    report = json.loads((tmp_path / "trainable.json").read_text())
    assert (report["trainable"], report["total"]) == (with_saved.trainable, own + lora)
    assert with_saved.summary().startswith(f"trainable {lora + copies:,} / {own + lora:,} (")


@pytest.mark.parametrize("arch, kind, target, hint", [
    ("llama", "lora", "Q_PROJ", "; did you mean 'q_proj'? (module names are case-sensitive)"),
    ("llama", "lora", "self_attn.Q_PROJ", "; did you mean 'self_attn.q_proj'? (module names are case-sensitive)"),
    ("llama", "lora", "*.Self_Attn.*", "; module names are case-sensitive, and only ignoring case does it match "
                                       "model.layers.0.self_attn.q_proj"),
    ("gpt2", "lora", "Q_PROJ", "; this model has no q_proj: the linear modules in its attention are c_attn, c_proj"),
    ("gpt2", "lora", "gate_proj", "; this model has no gate_proj: the linear modules in its MLP are c_proj, c_fc"),
    ("gpt2", "lora", "c_atn", "; did you mean 'c_attn'?"),
    ("gpt2", "freeze", "Q_PROJ", "; this model has no q_proj: its attention modules are named attn, c_attn ("),
    ("llama", "freeze", "ln_f", "; this model has no ln_f: its norm modules are named input_layernorm, "
                                "post_attention_layernorm, norm ("),
    ("qwen2", "freeze", "q_projj", "; did you mean 'q_proj'? ("),
])
def test_a_near_miss_is_answered_by_case_then_family_then_spelling(arch, kind, target, hint):
    """`Q_PROJ` on GPT-2 suggested c_proj (one letter away, but an output projection); on llama a LoRA target in
    the wrong case listed the modules without saying q_proj is there."""
    settings = {"target_modules": [target]} if kind == "lora" else {"modules": [target]}
    with pytest.raises(SftlabError) as error:
        select_trainable(tiny(arch), {"kind": kind, kind: settings})
    message = str(error.value)
    assert hint in message and "\n" not in message
    assert "c_proj'?" not in message


def test_freeze_globs_ignore_case_as_documented():
    _, trainable = select_trainable(tiny("llama"), {"kind": "freeze", "freeze": {"modules": ["Q_PROJ"]}})
    assert trainable.names and all(name.endswith("q_proj.weight") for name in trainable.names)
