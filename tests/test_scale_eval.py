"""`sftlab eval` on large files: classification batches are sorted by length (less padding) with the order of the
rows kept, pairs and lm rows are encoded one chunk at a time rather than all before scoring, prediction rows are made
as they are written, and the slow passes draw a progress bar on a terminal. Behaviour only, no timings."""

import io
import json
import sys

import pytest
import torch

from sftlab import progress
from sftlab.eval import run, scoring, tasks
from sftlab.models.tiny import make_tiny_model, make_tokenizer

TEXTS = ["short", "a much longer text with many more words in it than the others " * 3, "mid length text here",
         "x", "another fairly long one, with commas, and more words " * 2, "tiny", "medium sized sentence"]
PROMPTS = [[{"role": "user", "content": text}] for text in TEXTS]
LABELS = ["yes", "no", "maybe later"]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    tok = make_tokenizer("chatml")
    return make_tiny_model("qwen2", tok, seed=3, hidden=32, layers=1), tok


@pytest.fixture(scope="module")
def classifier():
    tok = make_tokenizer("none")
    return make_tiny_model("bert", tok, task="cls", num_labels=3, seed=1, hidden=32, layers=1), tok


class _Widths:
    """Records the (rows, width) of each batch the model's forward sees."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))


def test_classification_batches_are_sorted_by_length_and_rows_keep_their_order(classifier):
    model, tok = classifier
    widths = _Widths(model)
    batched = scoring.classify_with_head(model, tok, TEXTS, batch_size=3, max_length=64)
    widths.handle.remove()
    one_by_one = [scoring.classify_with_head(model, tok, [text], batch_size=1, max_length=64)[0] for text in TEXTS]
    for got, want in zip(batched, one_by_one):
        assert got == pytest.approx(want, abs=1e-5)  # each text keeps its own probabilities, in input order
    lengths = sorted(len(tok(text, truncation=True, max_length=64)["input_ids"]) for text in TEXTS)
    assert widths.shapes == [(len(lengths[i:i + 3]), max(lengths[i:i + 3])) for i in range(0, len(lengths), 3)]


def test_pairs_are_encoded_one_chunk_at_a_time_with_the_same_scores(lm, monkeypatch):
    model, tok = lm
    whole = scoring.score_continuations(model, tok, PROMPTS, [LABELS] * len(PROMPTS), batch_size=4)
    encoded, seen_at_forward = [], []
    encode = scoring.encode_answer
    monkeypatch.setattr(scoring, "encode_answer", lambda *a, **k: encoded.append(1) or encode(*a, **k))
    hook = model.base_model.register_forward_pre_hook(lambda *_: seen_at_forward.append(len(encoded)))
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 5)
    try:
        chunked = scoring.score_continuations(model, tok, PROMPTS, [LABELS] * len(PROMPTS), batch_size=2)
    finally:
        hook.remove()
    assert len(encoded) == len(PROMPTS) * len(LABELS) == 21
    assert seen_at_forward[0] == 5  # the first batch ran when one chunk, not all 21 pairs, had been encoded
    for got, want in zip(chunked, whole):
        assert got == pytest.approx(want, abs=1e-4)


def test_lm_task_scores_chunk_by_chunk_with_the_same_loss(lm, monkeypatch):
    model, tok = lm
    examples = [{"_src": f"f:{i}", "messages": p + [{"role": "assistant", "content": LABELS[i % 3]}]}
                for i, p in enumerate(PROMPTS)] + [{"_src": "f:8", "text": "plain text " * 40}]
    opts = tasks.EvalOptions(batch_size=3, max_length=32)  # the text is scored in several windows
    whole, rows = tasks.run_lm(model, tok, examples, opts)
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 2)
    chunked, chunked_rows = tasks.run_lm(model, tok, examples, opts)
    assert chunked["tokens"] == whole["tokens"] and chunked["loss"] == pytest.approx(whole["loss"], abs=1e-5)
    assert [(r["_src"], r["tokens"]) for r in chunked_rows] == [(r["_src"], r["tokens"]) for r in rows]
    assert [r["nll"] for r in chunked_rows] == pytest.approx([r["nll"] for r in rows], abs=1e-4)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("what", ["pairs", "lm", "head", "generation"])
def test_slow_passes_draw_a_progress_bar_on_a_terminal(lm, classifier, monkeypatch, what):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setattr(progress, "BAR_DELAY_S", 0)  # these passes are fast; a real one draws after a second
    model, tok = classifier if what == "head" else lm
    if what == "pairs":
        scoring.score_continuations(model, tok, PROMPTS, [LABELS] * len(PROMPTS), batch_size=4)
    elif what == "lm":
        tasks.run_lm(model, tok, [{"text": text} for text in TEXTS], tasks.EvalOptions())
    elif what == "head":
        scoring.classify_with_head(model, tok, TEXTS, batch_size=4)
    else:
        scoring.generate_texts(model, tok, PROMPTS[:2], max_new_tokens=2)
    shown = sys.stderr.getvalue()
    expected = {"pairs": f"scoring pairs:   0%|          | 0/{len(PROMPTS) * len(LABELS)}",
                "lm": f"scoring examples:   0%|          | 0/{len(TEXTS)}",
                "head": f"classifying texts:   0%|          | 0/{len(TEXTS)}",
                "generation": "generating prompts:   0%|          | 0/2"}[what]
    assert expected in shown


def test_label_predictions_are_made_as_they_are_read_and_written(classifier, tmp_path):
    model, tok = classifier
    examples = [{"_src": f"f:{i}", "text": text, "label": ["a", "b", "c"][i % 3]} for i, text in enumerate(TEXTS)]
    opts = tasks.EvalOptions(label_method="head", labels=["a", "b", "c"])
    result, predictions = tasks.run_labels(model, tok, examples, opts)
    assert isinstance(predictions, tasks.LabelRows) and len(predictions) == len(TEXTS)  # rows made when read
    assert predictions[-1] == list(predictions)[-1] and predictions[1:3] == list(predictions)[1:3]
    run.write_outputs(tmp_path, {"metrics": {}}, predictions, {})
    written = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [row["_src"] for row in written] == [e["_src"] for e in examples]
    assert [row["reference"] for row in written] == [e["label"] for e in examples]
    assert all(sorted(row["probs"]) == ["a", "b", "c"] for row in written)
    assert result["n"] == len(TEXTS)


def test_a_pass_shorter_than_the_delay_draws_no_bar(lm, monkeypatch):
    """A policy API request or a small validation set: no bar flashing on the console."""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setattr(progress, "BAR_DELAY_S", 3600)
    model, tok = lm
    scoring.score_continuations(model, tok, PROMPTS, [LABELS] * len(PROMPTS), batch_size=4)
    assert sys.stderr.getvalue() == ""


def test_equal_pairs_are_scored_once_and_tie_whatever_the_batch(lm, monkeypatch):
    """Which batch a pair lands in changed the float rounding of its score, so two equal candidates did not tie."""
    model, tok = lm
    seen = []
    real = scoring.encode_answer
    monkeypatch.setattr(scoring, "encode_answer", lambda *args: seen.append(args[2]) or real(*args))
    prompts = [PROMPTS[0], [dict(m) for m in PROMPTS[0]], PROMPTS[1]]  # the second equals the first
    candidates = [["yes", "no", "yes"], ["no", "maybe"], ["yes"]]
    scores = scoring.score_continuations(model, tok, prompts, candidates, batch_size=1)
    assert sorted(seen) == sorted(["yes", "no", "maybe", "yes"])  # 4 distinct pairs of 6
    assert scores[0][0] == scores[0][2] and scores[1][0] == scores[0][1]
    again = scoring.score_continuations(model, tok, prompts, candidates, batch_size=4)
    assert [x for row in again for x in row] == pytest.approx([x for row in scores for x in row], abs=1e-4)
