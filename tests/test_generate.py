"""Inference core and CLI: continuous batching equals one-at-a-time decoding, `sftlab generate`, `sftlab chat`."""

from __future__ import annotations

import io
import json

import pytest
import torch

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.infer.batch import DecodeBatch, Row
from sftlab.infer.engine import generate_all
from sftlab.infer.loading import load_served
from sftlab.infer.prompts import render_chat, stop_token_ids
from sftlab.infer.sampling import SamplingParams
from sftlab.infer.text import IncrementalText
from sftlab.models.tiny import ARCH_TEMPLATE, make_tiny_model, make_tokenizer, save_tiny, save_tiny_adapter



@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("tiny") / "tiny")


PROMPT_WORDS = ["hello", "The quick brown fox jumps over the lazy dog and", "tax", "Fine-tuning adapts a model", "企业所得税"]


def _run_batch(model, tok, groups, budgets):
    """Decode prompt groups: each group joins the running batch at a step boundary."""
    batch = DecodeBatch(model, tok.pad_token_id, set(), 2048)
    rows, pending = [], list(groups)
    for _ in range(200):
        if pending:
            group = [Row(ids, SamplingParams(max_new_tokens=budgets[len(rows) + i])) for i, ids in enumerate(pending.pop(0))]
            rows += group
            batch.admit(group)
        batch.step()
        if not pending and not len(batch):
            break
    return [row.generated for row in rows]


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "gpt2"])
def test_batched_greedy_equals_one_at_a_time_generate(arch):
    tok = make_tokenizer(ARCH_TEMPLATE[arch])
    model = make_tiny_model(arch, tok).eval()
    prompts = [tok(text, add_special_tokens=False)["input_ids"] for text in PROMPT_WORDS]
    assert len({len(p) for p in prompts}) > 3  # different lengths, so left padding matters
    budgets = [9, 4, 12, 6, 10]  # rows leave at different steps
    alone = []
    for ids, budget in zip(prompts, budgets):
        out = model.generate(torch.tensor([ids]), max_new_tokens=budget, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.pad_token_id)
        alone.append(out[0, len(ids):].tolist())
    assert _run_batch(model, tok, [prompts], budgets) == alone
    assert _run_batch(model, tok, [prompts[:2], prompts[2:4], prompts[4:]], budgets) == alone


def test_batched_greedy_equals_generate_past_the_sliding_window():
    tok = make_tokenizer("gemma")
    model = make_tiny_model("gemma3", tok).eval()  # every layer slides over a 64-token window
    prompts = [tok(text, add_special_tokens=False)["input_ids"] for text in PROMPT_WORDS[:3]]
    budgets = [80, 66, 75]
    alone = [model.generate(torch.tensor([ids]), max_new_tokens=budget, do_sample=False, eos_token_id=None,
                            pad_token_id=tok.pad_token_id)[0, len(ids):].tolist() for ids, budget in zip(prompts, budgets)]
    assert max(len(p) + b for p, b in zip(prompts, budgets)) > model.config.sliding_window
    assert _run_batch(model, tok, [prompts[:1], prompts[1:]], budgets) == alone


def test_seeded_sampling_does_not_depend_on_batch_company(tiny_dir):
    served = load_served(tiny_dir)
    prompts = [render_chat(served.tokenizer, [{"role": "user", "content": w}]) for w in PROMPT_WORDS[:3]]
    params = [SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7 + i) for i in range(3)]
    together = generate_all(served, prompts, params, set(), max_batch=3)
    apart = [generate_all(served, [p], [s], set(), max_batch=1)[0] for p, s in zip(prompts, params)]
    assert [r["text"] for r in together] == [r["text"] for r in apart]
    other_seed = generate_all(served, prompts[:1], [SamplingParams(max_new_tokens=8, temperature=0.9, seed=99)], set())
    assert other_seed[0]["text"] != together[0]["text"]


def test_incremental_text_holds_back_and_cuts_at_stop_string():
    tok = make_tokenizer("chatml")
    ids = tok("The quick brown fox jumps", add_special_tokens=False)["input_ids"]
    text = IncrementalText(tok, stop=("fox",))
    pieces = [text.push([i]) for i in ids]
    assert text.stopped and "".join(pieces) == "The quick brown "
    assert not any("f" in piece for piece in pieces)
    plain = IncrementalText(tok)
    assert "".join(plain.push([i]) for i in ids) + plain.finish() == "The quick brown fox jumps"


