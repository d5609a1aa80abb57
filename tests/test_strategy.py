"""select_trainable: full / freeze / lora on tiny models of every family; frozen weights stay bit-identical."""

from __future__ import annotations

import pytest
import torch

from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tiny_model, make_tokenizer
from sftlab.strategy import TrainableSet, select_trainable

ARCHS = ["llama", "qwen2", "gemma3", "gpt2", "bert"]
TEMPLATE = {"llama": "llama3", "qwen2": "chatml", "gemma3": "gemma", "gpt2": "chatml", "bert": "none"}


def tiny(arch: str, task: str = "causal_lm"):
    tok = make_tokenizer(TEMPLATE[arch])
    return make_tiny_model(arch, tok, task=task, num_labels=3), tok


def make_batch(model, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.get_text_config().vocab_size, (2, 8), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = torch.tensor([0, 2]) if "ForSequenceClassification" in type(model).__name__ else ids.clone()
    return batch


def train_steps(model, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(steps):
        loss = model(**make_batch(model, step)).loss
        loss.backward()
        optim.step()
        optim.zero_grad()


def check_only_trainable_change(model, trainable: TrainableSet) -> None:
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_steps(model)
    after = dict(model.named_parameters())
    assert set(trainable.names) == {n for n, p in after.items() if p.requires_grad}
    assert trainable.trainable == sum(after[n].numel() for n in trainable.names)
    assert trainable.total + trainable.copies == sum(p.numel() for p in after.values())  # peft's modules_to_save copies
    for name, old in before.items():
        if name in trainable.names:
            assert not torch.equal(old, after[name]), f"{name} should have changed"
        else:
            assert torch.equal(old, after[name]), f"{name} is frozen but changed"


@pytest.mark.parametrize("arch", ARCHS)
def test_full_trains_everything(arch):
    model, _ = tiny(arch)
    model, trainable = select_trainable(model, {"kind": "full"})
    assert trainable.trainable == trainable.total and trainable.kind == "full"
    assert trainable.summary().startswith(f"trainable {trainable.total:,} / {trainable.total:,} (100.00%)")
    check_only_trainable_change(model, trainable)


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_last_layer_and_globs(arch):
    model, _ = tiny(arch)
    cfg = {"kind": "freeze", "freeze": {"layers": "last:1", "modules": ["*norm*"] if arch != "gpt2" else ["*ln_f*"]}}
    model, trainable = select_trainable(model, cfg)
    assert 0 < trainable.trainable < trainable.total
    assert trainable.details["layers"] == [1]
    assert not any(".0." in name and "norm" not in name.lower() for name in trainable.names)
    check_only_trainable_change(model, trainable)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "bert"])
def test_freeze_classifier_head_always_trains(arch):
    model, _ = tiny(arch, task="cls")
    model, trainable = select_trainable(model, {"kind": "freeze", "freeze": {"layers": "none"}})
    head = "classifier" if arch == "bert" else "score"
    assert trainable.details["head"] == [head]
    assert all(name.startswith(head + ".") for name in trainable.names)
    assert "classification head" in trainable.summary()
    check_only_trainable_change(model, trainable)


def test_freeze_layer_list_and_first():
    model, _ = tiny("llama")
    _, trainable = select_trainable(model, {"kind": "freeze", "freeze": {"layers": [0]}})
    assert trainable.names and all(name.startswith("model.layers.0.") for name in trainable.names)
    _, trainable = select_trainable(model, {"kind": "freeze", "freeze": {"layers": "first:2"}})
    assert {name.split(".")[2] for name in trainable.names} == {"0", "1"}
    _, trainable = select_trainable(model, {"kind": "freeze", "freeze": {"layers": [-1]}})
    assert trainable.details["layers"] == [1]
    _, trainable = select_trainable(model, {"kind": "freeze", "freeze": {"layers": "all"}})
    assert all(name.startswith("model.layers.") for name in trainable.names) and len(trainable.details["layers"]) == 2


def test_freeze_tied_lm_head_is_reported():
    model, _ = tiny("gemma3")  # gemma ties lm_head to the input embedding
    model, trainable = select_trainable(model, {"kind": "freeze", "freeze": {"modules": ["lm_head"]}})
    assert trainable.names == ["model.embed_tokens.weight"]
    assert any("lm_head.weight is tied to model.embed_tokens.weight" in note for note in trainable.notes)
    assert "tied" in trainable.summary()


