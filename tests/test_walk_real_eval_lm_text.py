"""`sftlab eval --task lm` scores a long text whole (found evaluating Gemma 3 270M on Chinese laws).

Each law is thousands of tokens; with `--max-length 256` the lm task kept only the last 256 tokens of each document
(`tokens: 765` for three laws of 2,300-3,300 characters), so the reported perplexity came from the documents'
tails while docs/eval.md said every token after the first is scored."""

from __future__ import annotations

import json

import pytest
import torch

from sftlab.eval import scoring, tasks
from sftlab.models.tiny import make_tiny_model, make_tokenizer

TEXT = "企业所得税法 第一条 在中华人民共和国境内，企业和其他取得收入的组织为企业所得税的纳税人。" * 3


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    tok = make_tokenizer("chatml")
    return make_tiny_model("qwen2", tok, hidden=32, layers=1, seed=5).eval(), tok


def _ids(tok):
    ids = tok(TEXT)["input_ids"]
    return ids + [tok.eos_token_id] if ids[-1] != tok.eos_token_id else ids


def _direct(model, ids, scored_from):
    """Sum of log p(ids[i] | ids[:i]) for i >= scored_from, from one unpadded forward pass over `ids`."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logprobs[i - 1, ids[i]]) for i in range(max(scored_from, 1), len(ids)))


@pytest.mark.parametrize("max_length", [7, 16, 33])
def test_a_long_text_is_scored_whole_in_windows(tiny, max_length):
    model, tok = tiny
    ids = _ids(tok)
    assert len(ids) > 3 * max_length
    result, rows = tasks.run_lm(model, tok, [{"text": TEXT, "_src": "laws.jsonl:1"}],
                                tasks.EvalOptions(max_length=max_length))
    assert result["tokens"] == rows[0]["tokens"] == len(ids) - 1  # every token after the first, once
    windows = tasks.text_windows(ids, max_length)
    assert all(len(window) <= max_length for window, _ in windows)
    assert [t for _, labels in windows for t in labels[1:] if t != scoring.IGNORE] == ids[1:]
    expected = sum(_direct(model, window, 1) for window, _ in windows)
    assert rows[0]["nll"] == pytest.approx(-expected, abs=1e-3)


def test_a_text_that_fits_is_one_row(tiny):
    model, tok = tiny
    ids = _ids(tok)
    assert tasks.text_windows(ids, len(ids)) == [(ids, ids)]
    result, rows = tasks.run_lm(model, tok, [{"text": TEXT}], tasks.EvalOptions(max_length=len(ids)))
    assert result["tokens"] == len(ids) - 1
    assert rows[0]["nll"] == pytest.approx(-_direct(model, ids, 1), abs=1e-3)


def test_eval_cli_reports_every_token_of_a_long_text(tmp_path):
    from sftlab.cli import main
    from sftlab.models.tiny import save_tiny

    model_dir = save_tiny("qwen2", tmp_path / "m", hidden=32, layers=1)
    data = tmp_path / "laws.jsonl"
    data.write_text(json.dumps({"text": TEXT}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["eval", str(model_dir), "--data", str(data), "--task", "lm", "--max-length", "16",
                 "--out", str(tmp_path / "out")]) == 0
    from transformers import AutoTokenizer

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert metrics["tokens"] == len(_ids(AutoTokenizer.from_pretrained(model_dir))) - 1
