"""Adapters and models from other tools (docs/migrating.md, "Models and adapters from other tools"): a PEFT adapter
trained with added tokens (TRL's setup_chat_format, LLaMA-Factory's new_special_tokens / resize_vocab: a larger
tokenizer, embed_tokens / lm_head saved at its size in modules_to_save) serves, evaluates, exports and trains on
its base resized to it (`sftlab.models.adapter_vocab`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.models.tiny import save_tiny

TEXT = "<|turn|>user\nhello<|/turn|>"


@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    """(root, reference logits of TEXT): root/base (tiny qwen2) and root/adapter (LoRA + trained embed_tokens and
    lm_head over the base's tokenizer with two added tokens, saved with that tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("resized")
    base = save_tiny("qwen2", root / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|turn|>", "<|/turn|>"]})
    tokenizer.eos_token = tokenizer.pad_token = "<|/turn|>"  # as setup_chat_format sets them: beyond the base's rows
    model = AutoModelForCausalLM.from_pretrained(base)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings + 2
    model.resize_token_embeddings(len(tokenizer))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                                  modules_to_save=["embed_tokens", "lm_head"]))
    torch.manual_seed(3)
    for name, param in peft_model.named_parameters():
        if param.requires_grad:  # the LoRA weights and the trained copies of embed_tokens / lm_head
            torch.nn.init.normal_(param, std=0.3)
    peft_model.eval()
    with torch.no_grad():
        reference = peft_model(**tokenizer(TEXT, return_tensors="pt")).logits
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    return root, reference


def _logits(model, tokenizer):
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


def test_an_adapter_with_added_tokens_serves_with_the_logits_it_trained_with(resized):
    from sftlab.infer.loading import load_served

    root, reference = resized
    served = load_served(root / "adapter")
    assert torch.allclose(_logits(served.model, served.tokenizer), reference, atol=1e-5)


def test_its_merged_export_gives_the_adapters_logits(resized, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, reference = resized
    assert main(["export", str(root / "adapter"), "--merge", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "sftlab_export.json").read_text(encoding="utf-8"))
    assert record["max_abs_logit_diff"] < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert merged.get_input_embeddings().num_embeddings == reference.shape[-1]
    assert torch.allclose(_logits(merged, AutoTokenizer.from_pretrained(tmp_path / "out")), reference, atol=1e-4)


def test_a_tokenizer_that_does_not_fit_its_saved_embeddings_is_refused_in_one_line(resized, tmp_path):
    from transformers import AutoTokenizer

    from sftlab.infer.loading import load_served

    root, _ = resized
    bare = tmp_path / "bare"  # no tokenizer saved: the base's, without the added tokens
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(root / "adapter" / name, bare / name)
    with pytest.raises(SftlabError, match=r"trained with added tokens .* the tokenizer has only \d+ tokens") as caught:
        load_served(bare)
    assert "\n" not in str(caught.value)
    tokenizer = AutoTokenizer.from_pretrained(root / "adapter")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|x|>"]})
    tokenizer.save_pretrained(bare)
    with pytest.raises(SftlabError, match=r"the tokenizer has \d+ tokens, more than the \d+ token embeddings"):
        load_served(bare)


def test_training_on_top_of_it_resizes_its_base(resized, tmp_path):
    root, _ = resized
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                    + "\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {root / 'adapter'}}}\ndata: {{train: {data}}}\nstrategy: {{kind: lora}}\n"
                      f"train: {{max_steps: 1, batch_size: 1}}\noutput: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 0
    from sftlab.infer.loading import load_served

    served = load_served(tmp_path / "run")
    assert served.model.get_input_embeddings().num_embeddings == resized[1].shape[-1]


def _hub_copy(adapter, tmp_path):
    """`adapter` copied with its recorded base replaced by a hub id, as TRL and LLaMA-Factory save it."""
    hub = tmp_path / "hub"
    shutil.copytree(adapter, hub)
    config = json.loads((hub / "adapter_config.json").read_text(encoding="utf-8"))
    (hub / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    return hub


def test_an_adapter_recorded_on_a_hub_base_runs_on_the_base_given_with_it(resized, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root, _ = resized
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), LoraConfig(r=4, task_type="CAUSAL_LM",
                                                                                        target_modules=["q_proj"]))
    for name, param in plain.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.3)
    plain.save_pretrained(tmp_path / "plain")
    hub = _hub_copy(tmp_path / "plain", tmp_path)
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n', encoding="utf-8")
    args = ["--input", str(tmp_path / "in.jsonl"), "--max-new-tokens", "2", "--template", "chatml"]
    assert main(["generate", str(root / "base"), "--adapter", str(hub), *args, "--output", str(tmp_path / "a")]) == 0
    assert main(["generate", str(tmp_path / "plain"), *args, "--output", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a").read_text(encoding="utf-8") == (tmp_path / "b").read_text(encoding="utf-8")


def test_model_path_of_an_adapter_on_a_hub_base_says_where_the_name_came_from(resized, tmp_path, capsys):
    root, _ = resized
    hub = _hub_copy(root / "adapter", tmp_path)
    (tmp_path / "x.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {hub}}}\ndata: {{train: {tmp_path / 'x.jsonl'}}}\n"
                      f"output: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "adapter_config.json" in err and "base_model_name_or_path" in err
    assert f"model.adapter={hub}" in err


@pytest.mark.parametrize("value", ["all", "q_proj,v_proj"])
def test_target_modules_as_a_string_says_how_to_write_it(value, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: x}}\ndata: {{train: x.jsonl}}\nstrategy: {{kind: lora, lora: {{target_modules: "
                      f"'{value}'}}}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"strategy.lora.target_modules: got {value!r}; write all-linear or a YAML list of module names" in err
