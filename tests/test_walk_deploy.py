"""Defects found walking deployment (export, generate, chat, serve) as a user would; each test failed before its fix."""

from __future__ import annotations

import io
import json
import shutil

import httpx
import pytest
import torch

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.infer.engine import generate_all
from sftlab.infer.loading import load_served
from sftlab.infer.prompts import render_chat
from sftlab.infer.sampling import SamplingParams
from sftlab.models.tiny import save_tiny, save_tiny_adapter

from logged_server import start_logged_server

pytestmark = pytest.mark.timeout(120)
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return load_served(save_tiny("qwen2", tmp_path_factory.mktemp("deploy") / "tiny"))


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    thread = start_logged_server(served, tmp_path_factory)
    yield thread
    thread.stop()


def _chat(server, **body):
    body = {"model": "tiny", "messages": HELLO, **body}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)


def _answer(served, adapter_name: str) -> str:
    prompt = render_chat(served.tokenizer, HELLO, "chatml")
    adapter = served.adapters[adapter_name]
    return generate_all(served, [prompt], SamplingParams(max_new_tokens=6), set(), adapter=adapter)[0]["text"]


def test_adapter_runs_named_with_a_dot_or_a_module_attribute_load(tmp_path):
    """A run directory `exp1.v2` or `train` served its adapter under that name, which PEFT refuses as a module key:
    generate, chat, serve and eval stopped with a KeyError traceback."""
    base = save_tiny("qwen2", tmp_path / "base")
    save_tiny_adapter(base, tmp_path / "plain" / "model", seed=3)
    expected = _answer(load_served(tmp_path / "plain"), "plain")
    for name in ("exp1.v2", "train", "half"):
        shutil.copytree(tmp_path / "plain", tmp_path / name)
        served = load_served(tmp_path / name, adapters={"to": str(tmp_path / "plain" / "model")})
        assert served.names == [name, "to"]
        assert _answer(served, name) == _answer(served, "to") == expected


def test_seed_outside_torch_range_is_400_not_500(server):
    """seed 2**64 failed inside the engine: 500, and every request prefilled together with it failed too."""
    too_big = _chat(server, max_tokens=2, temperature=1, seed=2**64)
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "seed"
    assert _chat(server, max_tokens=2, temperature=1, seed=2**64 - 1).status_code == 200
    assert _chat(server, max_tokens=2, temperature=1, seed=-1).status_code == 200


def test_generate_seed_outside_torch_range_is_one_line(tmp_path, capsys):
    model = save_tiny("qwen2", tmp_path / "tiny")
    (tmp_path / "in.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    args = ["generate", str(model), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
            "--temperature", "1", "--seed", str(2**64 - 1)]
    capsys.readouterr()
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: --seed 18446744073709551615: row and turn seeds")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("path, field, value", [
    ("/v1/chat/completions", "presence_penalty", 0.5), ("/v1/chat/completions", "frequency_penalty", 1),
    ("/v1/chat/completions", "logit_bias", {"5": 100}),
    ("/v1/chat/completions", "response_format", {"type": "json_object"}),
    ("/v1/completions", "echo", True), ("/v1/completions", "best_of", 3), ("/v1/completions", "suffix", "end"),
])
def test_fields_that_would_change_the_answer_are_refused_not_ignored(server, path, field, value):
    """These OpenAI fields were accepted and silently ignored: the client got an answer it did not ask for."""
    prompt = {"messages": HELLO} if "chat" in path else {"prompt": "hello"}
    body = {"model": "tiny", **prompt, "max_tokens": 2}
    refused = httpx.post(f"{server.url}{path}", json={**body, field: value}, timeout=60)
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["param"] == field
    assert error["message"] == f"{field}: {field} is not supported; leave it out"
    no_op = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "response_format": {"type": "text"},
             "echo": False, "best_of": 1, "suffix": ""}[field]
    assert httpx.post(f"{server.url}{path}", json={**body, field: no_op}, timeout=60).status_code == 200


