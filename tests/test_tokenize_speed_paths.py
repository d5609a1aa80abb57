"""The fast paths of tokenising many rows give what one-at-a-time encoding gives: sft rows rendered a chunk at a time
and tokenized in one call per chunk (the first text through transformers, the rest from the Rust backend), the
vectorised `fit_length`, and `sftlab data stats --tokenizer` (batched, with a progress bar on a terminal)."""

from __future__ import annotations

import copy
import io
import random

import pytest
from test_tool_calls import MESSAGES as TOOL_MESSAGES
from test_tool_calls import TOOL_TEMPLATE, TOOLS

from tokenizers import processors

from sftlab.data import tokenize as tk
from sftlab.data.messages import mask_samples
from sftlab.data.templates import encode_conversation, encode_rendered, encode_rendered_batch, render_conversation
from sftlab.datawork import stats as st
from sftlab.models.tiny import make_tokenizer

IGNORE = -100


@pytest.fixture(scope="module")
def toks():
    chatml, llama3 = make_tokenizer("chatml"), make_tokenizer("llama3")
    tools = copy.deepcopy(chatml)
    tools.chat_template = TOOL_TEMPLATE
    marked = copy.deepcopy(chatml)  # its backend adds a token to plain text: the Rust path must not add it
    marked.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{marked.eos_token} $A", special_tokens=[(marked.eos_token, marked.eos_token_id)])
    return {"chatml": chatml, "llama3": llama3, "tools": tools, "marked": marked}


def turn(role, content):
    return {"role": role, "content": content}


def mixed(n: int = 23, tools: bool = False) -> list[dict]:
    """Single- and multi-turn conversations (with system turns), short and far longer than max_length."""
    rng, out = random.Random(7), []
    for i in range(n):
        answer = " ".join(rng.choice(["tax", "relief", "crepes", "flour", "milk", "Paris", "21"]) for _ in range(
            rng.choice([2, 10, 60])))
        messages = [turn("user", f"question {i}? " * rng.choice([1, 20])), turn("assistant", answer)]
        if i % 3 == 0:
            messages = [turn("system", "Be brief.")] + messages + [turn("user", "More?"), turn("assistant", "No.")]
        out.append({"messages": messages, "_src": f"c.jsonl:{i + 1}"})
    if tools:
        out.insert(5, {"messages": TOOL_MESSAGES, "tools": TOOLS, "_src": "t.jsonl:1"})
    return out


def one_at_a_time(examples, tok, settings):
    """The rows as `encode_conversation` and `fit_length` make them, one sample at a time."""
    rows = []
    for index, ex in enumerate(examples):
        for sample, mask in mask_samples([dict(m) for m in ex["messages"]], settings["mask"]):
            ids, labels = encode_conversation(tok, sample, settings["template"], mask, ex["_src"], ex.get("tools"))
            ids, labels, status = tk.fit_length(ids, labels, settings["max_length"], settings["truncation"],
                                                settings["mask"] == "all", tok.bos_token_id)
            if status in ("ok", "cut_left") and all(label == IGNORE for label in labels):
                status = "dropped_no_supervised"
            if not status.startswith("dropped"):
                rows.append((index, len(sample), ids, labels))
    return rows


@pytest.mark.parametrize("name", ["chatml", "llama3", "tools", "marked"])
@pytest.mark.parametrize("mask", ["assistant", "last_assistant", "each_assistant", "all"])
@pytest.mark.parametrize("truncation", ["left", "drop"])
def test_chunked_rows_equal_one_at_a_time_rows(toks, name, mask, truncation, monkeypatch):
    tok, examples = toks[name], mixed(tools=name == "tools")
    settings = {"stage": "sft", "max_length": 48, "template": "auto", "mask": mask, "truncation": truncation}
    expected = one_at_a_time(examples, tok, settings)
    results = []
    for chunk in (1, 4, 256):  # 1: every text goes through transformers; more: all but a chunk's first from Rust
        monkeypatch.setattr(tk, "_CHUNK", chunk)
        results.append(tk._tokenize(examples, tok, settings, 1))
    for rows, stats, origins in results:
        got = [(index, end, ids, labels) for (index, end), ids, labels in
               zip(origins, rows["input_ids"], rows["labels"])]
        assert got == expected
        assert stats == results[0][1]
        assert stats.rows == len(expected) and stats.examples >= len(examples)
    stats = results[0][1]
    assert (stats.cut_left if truncation == "left" else stats.dropped_too_long) > 0  # long rows were cut or dropped