def test_stop_token_ends_answer_without_text(tiny_dir):
    served = load_served(tiny_dir)
    prompt = render_chat(served.tokenizer, [{"role": "user", "content": "hi"}])
    free = generate_all(served, [prompt], SamplingParams(max_new_tokens=6), set())[0]
    first = served.tokenizer(free["text"], add_special_tokens=False)["input_ids"][0]
    stopped = generate_all(served, [prompt], SamplingParams(max_new_tokens=6), {first})[0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == "" and stopped["completion_tokens"] == 0
    assert free["finish_reason"] == "length" and free["completion_tokens"] == 6


def _write_inputs(path):
    rows = [{"prompt": "hello"},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is the capital"},
                          {"role": "assistant", "content": "Paris"}]},
            {"instruction": "Summarise", "input": "tax relief for export", "output": "relief"},
            {"text": "The quick brown"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_generate_cli_batched_equals_batch_size_one(tiny_dir, tmp_path):
    _write_inputs(tmp_path / "in.jsonl")
    before = (tmp_path / "in.jsonl").read_bytes()
    base = ["generate", str(tiny_dir), "--input", str(tmp_path / "in.jsonl"), "--max-new-tokens", "7"]
    assert main(base + ["--output", str(tmp_path / "b.jsonl")]) == 0
    assert main(base + ["--output", str(tmp_path / "one.jsonl"), "--batch-size", "1"]) == 0
    batched = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len(batched) == 4 and [r["output"] for r in batched] == [r["output"] for r in single]
    assert (tmp_path / "in.jsonl").read_bytes() == before
    assert batched[1]["reference"] == "Paris" and batched[1]["messages"][-1]["content"] == "What is the capital"
    assert batched[2]["messages"][0]["role"] == "user" and "tax relief" in batched[2]["messages"][0]["content"]
    assert batched[3]["text"] == "The quick brown" and batched[0]["src"].endswith("in.jsonl:1")
    served = load_served(tiny_dir)
    ids = render_chat(served.tokenizer, [{"role": "user", "content": "hello"}])
    stops = stop_token_ids(served.tokenizer, served.model)
    assert generate_all(served, [ids], SamplingParams(max_new_tokens=7), stops)[0]["text"] == batched[0]["output"]


def test_generate_cli_errors_are_one_line(tiny_dir, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{"foo": 1}\n', encoding="utf-8")
    code = main(["generate", str(tiny_dir), "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "bad.jsonl:2" in err[-1]
    assert not (tmp_path / "o.jsonl").exists()
    same = ["generate", str(tiny_dir), "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "bad.jsonl")]
    assert main(same) == 2 and "never overwritten" in capsys.readouterr().err
    with pytest.raises(SftlabError, match="not a model directory"):
        load_served(tmp_path)


def test_an_output_that_is_a_directory_is_one_line_before_generating(tiny_dir, tmp_path, capsys, monkeypatch):
    """It was IsADirectoryError from os.replace after every answer had been generated."""
    from sftlab.commands import generate
    from sftlab.io import atomic_write_jsonl

    (tmp_path / "in.jsonl").write_text('{"prompt": "x"}\n', encoding="utf-8")
    (tmp_path / "answers").mkdir()
    monkeypatch.setattr(generate, "load_model", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    assert main(["generate", str(tiny_dir), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: --output {tmp_path} is a directory; expected the path of the JSONL "
                                       "file to write\n")
    with pytest.raises(SftlabError, match=rf"^{tmp_path / 'answers'} is a directory; expected the path of a file"):
        atomic_write_jsonl(tmp_path / "answers", [{"a": 1}])  # every atomic writer: one line, nothing replaced
    assert (tmp_path / "answers").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["answers", "in.jsonl"]


def test_load_errors_name_the_argument_or_file_that_gave_the_path(tiny_dir, tmp_path):
    """Every path was reported as model.path, which generate, chat, serve and eval do not have."""
    with pytest.raises(SftlabError, match=rf"^MODEL '{tmp_path}/nope': no such directory$"):
        load_served(tmp_path / "nope")
    with pytest.raises(SftlabError, match=rf"^--adapter legal '{tmp_path}/nope': no such directory$"):
        load_served(tiny_dir, adapters={"legal": str(tmp_path / "nope")})
    moved = tmp_path / "adapter"
    moved.mkdir()
    (moved / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/old/box/base"}))
    with pytest.raises(SftlabError, match=rf"^{moved}/adapter_config.json: base_model_name_or_path '/old/box/base': "
                                          "no such directory$"):
        load_served(moved)


def test_chat_cli_streams_answers_with_reset(tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nhello\nagain\n/exit\nnever read\n"))
    assert main(["chat", str(tiny_dir), "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    answers = captured.out.splitlines()
    assert len(answers) == 3 and answers[0] == answers[1]  # /reset: the same first turn gives the same answer
    assert "conversation reset" in captured.err
    served = load_served(tiny_dir)
    ids = render_chat(served.tokenizer, [{"role": "user", "content": "hello"}])
    expected = generate_all(served, [ids], SamplingParams(max_new_tokens=5), stop_token_ids(served.tokenizer, served.model))
    assert answers[0] == expected[0]["text"]


def test_run_dir_with_adapter_and_extra_adapters(tmp_path):
    base_dir = save_tiny("qwen2", tmp_path / "base")
    run = tmp_path / "run"
    for seed, where in [(1, run / "model"), (2, tmp_path / "other")]:
        save_tiny_adapter(base_dir, where, seed)
    (run / "config.yaml").write_text("data: {template: chatml}\n", encoding="utf-8")
    served = load_served(run, adapters={"other": str(tmp_path / "other")})
    assert served.names == ["run", "other"] and served.template == "chatml"
    prompt = render_chat(served.tokenizer, [{"role": "user", "content": "hello"}], "chatml")
    params = SamplingParams(max_new_tokens=6)
    texts = {name: generate_all(served, [prompt], params, set(), adapter=served.adapters[name])[0]["text"]
             for name in ("run", "other")}
    texts["base"] = generate_all(served, [prompt], params, set(), adapter=None)[0]["text"]
    assert len(set(texts.values())) == 3
    plain = load_served(base_dir)
    assert generate_all(plain, [prompt], params, set())[0]["text"] == texts["base"]
    with pytest.raises(SftlabError, match="not a PEFT adapter"):
        load_served(run, adapters={"x": str(base_dir)})
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n', encoding="utf-8")
    for model_arg, extra, name in [(run, [], "run"), (base_dir, ["--adapter", str(tmp_path / "other")], "other")]:
        out = tmp_path / f"{name}.jsonl"
        assert main(["generate", str(model_arg), *extra, "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
                     "--max-new-tokens", "6", "--template", "chatml"]) == 0
        assert json.loads(out.read_text())["output"] == texts[name]


def test_incremental_text_never_shows_half_a_character():
    tok = make_tokenizer("chatml")
    text = "猫和狗 fish 鸟"  # characters the tiny tokenizer never merged: one token per UTF-8 byte
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)
    stream = IncrementalText(tok)
    pieces = [stream.push([i]) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)


def test_scheduler_batches_one_adapter_at_a_time_oldest_first(tiny_dir):
    from contextlib import nullcontext
    from types import SimpleNamespace

    from sftlab.infer.engine import Request, Scheduler

    base = load_served(tiny_dir)
    seen: list[str | None] = []
    served = SimpleNamespace(model=base.model, tokenizer=base.tokenizer, max_context=base.max_context,
                             activate=lambda name: seen.append(name) or nullcontext())
    scheduler = Scheduler(served, set(), max_batch=8)
    prompt = render_chat(base.tokenizer, [{"role": "user", "content": "hi"}])
    order = []
    for name, budget in [("a", 6), ("b", 2), ("a", 2)]:
        scheduler.add(Request(prompt, SamplingParams(max_new_tokens=budget),
                              lambda e, n=name: e["type"] == "done" and order.append(n), adapter=name))
    scheduler.tick()
    assert [r.adapter for r in scheduler.running] == ["a"]  # the younger "a" waits behind the older "b"
    while not scheduler.idle:
        scheduler.tick()
        assert len({r.adapter for r in scheduler.running}) <= 1
    assert order == ["a", "b", "a"] and seen[:2] == ["a", "a"] and "b" in seen


def test_an_adapter_trained_on_a_4bit_base_is_served_with_a_note(tmp_path, capsys):
    base_dir = save_tiny("qwen2", tmp_path / "base")
    plain, qlora = save_tiny_adapter(base_dir, tmp_path / "plain", 1), save_tiny_adapter(base_dir, tmp_path / "q", 2)
    (tmp_path / "q" / "sftlab_qlora.json").write_text('{"quant_type": "nf4"}', encoding="utf-8")
    load_served(plain)
    assert "4-bit" not in capsys.readouterr().err
    load_served(plain, adapters={"q": qlora})
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: adapter q was trained on a 4-bit (NF4) base")


def test_generate_all_decodes_with_the_served_tokenizer_and_the_engine_with_its_own_copy(tiny_dir, monkeypatch):
    """Copying Gemma 3's tokenizer takes about 2 s: `generate_all` (one thread) does not; the serving Engine, whose
    callers tokenize in other threads, does."""
    from sftlab.infer import engine

    served = load_served(tiny_dir)
    prompt = served.tokenizer("hello")["input_ids"]
    monkeypatch.setattr(engine.copy, "deepcopy", lambda value: pytest.fail("copied the tokenizer"))
    done = generate_all(served, [prompt], SamplingParams(max_new_tokens=3), set())
    assert done[0]["type"] == "done"
    copies = []
    monkeypatch.setattr(engine.copy, "deepcopy", lambda value: copies.append(value) or value)
    engine.Engine(served, set())
    assert copies == [served.tokenizer]