def test_prompt_over_the_context_without_max_tokens_names_no_negative_max_tokens(server):
    """Without max_tokens the message said 'max_tokens is -8463'."""
    response = _chat(server, messages=[{"role": "user", "content": "hi " * 2100}])
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "leaves no room for an answer in the model's context of 2048 tokens" in error["message"]
    assert "max_tokens is -" not in error["message"]


def test_chat_drops_an_over_long_turn_and_goes_on(tmp_path, monkeypatch, capsys):
    """The error told the user to /reset, but chat had already exited."""
    model = save_tiny("qwen2", tmp_path / "tiny")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello " * 2100 + "\nhello\n/exit\n"))
    assert main(["chat", str(model), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert "this turn was dropped: send a shorter one, or /reset" in captured.err
    assert len(captured.out.splitlines()) == 1  # the next turn is answered


def _full_run(tmp_path, arch="qwen2"):
    run = tmp_path / "run"
    save_tiny(arch, run / "model")
    (run / "config.yaml").write_text("data: {template: chatml}\n", encoding="utf-8")
    return run


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_of_a_full_model_run(tmp_path, capsys, dtype):
    """A full or freeze run was refused by `sftlab export`; now OUT is its model in --dtype, with its template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = _full_run(tmp_path)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["export", str(run), "--merge", str(out), "--dtype", dtype]) == 0
    assert capsys.readouterr().out.startswith(f"copied the full model {(run / 'model').resolve()} -> {out}")
    record = json.loads((out / "sftlab_export.json").read_text())
    assert record["adapter"] is None and record["dtype"] == dtype and record["template"] == "chatml"
    original = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.dtype == getattr(torch, dtype)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        diff = float((original(input_ids=ids).logits - exported(input_ids=ids).logits.float()).abs().max())
    assert diff == 0.0 if dtype == "float32" else diff < 0.05
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(out).apply_chat_template(HELLO, tokenize=False)
    assert load_served(out).template == "chatml"


def test_export_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    """A missing directory was 'no adapter_config.json'; an unfinished run did not say so; an adapter without its
    weights or with cut-short weights, and a relative base, were tracebacks or named `model.path`."""
    base = save_tiny("qwen2", tmp_path / "base")
    unfinished = tmp_path / "unfinished"
    save_tiny_adapter(base, unfinished / "checkpoints" / "step-10", seed=1)
    save_tiny_adapter(base, unfinished / "checkpoints" / "step-2", seed=1)
    no_weights = tmp_path / "no_weights"
    save_tiny_adapter(base, no_weights / "model", seed=1)
    cut = tmp_path / "cut"
    shutil.copytree(no_weights, cut)
    weights = cut / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    (no_weights / "model" / "adapter_model.safetensors").unlink()
    save_tiny_adapter(base, tmp_path / "relative" / "model", seed=1)
    config = tmp_path / "relative" / "model" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "base-elsewhere"}))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    cases = {
        "missing": "missing: no such directory",
        "notes": "notes: not a run directory or model directory",
        "unfinished": f"unfinished: the run has no model/ (it has not finished); export its latest checkpoint "
                      f"({tmp_path / 'unfinished' / 'checkpoints' / 'step-10'})",
        "no_weights": "no_weights/model: adapter_config.json but no adapter_model.safetensors",
        "cut": "cut/model/adapter_model.safetensors: not a complete safetensors file",
        "relative": "relative/model/adapter_config.json: base_model_name_or_path 'base-elsewhere': no such directory",
    }
    for name, message in cases.items():
        assert main(["export", str(tmp_path / name), "--merge", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / message.split(':')[0]}") and message.split(":", 1)[1] in err
        assert err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before
    for name in ("no_weights", "cut"):  # and the same for generate, chat and serve
        with pytest.raises(SftlabError, match="the adapter was not saved completely"):
            load_served(tmp_path / name)
