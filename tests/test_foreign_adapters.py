"""Adapters and models from other tools (docs/migrating.md, "Models and adapters from other tools"): a PEFT adapter
trained with added tokens (TRL's setup_chat_format, LLaMA-Factory's new_special_tokens / resize_vocab: a larger
tokenizer, embed_tokens / lm_head saved at its size in modules_to_save) serves, evaluates, exports and trains on
its base resized to it (`sftlab.models.adapter_vocab`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


def train_on_adapter(adapter: Path, tmp_path: Path) -> None:
    """One LoRA step of `sftlab train` with `model.path` the adapter directory, into tmp_path/run."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                    + "\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {adapter}}}\ndata: {{train: {data}}}\nstrategy: {{kind: lora}}\n"
                      f"train: {{max_steps: 1, batch_size: 1}}\noutput: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 0


def test_training_on_top_of_it_resizes_its_base(resized, tmp_path):
    root, _ = resized
    train_on_adapter(root / "adapter", tmp_path)
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


def _randomise(peft_model, seed=3):
    torch.manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if param.requires_grad:  # the LoRA weights and the trained copies of modules_to_save
            torch.nn.init.normal_(param, std=0.3)
    return peft_model.eval()


CLS_TEXTS = ["<|turn|>hello<|/turn|>", "bye"]


