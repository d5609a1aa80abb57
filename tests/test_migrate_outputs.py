"""Outputs of LLaMA-Factory or TRL: a plain PEFT adapter directory (made here with peft and transformers only, no
sftlab files) and a merged model saved by them (docs/migrating.md, "Models and adapters from other tools")."""

from __future__ import annotations

import json

import pytest
import torch

from sftlab.cli import main
from sftlab.models.tiny import save_tiny

OWN_TEMPLATE = ("{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] }}{% if m['role'] == 'assistant' %}"
                "{{ '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """base/ (the tiny qwen2), adapter/ (peft LoRA with its own tokenizer and chat template, as LLaMA-Factory saves
    one), bare/ (the same adapter without a tokenizer, as TRL may save one) and merged/ (merge_and_unload)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("peer")
    base = save_tiny("qwen2", root / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.3)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = OWN_TEMPLATE
    model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    model.save_pretrained(root / "bare")
    model.merge_and_unload().save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "merged")
    return root


def _generate(model_args: list[str], tmp_path, name: str) -> list[str]:
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n{"prompt": "tax"}\n', encoding="utf-8")
    out = tmp_path / f"{name}.jsonl"
    assert main(["generate", *model_args, "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
                 "--max-new-tokens", "4", "--template", "chatml"]) == 0
    return [json.loads(line)["output"] for line in out.read_text(encoding="utf-8").splitlines()]


def test_a_plain_adapter_generates_as_its_merged_model_and_as_an_adapter_of_its_base(peer, tmp_path):
    merged = _generate([str(peer / "merged")], tmp_path, "merged")
    assert _generate([str(peer / "bare")], tmp_path, "bare") == merged
    assert _generate([str(peer / "base"), "--adapter", str(peer / "bare")], tmp_path, "with") == merged
    assert _generate([str(peer / "base")], tmp_path, "base") != merged


def test_export_merges_a_plain_adapter_with_its_own_chat_template(peer, tmp_path):
    assert main(["export", str(peer / "adapter"), "--merge", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "chat_template.jinja").read_text(encoding="utf-8") == OWN_TEMPLATE
    assert main(["export", str(peer / "bare"), "--merge", str(tmp_path / "bare_out")]) == 0
    assert (tmp_path / "bare_out" / "chat_template.jinja").read_text(encoding="utf-8") != OWN_TEMPLATE  # the base's


def test_an_adapter_whose_base_is_a_hub_id_is_refused_in_one_line(peer, tmp_path, capsys):
    hub = tmp_path / "hub"
    hub.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (hub / name).write_bytes((peer / "bare" / name).read_bytes())
    config = json.loads((hub / "adapter_config.json").read_text(encoding="utf-8"))
    (hub / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n', encoding="utf-8")
    assert main(["generate", str(hub), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "base_model_name_or_path 'Qwen/Qwen2.5-0.5B' not found locally" in err and "\n" not in err


def test_eval_serve_and_training_take_a_plain_adapter(peer, tmp_path):
    from fastapi.testclient import TestClient

    from sftlab.infer.loading import load_served
    from sftlab.serve.app import create_app
    from sftlab.serve.config import ServeSettings

    data = tmp_path / "ev.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
                    + "\n", encoding="utf-8")
    losses = []
    for model in ("bare", "merged"):
        assert main(["eval", str(peer / model), "--data", str(data), "--task", "lm", "--out", str(tmp_path / model)]) == 0
        losses.append(json.loads((tmp_path / model / "metrics.json").read_text())["metrics"]["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)

    answers = []
    for served in (load_served(peer / "base", adapters={"lf": str(peer / "bare")}), load_served(peer / "merged")):
        with TestClient(create_app(served, ServeSettings(template="chatml"))) as client:
            reply = client.post("/v1/chat/completions", json={"model": served.names[-1], "max_tokens": 4, "temperature": 0,
                                                              "messages": [{"role": "user", "content": "hi"}]})
            answers.append(reply.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1]

    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {peer / 'bare'}}}\ndata: {{train: {data}}}\nstrategy: {{kind: lora}}\n"
                      f"train: {{max_steps: 1, batch_size: 1}}\noutput: {{dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    assert main(["train", str(config)]) == 0
    assert json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())["r"] == 4


def test_an_adapter_trained_with_added_tokens_loads_on_its_resized_base(peer, tmp_path):
    """docs/migrating.md says so; tests/test_foreign_adapters.py checks its logits, export and training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.infer.loading import load_served

    tokenizer = AutoTokenizer.from_pretrained(peer / "base")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|think|>", "<|/think|>"]})
    model = AutoModelForCausalLM.from_pretrained(peer / "base")
    model.resize_token_embeddings(len(tokenizer))
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"],
                                               task_type="CAUSAL_LM"))
    adapter.save_pretrained(tmp_path / "resized")
    tokenizer.save_pretrained(tmp_path / "resized")
    served = load_served(tmp_path / "resized")
    assert served.model.get_input_embeddings().num_embeddings == len(tokenizer)
