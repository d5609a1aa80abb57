"""A saved model carries its training chat template: Jinja parity, generation_config stop ids, sftlab_template.json,
the infer loader and eval on RUN/model, RUN/best, checkpoints and merged exports, and `export --merge --dtype`."""

from __future__ import annotations

import json

import pytest
import torch

from sftlab.cli import main
from sftlab.data.template_jinja import faithful_jinja
from sftlab.data.templates import encode_conversation, render_prompt
from sftlab.errors import SftlabError
from sftlab.models.chat_files import TEMPLATE_RECORD, carry_chat_template, trained_template
from sftlab.models.tiny import make_tiny_model, make_tokenizer, save_tiny
from test_templates import CONVERSATIONS, _ids
from test_train_loop import tiny_run, train

# (built-in template, tokenizer family): every pairing whose tokenizer has the template's tokens
PAIRS = [("chatml", "chatml"), ("llama3", "llama3"), ("gemma", "gemma"), ("mistral", "mistral"),
         ("mistral", "llama3"), ("plain", "chatml"), ("plain", "gemma"), ("plain", "none"),
         ("raw", "chatml"), ("raw", "gemma"), ("raw", "none")]


@pytest.mark.parametrize("template, family", PAIRS)
@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_jinja_gives_the_ids_sftlab_trains_on(template, family, case):
    tok, messages = make_tokenizer(family), CONVERSATIONS[case]
    tok.chat_template = faithful_jinja(tok, template)
    assert tok.chat_template is not None
    assert _ids(tok.apply_chat_template(messages, tokenize=True)) == encode_conversation(tok, messages, template)[0]
    prompt = _ids(tok.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True))
    assert prompt == render_prompt(tok, messages[:-1], template)


def test_jinja_refuses_what_sftlab_refuses():
    tok = make_tokenizer("gemma")
    tok.chat_template = faithful_jinja(tok, "gemma")
    late_system = [{"role": "user", "content": "Hi"}, {"role": "system", "content": "No."}]
    with pytest.raises(SftlabError, match="only as the first message"):
        render_prompt(tok, late_system, "gemma")
    with pytest.raises(Exception, match="only as the first message"):
        tok.apply_chat_template(late_system, tokenize=False)


def test_a_jinja_that_renders_differently_is_never_written(monkeypatch):
    from sftlab.data import template_jinja

    real = template_jinja.builtin_jinja
    monkeypatch.setattr(template_jinja, "builtin_jinja", lambda spec, fill: real(spec, fill).replace("\\n", " "))
    tok = make_tokenizer("chatml")
    own = tok.chat_template
    assert faithful_jinja(tok, "chatml") is None
    model = make_tiny_model("qwen2", tok, hidden=32, layers=1)
    with carry_chat_template(model, tok, "chatml") as record:
        assert tok.chat_template == own  # left as it was; only the record names the template
    assert record["template"] == "chatml" and record["chat_template_matches"] is False


def test_trained_template_per_stage():
    assert trained_template({"train": {"stage": "sft"}, "data": {}}) == "auto"
    assert trained_template({"train": {"stage": "sft"}, "data": {"template": "gemma"}}) == "gemma"
    assert trained_template({"train": {"stage": "pt"}, "data": {"template": "auto"}}) is None
    assert trained_template({"train": {"stage": "pt"}, "data": {"template": "chatml"}}) == "chatml"
    assert trained_template({"train": {"stage": "cls"}, "data": {"template": "chatml"}}) is None


def _base_without_chat_template(tmp_path):
    """A tiny qwen2 base like Qwen2.5 base models: EOS <|endoftext|> (not <|im_end|>) and no chat template."""
    from transformers import AutoTokenizer

    out = save_tiny("qwen2", tmp_path / "base", hidden=32, layers=1)
    tok = AutoTokenizer.from_pretrained(out)
    tok.eos_token, tok.chat_template = "<|endoftext|>", None
    (out / "chat_template.jinja").unlink()
    tok.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template is None
    for name in ("config.json", "generation_config.json"):
        raw = json.loads((out / name).read_text())
        raw["eos_token_id"] = tok.eos_token_id
        (out / name).write_text(json.dumps(raw))
    return out, tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id


def _sft_run(tmp_path, base, name, template, **groups):
    raw = tiny_run(tmp_path, "qwen2", name=name, data={"template": template, "validation": str(tmp_path / "train.jsonl")},
                   train={"max_steps": 2, "save_every_n_steps": 2}, eval={"every_n_steps": 2}, **groups)
    raw["model"]["path"] = str(base)
    train(raw)
    return tmp_path / name


def _check_saved(directory, im_end, eos):
    from transformers import AutoTokenizer

    from sftlab.infer.loading import describe_source

    assert json.loads((directory / TEMPLATE_RECORD).read_text())["template"] == "chatml"
    assert describe_source(directory).template == "chatml"
    saved = AutoTokenizer.from_pretrained(directory)
    for messages in CONVERSATIONS.values():
        assert _ids(saved.apply_chat_template(messages, tokenize=True)) == encode_conversation(saved, messages, "chatml")[0]
    if (directory / "config.json").is_file():  # a full model (an adapter has no generation config of its own)
        eos_ids = json.loads((directory / "generation_config.json").read_text())["eos_token_id"]
        assert eos_ids[0] == eos and im_end in eos_ids