@pytest.fixture(scope="module")
def resized_classifier(tmp_path_factory):
    """(root, reference logits of CLS_TEXTS): a SEQ_CLS adapter (LoRA, trained embed_tokens and score head) over a
    tokenizer with two added tokens whose pad token is one of them, on a base whose config names no pad token."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("resized_cls")
    base = save_tiny("qwen2", root / "base")
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config.pop("pad_token_id", None)
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|turn|>", "<|/turn|>"]})
    tokenizer.pad_token = "<|/turn|>"
    model = AutoModelForSequenceClassification.from_pretrained(base, id2label={0: "neg", 1: "pos"},
                                                               label2id={"neg": 0, "pos": 1})
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id  # as setup_chat_format sets it
    peft_model = _randomise(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             task_type="SEQ_CLS", modules_to_save=["embed_tokens"])))
    with torch.no_grad():
        reference = peft_model(**tokenizer(CLS_TEXTS, return_tensors="pt", padding=True)).logits
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    (root / "adapter" / "sftlab_labels.json").write_text(json.dumps({"labels": ["neg", "pos"]}), encoding="utf-8")
    return root, reference


def test_a_classification_adapter_with_added_tokens_evaluates_with_its_own_predictions(resized_classifier, tmp_path):
    from sftlab.infer.loading import load_classifier_adapter

    root, reference = resized_classifier
    model, tokenizer, labels = load_classifier_adapter(root / "adapter")
    assert labels == ["neg", "pos"] and model.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        got = model(**tokenizer(CLS_TEXTS, return_tensors="pt", padding=True)).logits
    assert torch.allclose(got, reference, atol=1e-5)
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": text, "label": "neg"}) + "\n" for text in CLS_TEXTS), encoding="utf-8")
    assert main(["eval", str(root / "adapter"), "--task", "labels", "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    probs = torch.tensor([[row["probs"]["neg"], row["probs"]["pos"]] for row in rows])
    assert torch.allclose(probs, reference.softmax(-1), atol=1e-5)


def test_a_classification_adapter_with_added_tokens_exports_with_its_own_predictions(resized_classifier, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, reference = resized_classifier
    assert main(["export", str(root / "adapter"), "--merge", str(tmp_path / "out")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert merged.config.id2label == {0: "neg", 1: "pos"} and merged.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        got = merged(**tokenizer(CLS_TEXTS, return_tensors="pt", padding=True)).logits
    assert torch.allclose(got, reference, atol=1e-4)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_an_adapter_resized_below_a_padded_base_serves_and_exports_its_logits(safe, tmp_path):
    """A base padded beyond its tokenizer (64 spare rows), an adapter saved after resize_token_embeddings(len(tokenizer))
    with two added tokens (fewer rows than the base): the base shrinks to the adapter's rows, as it trained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.infer.loading import load_served

    tiny = save_tiny("qwen2", tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    padded = AutoModelForCausalLM.from_pretrained(tiny)
    padded.resize_token_embeddings(len(tokenizer) + 64)
    padded.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|turn|>", "<|/turn|>"]})
    model.resize_token_embeddings(len(tokenizer))
    peft_model = _randomise(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM",
                                                             modules_to_save=["embed_tokens", "lm_head"])))
    reference = _logits(peft_model, tokenizer)
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=safe)
    tokenizer.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / ("adapter_model.safetensors" if safe else "adapter_model.bin")).is_file()
    served = load_served(tmp_path / "adapter")
    assert served.model.get_input_embeddings().num_embeddings == len(tokenizer) < padded.config.vocab_size
    assert torch.allclose(_logits(served.model, served.tokenizer), reference, atol=1e-5)
    assert main(["export", str(tmp_path / "adapter"), "--merge", str(tmp_path / "out")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(_logits(merged, tokenizer), reference, atol=1e-4)


def test_peft_s_duplicate_embedding_keys_are_redundant_and_not_warned_about(resized, tmp_path):
    """PEFT saves a resized embedding's trained copy also as NAME.modules_to_save.weight and warns that key is unexpected
    on load; it is the same tensor as NAME.weight (the logits match, see above), so sftlab does not pass the warning on."""
    import warnings

    from safetensors.torch import load_file

    root, _ = resized
    saved = load_file(root / "adapter" / "adapter_model.safetensors")
    for name in ("base_model.model.model.embed_tokens", "base_model.model.lm_head"):
        assert torch.equal(saved[f"{name}.modules_to_save.weight"], saved[f"{name}.weight"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", str(root / "adapter"), "--merge", str(tmp_path / "out")]) == 0
    assert not [w for w in caught if "unexpected adapter keys" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:  # any other unexpected key still warns
        warnings.simplefilter("always")
        from sftlab.models.adapter_vocab import quiet_saved_copies

        with quiet_saved_copies():
            warnings.warn("Found unexpected adapter keys: ['a.modules_to_save.weight', 'b.lora_A.weight'] while "
                          "loading the checkpoint.")
    assert len(caught) == 1


def test_continuing_it_on_a_4bit_base_is_refused_at_setup_in_one_line(resized, tmp_path, capsys):
    root, _ = resized
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {root / 'adapter'}}}\ndata: {{train: {tmp_path / 'x.jsonl'}}}\n"
                      "strategy: {kind: lora, lora: {quantize_4bit: true}}\n"
                      f"output: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.adapter" in err and "4-bit" in err


def _chat_events(monkeypatch, argv, lines):
    """Run `sftlab chat` on `lines` of stdin; the final event of each answer."""
    import io

    from sftlab.infer import engine

    done = []
    real = engine.Request

    def request(prompt, params, emit, **kwargs):
        return real(prompt, params, lambda event: (done.append(event) if event["type"] != "delta" else None,
                                                   emit(event)), **kwargs)

    monkeypatch.setattr(engine, "Request", request)
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    assert main(["chat", *argv]) == 0
    return done


def test_chat_with_it_renders_its_template_and_stops_at_its_added_eos(tmp_path, monkeypatch, capsys):
    """An adapter whose tokenizer brings a template over added tokens and an added EOS (setup_chat_format's shape):
    chat renders the adapter's template, the added tokens one id each, and the added EOS ends the answer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.infer.loading import load_served
    from sftlab.infer.prompts import render_chat, stop_token_ids

    base = save_tiny("qwen2", tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|turn|>", "<|/turn|>"]})
    tokenizer.eos_token = tokenizer.pad_token = "<|/turn|>"
    tokenizer.chat_template = ("{% for m in messages %}<|turn|>{{ m['role'] }}\n{{ m['content'] }}<|/turn|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}")
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(tokenizer))
    peft_model = _randomise(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM",
                                                             modules_to_save=["embed_tokens", "lm_head"])))
    turn, end = tokenizer.convert_tokens_to_ids(["<|turn|>", "<|/turn|>"])
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|turn|>user\nhi<|/turn|>\n<|turn|>assistant\n"
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # the added EOS made the first answer token: its lm_head row twice the greedy one's
        logits = peft_model(input_ids=torch.tensor([list(prompt)])).logits[0, -1]
        head = peft_model.base_model.model.lm_head.modules_to_save["default"].weight
        assert logits.max() > 0
        head[end] = 2 * head[int(logits.argmax())]
    peft_model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    served = load_served(tmp_path / "adapter")
    assert render_chat(served.tokenizer, [{"role": "user", "content": "hi"}], served.template) == list(prompt)
    assert prompt.count(turn) == 2 and end in stop_token_ids(served.tokenizer, served.model, served.template)
    done = _chat_events(monkeypatch, [str(tmp_path / "adapter"), "--max-new-tokens", "6"], ["hi", "/exit"])
    assert [(event["finish_reason"], event["completion_tokens"], event["text"]) for event in done] == [("stop", 0, "")]


def test_chat_with_a_plain_adapter_uses_its_base_s_tokenizer_and_template(resized, tmp_path, monkeypatch, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftlab.infer.engine import generate_all
    from sftlab.infer.loading import load_served
    from sftlab.infer.prompts import render_chat, stop_token_ids
    from sftlab.infer.sampling import SamplingParams

    root, _ = resized
    plain = _randomise(get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"),
                                      LoraConfig(r=4, task_type="CAUSAL_LM", target_modules=["q_proj"])))
    plain.save_pretrained(tmp_path / "plain")
    done = _chat_events(monkeypatch, [str(tmp_path / "plain"), "--max-new-tokens", "4"], ["hello", "/exit"])
    served = load_served(tmp_path / "plain")
    ids = render_chat(served.tokenizer, [{"role": "user", "content": "hello"}], served.template)
    assert served.tokenizer.decode(ids).startswith("<|im_start|>user\nhello")  # the base's own chat template
    expected = generate_all(served, [ids], SamplingParams(max_new_tokens=4),
                            stop_token_ids(served.tokenizer, served.model, served.template),
                            adapter=served.adapters[served.default_name])
    assert done[0]["text"] == expected[0]["text"]
    assert capsys.readouterr().out.splitlines() == [expected[0]["text"]]