def test_forked_workers_give_the_chunked_rows(toks):
    settings = {"stage": "sft", "max_length": 48, "template": "auto", "mask": "each_assistant", "truncation": "left"}
    examples = mixed(40)
    one = tk._tokenize(examples, toks["chatml"], settings, 1)
    two = tk._tokenize(examples, toks["chatml"], settings, 2)
    assert one[0] == two[0] and one[1] == two[1] and one[2] == two[2]


def test_batch_encoding_equals_single_encoding_and_tolerates_empty_input(toks):
    tok = toks["chatml"]
    rendered = [render_conversation(tok, ex["messages"], mask="assistant") for ex in mixed(6)]
    assert encode_rendered_batch(tok, rendered) == [encode_rendered(tok, r) for r in rendered]
    assert encode_rendered_batch(tok, []) == []


@pytest.mark.parametrize("labels, expected", [
    ([IGNORE, IGNORE, 3, 4, IGNORE, 6, 7, 8], ([1, 6, 7, 8], [IGNORE, 6, 7, 8], "cut_left")),  # the last answer whole
    ([IGNORE, 2, 3, 4, IGNORE, IGNORE, 7, 8], ([1, 6, 7, 8], [IGNORE, IGNORE, 7, 8], "cut_left")),
    ([IGNORE, IGNORE, 3, 4, 5, 6, 7, 8], None),  # the answer alone is longer than what is left after BOS
    ([IGNORE] * 8, None),
    ([1, 2, 3, 4, 5, 6, 7, 8], None),  # one answer from the first token
])
def test_fit_length_keeps_the_last_answer_whole(labels, expected):
    ids = list(range(1, 9))
    got = tk.fit_length(ids, labels, 4, "left", bos_id=1)
    if expected is None:
        assert got[2] == ("dropped_no_supervised" if labels == [IGNORE] * 8 else "dropped_answer_too_long")
        assert got[:2] == (ids, labels)
    else:
        assert got == expected


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_stats_token_lengths_equal_one_at_a_time_and_show_a_bar_on_a_terminal(toks, monkeypatch):
    tok = toks["tools"]
    examples = mixed(9, tools=True) + [{"text": "a plain document", "_src": "p:1"},
                                       {"text": "short text", "label": "x", "_src": "k:1"}]
    expected_lengths, expected_supervised = [], 0
    for ex in examples:
        if "messages" in ex:
            for sample, mask in mask_samples(ex["messages"], "each_assistant"):
                ids, labels = encode_conversation(tok, sample, mask=mask, src=ex["_src"], tools=ex.get("tools"))
                expected_lengths.append(len(ids))
                expected_supervised += sum(1 for label in labels if label != IGNORE)
        else:
            ids = tok(ex["text"], add_special_tokens=True)["input_ids"]
            expected_lengths.append(len(ids))
            expected_supervised += len(ids) if "label" not in ex else 0
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(st, "_CHUNK", 4)  # chunks that split an example's samples from the next example's
    lengths, supervised, _ = st._sequence_lengths(examples, tok, "auto", "each_assistant")
    assert (lengths, supervised) == (expected_lengths, expected_supervised)
    assert "token lengths" in terminal.getvalue() and f"{len(examples)}/{len(examples)}" in terminal.getvalue()
    texts = ["", "a b c", "Paris " * 30]
    assert st._token_counts(tok, texts) == [0] + [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts[1:]]
    assert st._token_counts(None, texts) == [0, 5, 180]
