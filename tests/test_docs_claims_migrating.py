"""docs/migrating.md, "Config names": what the table's notes say of the sftlab keys (their values, defaults and
ranges), the built-in templates writing no default system turn, and data.max_samples counting the whole mixture.
That every name is answered with its key is tests/test_migrate_names.py."""

from __future__ import annotations

import json
import re

import pytest

from sftlab.config import load_config
from sftlab.config.schema import DataConfig
from sftlab.data.sources import load_examples
from sftlab.data.template_spec import builtin_template_names, load_builtin
from sftlab.data.templates import render_conversation
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer

BASE = {"model": {"path": "m"}, "data": {"train": "a.jsonl"}}


def _load(*overrides):
    return load_config(None, list(overrides), base=BASE)


def _refused(override: str) -> str:
    with pytest.raises(SftlabError) as err:
        _load(override)
    return str(err.value)


def test_the_values_the_notes_name_are_the_ones_sftlab_takes():
    cfg = _load()
    assert cfg.strategy.kind == "full" and cfg.data.mask == "assistant"  # "sftlab's default is full"; mask's default
    for override in ("model.attn_implementation=auto", "model.attn_implementation=sdpa",  # flash_attn
                     "model.attn_implementation=eager", "model.attn_implementation=matmul",
                     "train.scheduler=linear", "train.scheduler=cosine", "train.scheduler=constant",  # lr_scheduler_type
                     "train.stage=pt", "train.stage=sft", "train.stage=cls",  # stage
                     "strategy.kind=freeze", "strategy.kind=lora",  # finetuning_type
                     "data.mask=all", "data.mask=last_assistant",  # train_on_prompt, mask_history
                     "strategy.freeze.layers=last:2", "strategy.freeze.layers=first:2",  # freeze_trainable_layers N, -N
                     "train.precision=bf16", "train.precision=fp16", "data.seed=3", "data.val_ratio=0.99"):
        _load(override)
    assert "model.attn_implementation" in _refused("model.attn_implementation=flash_attention_2")  # "no fa2"
    for stage in ("rm", "ppo", "dpo", "kto"):  # "sftlab has no rm, ppo, dpo or kto"
        assert "train.stage" in _refused(f"train.stage={stage}")
    assert "train.scheduler" in _refused("train.scheduler=cosine_with_restarts")
    assert "train.warmup_steps" in _refused("train.warmup_steps=0.1")  # a number of steps, not a share
    assert "data.val_ratio" in _refused("data.val_ratio=1")  # a share in [0, 1)
    assert "data.val_ratio" in _refused("data.val_ratio=10")  # ... not a count
    assert "strategy.lora.quantize_4bit" in _refused("strategy.lora.quantize_4bit=8")  # there is no 8-bit


def test_the_built_in_templates_and_the_qwen_alias():
    assert builtin_template_names() == ["chatml", "gemma", "llama3", "mistral", "plain", "raw"]
    assert load_builtin("qwen").name == "chatml"
    assert load_config(None, ["data.template=qwen"], base=BASE).data.template == "qwen"


@pytest.mark.parametrize("template, family", [("chatml", "chatml"), ("qwen", "chatml"), ("llama3", "llama3"),
                                              ("mistral", "mistral"), ("gemma", "gemma"), ("plain", "chatml"),
                                              ("raw", "chatml")])
def test_a_built_in_template_writes_no_default_system_turn(template, family):
    tokenizer = make_tokenizer(family)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    text = render_conversation(tokenizer, chat, template).text
    spec = load_builtin(template)
    bos = {"": "", "{bos_token}": tokenizer.bos_token, "{tokenizer_bos}": ""}[spec.bos]  # these tokenizers add no BOS
    assert text[:text.index("Hi")] == bos + spec.roles.user.prefix  # nothing before the user's turn
    with_system = render_conversation(tokenizer, [{"role": "system", "content": "Be terse."}, *chat], template).text
    assert "Be terse." in with_system  # a system turn given is written


def test_max_samples_counts_the_whole_training_mixture(tmp_path):
    for name in ("a", "b"):
        rows = [{"text": f"{name} document {i}"} for i in range(6)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    train = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    both, _ = load_examples(DataConfig(train=train, format="text"), "pt")
    assert len(both) == 12
    capped, _ = load_examples(DataConfig(train=train, format="text", max_samples=4), "pt")
    assert len(capped) == 4  # 4 in all, not 4 of each dataset
    held, _ = load_examples(DataConfig(train=train, format="text", val_ratio=0.25), "pt")
    assert len(held) == 9  # val_size: a share of the rows held out
    assert all(re.fullmatch(r"[ab] document \d", example["text"]) for example in capped)