@pytest.mark.parametrize("template", ["chatml", "auto"])  # auto: no tokenizer template, so the chatml fallback
def test_full_run_saves_template_and_stop_ids(tmp_path, template):
    from sftlab.infer.loading import load_served
    from sftlab.infer.prompts import stop_token_ids
    from sftlab.models.trained import trained_settings

    base, im_end, eos = _base_without_chat_template(tmp_path)
    run = _sft_run(tmp_path, base, "run", template)
    for directory in (run / "model", run / "best", run / "checkpoints" / "step-2"):
        _check_saved(directory, im_end, eos)
    served = load_served(run / "best")
    assert served.template == "chatml" and im_end in stop_token_ids(served.tokenizer, served.model, served.template)
    (run / "config.yaml").unlink()  # a model directory on its own still names its template
    assert trained_settings(run / "model").template == "chatml"


def test_named_template_replaces_a_different_tokenizer_template(tmp_path):
    from transformers import AutoTokenizer

    raw = tiny_run(tmp_path, "llama", data={"template": "llama3"})
    train(raw)
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert saved.chat_template == faithful_jinja(saved, "llama3") != make_tokenizer("llama3").chat_template


def test_merged_export_carries_template_in_bfloat16(tmp_path, capsys):
    from safetensors import safe_open

    from sftlab.infer.loading import describe_source
    from sftlab.models.trained import trained_settings

    base, im_end, eos = _base_without_chat_template(tmp_path)
    run = _sft_run(tmp_path, base, "lora", "chatml", strategy={"kind": "lora", "lora": {"rank": 4}})
    _check_saved(run / "model", im_end, eos)
    out = tmp_path / "merged"
    assert main(["export", str(run), "--merge", str(out), "--dtype", "bfloat16"]) == 0
    assert "(saved in bfloat16:" in capsys.readouterr().out
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.bfloat16}
    record = json.loads((out / "sftlab_export.json").read_text())
    assert record["dtype"] == "bfloat16" and record["template"] == "chatml"
    assert record["max_abs_logit_diff"] < 1e-4 and record["max_abs_logit_diff_after_cast"] > 0
    _check_saved(out, im_end, eos)
    assert trained_settings(out).template == "chatml"
    # a run saved before sftlab_template.json existed: the template comes from its config.yaml
    (run / "model" / TEMPLATE_RECORD).unlink()
    assert main(["export", str(run), "--merge", str(tmp_path / "merged32")]) == 0
    assert describe_source(tmp_path / "merged32").template == "chatml"
    with safe_open(str(tmp_path / "merged32" / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.float32}


def test_export_bad_dtype_is_a_clear_error(tmp_path, capsys):
    from sftlab.commands.export import merge_adapter

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), "--merge", str(tmp_path / "out"), "--dtype", "int8"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: sftlab export: unknown --dtype 'int8'; choose from float32, bfloat16, "
                                       "float16\n")
    with pytest.raises(SftlabError, match=r"--dtype 'int8': expected one of float32, bfloat16, float16"):
        merge_adapter(tmp_path, tmp_path / "out", dtype="int8")
    assert not (tmp_path / "out").exists()


def _answers_one_word_then_im_end(base, im_end) -> int:
    """Rewrite the tiny base so that greedy decoding answers any prompt with one fixed token, then <|im_end|>, then the
    token again, ...: with every layer's output projections zeroed the last hidden state is the current token's
    embedding; that token's embedding and <|im_end|>'s output row share one direction, every other token's another."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    word = AutoTokenizer.from_pretrained(base)("Paris", add_special_tokens=False)["input_ids"][0]
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_(), head.zero_()
        embed[:, 0] = 1.0
        embed[word, 0], embed[word, 1] = 0.0, 1.0
        head[word, 0], head[im_end, 1] = 1.0, 1.0
    model.save_pretrained(base)
    return word


def test_lora_run_model_stops_at_the_end_of_turn_token(tmp_path):
    """A LoRA run's model/ has no generation_config.json and its base's EOS is <|endoftext|>: serve and generate
    still stop at <|im_end|>, because their stop ids come from the template the adapter records."""
    import httpx

    from sftlab.infer.engine import generate_all
    from sftlab.infer.loading import load_served
    from sftlab.infer.prompts import render_chat, stop_token_ids
    from sftlab.infer.sampling import SamplingParams
    from sftlab.serve.config import ServeSettings
    from sftlab.serve.server import ServerThread

    base, im_end, eos = _base_without_chat_template(tmp_path)
    word = _answers_one_word_then_im_end(base, im_end)
    run = _sft_run(tmp_path, base, "lora", "chatml", strategy={"kind": "lora", "lora": {"rank": 4}})
    model_dir = run / "model"
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "generation_config.json").exists()
    served = load_served(model_dir)
    assert served.template == "chatml" and served.model.generation_config.eos_token_id == eos
    text = served.tokenizer.decode([word])
    prompt = render_chat(served.tokenizer, [{"role": "user", "content": "hi"}], served.template)
    assert prompt[-1] != word
    params = SamplingParams(max_new_tokens=6)
    for stops in (set(), {eos}):  # without the template's stop ids (the base's EOS alone) it runs to max_tokens
        assert generate_all(served, [prompt], params, stops)[0]["finish_reason"] == "length"
    stops = stop_token_ids(served.tokenizer, served.model, served.template)
    assert im_end in stops
    answer = generate_all(served, [prompt], params, stops)[0]
    assert (answer["text"], answer["finish_reason"], answer["completion_tokens"]) == (text, "stop", 1)
    body = {"model": served.default_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
            "temperature": 0}
    with ServerThread(served, ServeSettings(port=0)) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    assert reply["choices"][0]["message"]["content"] == text and reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 1
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n', encoding="utf-8")
    assert main(["generate", str(model_dir), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "6"]) == 0
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert (row["output"], row["finish_reason"], row["completion_tokens"]) == (text, "stop", 1)