@pytest.mark.parametrize("cfg, message", [
    ({"layers": "none", "modules": ["*.nothing_here.*"]}, "matches no parameter"),
    ({"layers": [5]}, "out of range"),
    ({"layers": "last:9"}, "between 1 and"),
    ({"layers": "middle:1"}, "expected 'last:N'"),
    ({"layers": "none"}, r"strategy.freeze selects nothing to train .*set strategy.freeze.layers"),
])
def test_freeze_bad_input(cfg, message):
    model, _ = tiny("llama")
    with pytest.raises(SftlabError, match=message):
        select_trainable(model, {"kind": "freeze", "freeze": cfg})


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_only_adapter(arch, tmp_path):
    from peft import PeftModel

    model, _ = tiny(arch)
    model, trainable = select_trainable(model, {"kind": "lora", "lora": {"rank": 4, "target_modules": "all-linear"}})
    assert isinstance(model, PeftModel) and trainable.kind == "lora"
    assert all("lora_" in name or "modules_to_save" in name for name in trainable.names)
    assert 0 < trainable.trainable < trainable.total
    check_only_trainable_change(model, trainable)
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_lora_reload_gives_identical_logits(arch, tmp_path):
    from peft import PeftModel

    model, _ = tiny(arch, task="cls" if arch == "bert" else "causal_lm")
    cfg = {"kind": "lora", "lora": {"rank": 4, "target_modules": ["*.query", "value"] if arch == "bert" else ["q_proj", "v_proj"],
                                    "rslora": True, "dora": True, "dropout": 0.1}}
    model, trainable = select_trainable(model, cfg)
    if arch == "bert":
        assert trainable.details["modules_to_save"] == ["classifier"]
        assert any("classifier" in name for name in trainable.names)
    train_steps(model)
    model.save_pretrained(tmp_path / "adapter")
    batch = make_batch(model, seed=9)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits
    base, _ = tiny(arch, task="cls" if arch == "bert" else "causal_lm")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=batch["input_ids"]).logits, expected)


def test_lora_target_that_matches_nothing():
    model, _ = tiny("llama")
    with pytest.raises(SftlabError, match="'query' matches no linear module; this model has: .*q_proj"):
        select_trainable(model, {"kind": "lora", "lora": {"target_modules": ["q_proj", "query"]}})
    with pytest.raises(SftlabError, match="modules_to_save: 'head' matches no module"):
        select_trainable(model, {"kind": "lora", "lora": {"modules_to_save": ["head"]}})


def test_lora_glob_that_also_matches_containers_adapts_only_linear_modules():
    model, _ = tiny("llama")
    model, trainable = select_trainable(model, {"kind": "lora", "lora": {"target_modules": ["model.layers.1.*"]}})
    adapted = {name.split(".lora_")[0] for name in trainable.names if ".lora_" in name}
    assert adapted and all(".layers.1." in name for name in adapted)
    assert any(name.endswith("mlp.down_proj") for name in adapted) and any(name.endswith("q_proj") for name in adapted)


def test_lora_module_both_targeted_and_saved_in_full_is_refused_naming_both_keys():
    """q_proj in target_modules and in modules_to_save: peft silently trained it in full without an adapter (or, when
    it was the only target, failed with a message about exclude_modules); now one line names both keys."""
    model, _ = tiny("llama")
    for targets in (["q_proj", "v_proj"], ["q_proj"], ["*.self_attn.*"]):
        cfg = {"kind": "lora", "lora": {"target_modules": targets, "modules_to_save": ["q_proj"]}}
        with pytest.raises(SftlabError, match=r"^strategy.lora.modules_to_save: 'q_proj' is also in "
                                              r"strategy.lora.target_modules"):
            select_trainable(model, cfg)
    # all-linear names no module: an explicit modules_to_save entry trains that module in full instead
    model, trainable = select_trainable(model, {"kind": "lora", "lora": {"modules_to_save": ["q_proj"]}})
    assert "q_proj" not in trainable.details["target_modules"]


@pytest.mark.parametrize("spec", ["[1", "last:0", "middle:1", "first:", [], True])
def test_config_loading_and_freeze_share_one_layer_grammar(spec):
    """The config refuses at load exactly what freeze refuses at training (one parser, one message)."""
    from sftlab.config import load_config
    from sftlab.strategy.freeze import resolve_layer_indices

    with pytest.raises(SftlabError) as at_training:
        resolve_layer_indices(spec, 4)
    with pytest.raises(SftlabError) as at_load:
        load_config(None, [], base={"model": {"path": "m"}, "data": {"train": "a.jsonl"},
                                    "strategy": {"freeze": {"layers": spec}}})
    assert str(at_load.value) == f"config: {at_training.value}"
