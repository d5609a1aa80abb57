"""Adapters from other tools, the corners (docs/migrating.md, "Models and adapters from other tools"): a classification
adapter with added tokens saved as adapter_model.bin, adapters trained on a 4-bit (QLoRA) base, a vocabulary resized
with pad_to_multiple_of (LLaMA-Factory's resize_vocab), `chat BASE --adapter A` with A's added tokens, and an
adapter whose recorded base is not on this machine (`sftlab.infer.loading.describe_source`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.models.tiny import save_tiny
from test_foreign_adapters import CLS_TEXTS, TEXT, _chat_events, _logits, _randomise, train_on_adapter

ADDED = {"additional_special_tokens": ["<|turn|>", "<|/turn|>"]}
TEMPLATE = ("{% for m in messages %}<|turn|>{{ m['role'] }}\n{{ m['content'] }}<|/turn|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}")


def _chat_tokenizer(base):
    """The base's tokenizer with two added tokens, the second its EOS and pad, and a template over them (TRL's
    setup_chat_format shape)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens(ADDED)
    tokenizer.eos_token = tokenizer.pad_token = "<|/turn|>"
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_a_bin_classification_adapter_with_added_tokens_evaluates_and_exports_its_predictions(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = save_tiny("qwen2", tmp_path / "base")
    tokenizer = _chat_tokenizer(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, id2label={0: "neg", 1: "pos"},
                                                               label2id={"neg": 0, "pos": 1})
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_model = _randomise(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             task_type="SEQ_CLS", modules_to_save=["embed_tokens"])))
    with torch.no_grad():
        reference = peft_model(**tokenizer(CLS_TEXTS, return_tensors="pt", padding=True)).logits
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter, safe_serialization=False)
    tokenizer.save_pretrained(adapter)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": text, "label": "neg"}) + "\n" for text in CLS_TEXTS), encoding="utf-8")
    argv = ["eval", str(adapter), "--task", "labels", "--data", str(data), "--out", str(tmp_path / "ev")]
    capsys.readouterr()
    assert main(argv) == 2  # a foreign classifier names no labels: said in one line, with how to name them
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "label names are not recorded" in err and '{"labels": [...]}' in err
    # export needs no label names: the head size is read from the .bin weights (it opened only .safetensors)
    assert main(["export", str(adapter), "--merge", str(tmp_path / "unnamed")]) == 0
    unnamed = AutoModelForSequenceClassification.from_pretrained(tmp_path / "unnamed").eval()
    assert unnamed.config.num_labels == 2
    (adapter / "sftlab_labels.json").write_text(json.dumps({"labels": ["neg", "pos"]}), encoding="utf-8")
    assert main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    probs = torch.tensor([[row["probs"]["neg"], row["probs"]["pos"]] for row in rows])
    assert torch.allclose(probs, reference.softmax(-1), atol=1e-5)
    assert main(["export", str(adapter), "--merge", str(tmp_path / "out")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        got = merged(**AutoTokenizer.from_pretrained(tmp_path / "out")(CLS_TEXTS, return_tensors="pt", padding=True)).logits
    assert torch.allclose(got, reference, atol=1e-4)


@pytest.fixture(scope="module")
def four_bit(tmp_path_factory):
    """(root, logits of TEXT as trained): root/base (tiny qwen2) and root/adapter, a LoRA adapter with trained
    embed_tokens / lm_head over two added tokens, trained on the base loaded in 4-bit (QLoRA, as TRL with
    bitsandbytes does it), saved without sftlab's record of the quantisation."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftlab.models.nf4 import four_bit_kwargs, is_four_bit, keep_training_layout

    root = tmp_path_factory.mktemp("four_bit")
    base = save_tiny("qwen2", root / "base")
    tokenizer = _chat_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, **four_bit_kwargs())
    keep_training_layout(model)
    model.resize_token_embeddings(len(tokenizer))
    peft_model = _randomise(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             task_type="CAUSAL_LM",
                                                             modules_to_save=["embed_tokens", "lm_head"])))
    assert is_four_bit(peft_model)
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    return root, _logits(peft_model, tokenizer), peft_model


def test_a_qlora_adapter_from_another_tool_runs_on_the_full_precision_base(four_bit, tmp_path):
    """Without sftlab_qlora.json nothing says the base was 4-bit: it serves and merges on the base as saved (as PEFT
    loads it), resized to its added tokens; its logits are those of the adapter on that base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.infer.loading import load_served

    root, trained, _ = four_bit
    full = AutoModelForCausalLM.from_pretrained(root / "base")
    full.resize_token_embeddings(trained.shape[-1])
    expected = _logits(PeftModel.from_pretrained(full, root / "adapter").eval(), AutoTokenizer.from_pretrained(root / "adapter"))
    served = load_served(root / "adapter")
    assert torch.allclose(_logits(served.model, served.tokenizer), expected, atol=1e-5)
    assert not torch.allclose(expected, trained, atol=1e-3)  # the 4-bit weights it trained on differ
    assert main(["export", str(root / "adapter"), "--merge", str(tmp_path / "out")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(_logits(merged, served.tokenizer), expected, atol=1e-4)


def test_the_same_adapter_recorded_as_qlora_runs_on_its_4bit_base_resized(four_bit, tmp_path):
    """With sftlab's record (sftlab_qlora.json) the base loads in 4-bit as it trained, resized to the added tokens:
    the served logits are the trained ones, and the merged export (into the dequantised base) matches them."""
    from transformers import AutoModelForCausalLM

    from sftlab.infer.loading import load_served
    from sftlab.models.nf4 import is_four_bit, write_record

    root, trained, peft_model = four_bit
    adapter = tmp_path / "adapter"
    shutil.copytree(root / "adapter", adapter)
    write_record(adapter, peft_model)
    served = load_served(adapter)
    assert is_four_bit(served.model)
    assert torch.allclose(_logits(served.model, served.tokenizer), trained, atol=1e-4)
    assert main(["export", str(adapter), "--merge", str(tmp_path / "out")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(_logits(merged, served.tokenizer), trained, atol=1e-3)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """(root, logits of TEXT): root/adapter trained on root/base resized with pad_to_multiple_of=64 after two added
    tokens (LLaMA-Factory's resize_vocab): it saved more token embeddings than its tokenizer has tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("padded")
    base = save_tiny("qwen2", root / "base")
    tokenizer = _chat_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    assert model.get_input_embeddings().num_embeddings % 64 == 0 < model.get_input_embeddings().num_embeddings - len(tokenizer)
    peft_model = _randomise(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             task_type="CAUSAL_LM",
                                                             modules_to_save=["embed_tokens", "lm_head"])))
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    return root, _logits(peft_model, tokenizer)


def test_an_adapter_padded_to_a_multiple_of_64_rows_generates_evaluates_and_exports(padded, tmp_path):
    from transformers import AutoModelForCausalLM

    from sftlab.infer.loading import load_served

    root, reference = padded
    served = load_served(root / "adapter")
    assert served.model.get_input_embeddings().num_embeddings == reference.shape[-1] > len(served.tokenizer)
    assert torch.allclose(_logits(served.model, served.tokenizer), reference, atol=1e-5)
    assert main(["export", str(root / "adapter"), "--merge", str(tmp_path / "out")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(_logits(merged, served.tokenizer), reference, atol=1e-4)
    data = tmp_path / "lm.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                    + "\n", encoding="utf-8")
    losses = []
    for name, model in (("a", root / "adapter"), ("m", tmp_path / "out")):
        assert main(["eval", str(model), "--task", "lm", "--data", str(data), "--out", str(tmp_path / name)]) == 0
        losses.append(json.loads((tmp_path / name / "metrics.json").read_text(encoding="utf-8")))
    assert losses[0]["metrics"]["loss"] == pytest.approx(losses[1]["metrics"]["loss"], abs=1e-4)
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n', encoding="utf-8")
    args = ["--input", str(tmp_path / "in.jsonl"), "--max-new-tokens", "4"]
    assert main(["generate", str(root / "adapter"), *args, "--output", str(tmp_path / "a.jsonl")]) == 0
    assert main(["generate", str(root / "base"), "--adapter", str(root / "adapter"), *args,
                 "--output", str(tmp_path / "b.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_text(encoding="utf-8") == (tmp_path / "b.jsonl").read_text(encoding="utf-8")


def test_training_on_top_of_a_padded_adapter_keeps_its_rows(padded, tmp_path):
    root, reference = padded
    train_on_adapter(root / "adapter", tmp_path)
    from sftlab.infer.loading import load_served

    assert load_served(tmp_path / "run").model.get_input_embeddings().num_embeddings == reference.shape[-1]


def test_chat_base_with_an_adapter_takes_its_tokenizer_template_and_added_eos(tmp_path, monkeypatch):
    """`chat BASE --adapter A`, A trained with added tokens and saved with its tokenizer: the base's tokenizer cannot
    feed it (refused before), so A's tokenizer, its chat template and its added EOS serve the chat."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftlab.infer.loading import load_served
    from sftlab.infer.prompts import render_chat, stop_token_ids

    base = save_tiny("qwen2", tmp_path / "base")
    tokenizer = _chat_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(tokenizer))
    peft_model = _randomise(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM",
                                                             modules_to_save=["embed_tokens", "lm_head"])))
    end = tokenizer.convert_tokens_to_ids("<|/turn|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    with torch.no_grad():  # the added EOS made the greedy first answer token
        logits = peft_model(input_ids=torch.tensor([prompt])).logits[0, -1]
        head = peft_model.base_model.model.lm_head.modules_to_save["default"].weight
        assert logits.max() > 0
        head[end] = 2 * head[int(logits.argmax())]
    peft_model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    served = load_served(base, adapters={"adapter": str(tmp_path / "adapter")})
    assert len(served.tokenizer) == len(tokenizer)
    assert render_chat(served.tokenizer, [{"role": "user", "content": "hi"}], served.template) == prompt
    assert end in stop_token_ids(served.tokenizer, served.model, served.template)
    done = _chat_events(monkeypatch, [str(base), "--adapter", str(tmp_path / "adapter"), "--max-new-tokens", "6"],
                        ["hi", "/exit"])
    assert [(event["finish_reason"], event["completion_tokens"], event["text"]) for event in done] == [("stop", 0, "")]
    bare = tmp_path / "bare"  # the same adapter without its tokenizer: the base's cannot feed it
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp_path / "adapter" / name, bare / name)
    with pytest.raises(SftlabError, match=r"trained with added tokens .* the tokenizer has only \d+ tokens"):
        load_served(base, adapters={"adapter": str(bare)})


def _moved(adapter, tmp_path, recorded: str):
    """`adapter` copied with base_model_name_or_path set to `recorded`."""
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text(encoding="utf-8"))
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": recorded}))
    return moved


@pytest.mark.parametrize("recorded", ["/home/alice/models/qwen", "Qwen/Qwen2.5-0.5B"], ids=["path", "hub"])
def test_a_base_not_on_this_machine_is_replaced_by_the_served_one_with_a_note(padded, tmp_path, capsys, recorded):
    from sftlab.infer.loading import load_served

    root, reference = padded
    moved = _moved(root / "adapter", tmp_path, recorded)
    capsys.readouterr()
    served = load_served(root / "base", adapters={"x": str(moved)})
    with served.activate(served.adapters["x"]):
        assert torch.allclose(_logits(served.model, served.tokenizer), reference, atol=1e-5)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: --adapter x: its base {recorded!r} (adapter_config.json base_model_name_or_path) is not "
                     f"on this machine; it runs on MODEL's base {root / 'base'}"]
    with pytest.raises(SftlabError, match=rf"^{moved}/adapter_config.json: base_model_name_or_path '{recorded}'"):
        load_served(moved)  # served alone, nothing can stand in for it


def test_a_recorded_base_that_is_there_but_no_model_is_refused_even_with_a_served_base(padded, tmp_path):
    from sftlab.infer.loading import load_served

    root, _ = padded
    (tmp_path / "weights.bin").write_bytes(b"x")
    moved = _moved(root / "adapter", tmp_path, str(tmp_path / "weights.bin"))
    with pytest.raises(SftlabError, match=r"adapter_config.json: base_model_name_or_path '.*weights.bin' is a file"):
        load_served(root / "base", adapters={"x": str(moved)})
