"""Likelihood scoring equals a direct per-pair computation; batched generation equals one-by-one; the training hook."""

import copy
from types import SimpleNamespace

import pytest
import torch

from sftlab.config.load import load_config
from sftlab.data.templates import encode_conversation
from sftlab.eval import hooks, metrics, scoring, tasks
from sftlab.models.tiny import make_tiny_model, make_tokenizer

LABELS = ["yes", "no", "maybe later"]  # different token lengths, so padding is exercised
PROMPTS = [[{"role": "user", "content": "Is the sky blue?"}],
           [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "是否符合高新技术企业认定条件？"}],
           [{"role": "user", "content": "ok"}]]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    tok = make_tokenizer("chatml")
    return make_tiny_model("qwen2", tok, seed=3), tok


def direct_logprob(model, tok, prompt, answer):
    """Sum of log p(token) over the supervised answer tokens, from one unpadded forward pass."""
    ids, labels = encode_conversation(tok, prompt + [{"role": "assistant", "content": answer}], "auto", "last_assistant")
    model.eval()  # no dropout
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logprobs[i - 1, labels[i]]) for i in range(1, len(ids)) if labels[i] != -100)


def test_label_scores_equal_direct_sums_and_argmax(tiny):
    model, tok = tiny
    batched = scoring.score_continuations(model, tok, PROMPTS, [LABELS] * len(PROMPTS), batch_size=4)
    for prompt, row in zip(PROMPTS, batched):
        direct = [direct_logprob(model, tok, prompt, label) for label in LABELS]
        assert row == pytest.approx(direct, abs=1e-4)
    examples = [{"messages": p + [{"role": "assistant", "content": "yes"}]} for p in PROMPTS]
    predicted, probs, _ = tasks.predict_labels(model, tok, examples, LABELS, tasks.EvalOptions(batch_size=2))
    for prompt, label, p in zip(PROMPTS, predicted, probs):
        direct = [direct_logprob(model, tok, prompt, name) for name in LABELS]
        assert label == LABELS[max(range(3), key=direct.__getitem__)]
        assert sum(p) == pytest.approx(1.0)


def test_label_scores_equal_direct_sums_gpt2_absolute_positions_and_dropout():
    tok = make_tokenizer("chatml")
    model = make_tiny_model("gpt2", tok, hidden=32, layers=1).train()  # scoring must switch dropout off
    batched = scoring.score_continuations(model, tok, PROMPTS, [LABELS] * len(PROMPTS), batch_size=4)
    assert model.training  # and restore the mode it found
    for prompt, row in zip(PROMPTS, batched):
        assert row == pytest.approx([direct_logprob(model, tok, prompt, label) for label in LABELS], abs=1e-4)


def test_supervised_tokens_end_with_end_of_turn(tiny):
    _, tok = tiny
    ids, labels = scoring.encode_answer(tok, PROMPTS[0], "yes")
    supervised = [t for t in labels if t != -100]
    assert supervised[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(supervised[:-1]) == "yes"


def test_batched_generation_equals_one_by_one(tiny):
    model, tok = tiny
    together = scoring.generate_texts(model, tok, PROMPTS, max_new_tokens=6, batch_size=3)
    alone = [scoring.generate_texts(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert together == alone
    sampled = [scoring.generate_texts(model, tok, PROMPTS[:1], max_new_tokens=6, do_sample=True, seed=7)[0] for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded sampling repeats


def test_lm_loss_counts_supervised_tokens_only(tiny):
    model, tok = tiny
    examples = [{"messages": p + [{"role": "assistant", "content": "yes"}]} for p in PROMPTS]
    result, rows = tasks.run_lm(model, tok, examples, tasks.EvalOptions())
    direct = [direct_logprob(model, tok, p, "yes") for p in PROMPTS]
    supervised = sum(sum(1 for t in encode_conversation(tok, e["messages"], "auto", "assistant")[1] if t != -100)
                     for e in examples)
    assert result["tokens"] == supervised
    assert result["loss"] == pytest.approx(-sum(direct) / supervised, abs=1e-4)


def test_ranking_scores_text_candidates_in_one_pass(tiny):
    model, tok = tiny
    query = {"query": "q1", "messages": PROMPTS[0], "candidates": [
        {"id": "a", "text": "yes", "relevant": 1}, {"id": "b", "text": "no", "relevant": 0},
        {"id": "c", "text": "maybe later", "relevant": 0}]}
    result, rows = tasks.run_ranking(model, tok, [query], tasks.EvalOptions(ks=[1, 3]))
    direct = {c["id"]: direct_logprob(model, tok, PROMPTS[0], c["text"]) for c in query["candidates"]}
    assert [r["id"] for r in rows[0]["ranking"]] == sorted(direct, key=lambda k: -direct[k])
    assert result["hit_rate@3"] == 1.0 and result["hit_rate@1"] == float(max(direct, key=direct.get) == "a")


def _cfg(tmp_path, metric, **eval_extra):
    return load_config(None, base={"model": {"path": str(tmp_path)}, "data": {"train": "x.jsonl", "template": "auto"},
                                   "eval": {"metric": metric, **eval_extra}})


def test_hook_returns_task_metrics_for_the_configured_metric(tiny, tmp_path):
    model, tok = tiny
    val = [{"messages": p + [{"role": "assistant", "content": label}], "_src": f"val:{i}"}
           for i, (p, label) in enumerate(zip(PROMPTS, ["yes", "no", "yes"]))]
    prepared = SimpleNamespace(val_examples=val, label_names=None)
    values = hooks.task_metrics(model, tok, prepared, _cfg(tmp_path, "macro_f1"))
    expected, _ = tasks.run_labels(model, tok, val, tasks.EvalOptions())
    assert values["macro_f1"] == pytest.approx(expected["macro_f1"]) and "accuracy" in values
    assert hooks.task_metrics(model, tok, prepared, _cfg(tmp_path, "loss")) == {}
    assert hooks.task_for_metric("ndcg@5") == "ranking" and hooks.task_for_metric("rouge_l") == "generation"
    assert hooks.task_for_metric("map") == "ranking"


def test_hook_rejects_unknown_metric_and_ranking_without_rows(tiny, tmp_path):
    from sftlab.errors import SftlabError

    model, tok = tiny
    prepared = SimpleNamespace(val_examples=[{"messages": PROMPTS[0] + [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(SftlabError, match="eval.metric 'f2'"):
        hooks.task_metrics(model, tok, prepared, _cfg(tmp_path, "f2"))
    with pytest.raises(SftlabError, match="eval.data"):
        hooks.task_metrics(model, tok, prepared, _cfg(tmp_path, "ndcg@5"))


def test_ranking_pair_candidates_use_positive_label_probability(tiny):
    model, tok = tiny
    pairs = [[{"role": "user", "content": f"Does policy {p} fit enterprise 7? Answer yes or no."}] for p in ("A", "B")]
    query = {"query": "q", "candidates": [{"id": "A", "messages": pairs[0], "relevant": 0},
                                          {"id": "B", "messages": pairs[1], "relevant": 1}]}
    _, rows = tasks.run_ranking(model, tok, [query], tasks.EvalOptions(ks=[1]))
    expected = {}
    for cand, prompt in zip(query["candidates"], pairs):
        direct = [direct_logprob(model, tok, prompt, label) for label in ("yes", "no")]
        expected[cand["id"]] = scoring.softmax(direct)[0]
    assert {r["id"]: r["score"] for r in rows[0]["ranking"]} == pytest.approx(expected, abs=1e-5)


def test_hook_for_generation_metrics_and_cls_head(tmp_path):
    tok = make_tokenizer("chatml")
    lm = make_tiny_model("qwen2", tok, seed=1, hidden=32, layers=1)
    val = [{"messages": p + [{"role": "assistant", "content": "yes"}]} for p in PROMPTS]
    values = hooks.task_metrics(lm, tok, SimpleNamespace(val_examples=val), _cfg(tmp_path, "rouge_l", max_new_tokens=3))
    assert {"exact_match", "bleu", "rouge1", "rouge2", "rouge_l"} <= set(values) and "n" not in values

    classifier = make_tiny_model("qwen2", tok, task="cls", num_labels=2, seed=1, hidden=32, layers=1)
    classifier.config.pad_token_id = tok.pad_token_id
    cls_val = [{"text": f"example {i}", "label": name} for i, name in enumerate(["neg", "pos", "pos", "neg"])]
    cfg = _cfg(tmp_path, "accuracy")
    cfg.train.stage = "cls"
    values = hooks.task_metrics(classifier, tok, SimpleNamespace(val_examples=cls_val, label_names=["neg", "pos"]), cfg)
    probs = scoring.classify_with_head(classifier, tok, [e["text"] for e in cls_val])
    predicted = [["neg", "pos"][int(p[1] > p[0])] for p in probs]
    assert values["accuracy"] == pytest.approx(sum(p == e["label"] for p, e in zip(predicted, cls_val)) / 4)


def test_long_prompts_are_cut_from_the_left(tiny):
    model, tok = tiny
    long_prompt = [{"role": "user", "content": "word " * 200}]
    ids, labels = scoring.encode_answer(tok, long_prompt, "yes")
    cut = scoring.supervised_logprobs(model, [(ids, labels)], max_length=32)[0]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids[-32:]])).logits[0].float(), dim=-1)
    tail = labels[-32:]
    direct = sum(float(logprobs[i - 1, tail[i]]) for i in range(1, 32) if tail[i] != -100)
    assert cut == (pytest.approx(direct, abs=1e-4), sum(t != -100 for t in labels))
    assert len(ids) > 32


def test_over_long_chats_are_scored_on_the_tokens_training_keeps(tmp_path, monkeypatch):
    """eval kept the last max_length tokens without the BOS token that data.truncation left keeps."""
    from sftlab.config.schema import DataConfig, TrainConfig
    from sftlab.data.tokenize import tokenize_examples

    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer("llama3")
    model = make_tiny_model("llama", tok, seed=2, hidden=32, layers=1)
    chat = {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "yes indeed"}]}
    rows, stats = tokenize_examples([chat], tok, DataConfig(train="x", template="llama3", truncation="left"),
                                    TrainConfig(stage="sft", max_length=32))
    trained = (list(rows[0]["input_ids"]), list(rows[0]["labels"]))
    assert stats.cut_left == 1 and len(trained[0]) == 32 and trained[0][0] == tok.bos_token_id
    expected = scoring.supervised_logprobs(model, [trained])[0]
    metrics, predictions = tasks.run_lm(model, tok, [chat], tasks.EvalOptions(template="llama3", max_length=32))
    assert (-predictions[0]["nll"], predictions[0]["tokens"]) == (pytest.approx(expected[0], abs=1e-5), expected[1])

    seen = []  # generation prompts are cut the same way: BOS, then the prompt's last tokens
    monkeypatch.setattr(model, "generate", lambda input_ids, **kw: seen.append(input_ids[0].tolist()) or input_ids)
    scoring.generate_texts(model, tok, [chat["messages"][:1]], "llama3", max_length=32)
    prompt = scoring.prompt_ids(tok, chat["messages"][:1], "llama3")
    assert len(prompt) > 32 and seen == [prompt[:1] + prompt[-31:]] and prompt[0] == tok.bos_token_id


def test_hook_label_set_includes_labels_seen_only_in_training(tiny, tmp_path):
    model, tok = tiny
    val = [{"messages": p + [{"role": "assistant", "content": label}]} for p, label in zip(PROMPTS, ["yes", "no", "yes"])]
    train = [{"messages": PROMPTS[0] + [{"role": "assistant", "content": "maybe later"}]}]
    values = hooks.task_metrics(model, tok, SimpleNamespace(val_examples=val, train_examples=train), _cfg(tmp_path, "macro_f1"))
    expected, _ = tasks.run_labels(model, tok, val, tasks.EvalOptions(labels=sorted(LABELS)))
    val_only, _ = tasks.run_labels(model, tok, val, tasks.EvalOptions())
    assert hooks._labels_seen(train + val) == sorted(LABELS) and expected["labels"] == sorted(LABELS)
    assert values == pytest.approx({k: v for k, v in metrics.scalar_metrics(expected).items() if k != "n"})
    # the training-only label is never a reference here and this model never predicts it, so it is not averaged
    assert expected["per_class"]["maybe later"]["support"] == 0 and all(row[0] == 0 for row in expected["confusion"]["matrix"])
    assert values["macro_f1"] == pytest.approx(val_only["macro_f1"])


def test_generated_labels_keep_unparseable_answers(tiny):
    model, tok = tiny
    examples = [{"messages": p + [{"role": "assistant", "content": label}]} for p, label in zip(PROMPTS, ["yes", "no", "yes"])]
    result, rows = tasks.run_labels(model, tok, examples, tasks.EvalOptions(label_method="generate", max_new_tokens=3))
    parsed = [tasks.parse_label(row["generated"], ["no", "yes"]) for row in rows]
    assert [row["prediction"] for row in rows] == parsed and len(rows) == 3
    assert result["unparseable"] == parsed.count(None)
    assert sum(line[-1] for line in result["confusion"]["matrix"]) == parsed.count(None)  # shown, never dropped
    assert result["n"] == 3


def test_hook_ranking_reads_eval_data(tiny, tmp_path):
    import json

    model, tok = tiny
    query = {"query": "q", "messages": PROMPTS[0], "candidates": [
        {"id": "a", "text": "yes", "relevant": 1}, {"id": "b", "text": "no", "relevant": 0}]}
    path = tmp_path / "rank.jsonl"
    path.write_text(json.dumps(query) + "\n" + json.dumps(dict(query, query="r")) + "\n")
    cfg = _cfg(tmp_path, "ndcg@2", data=str(path))
    values = hooks.task_metrics(model, tok, SimpleNamespace(val_examples=[]), cfg)
    assert "ndcg@2" in values and "mrr" in values and "queries" not in values
    direct, _ = tasks.run_ranking(model, tok, [query], tasks.EvalOptions(ks=[1, 2]))
    assert values["ndcg@2"] == pytest.approx(direct["ndcg@2"]) and values["mrr"] == pytest.approx(direct["mrr"])


def test_lm_loss_encodes_conversations_as_training_did(tiny):
    """mask each_assistant: a conversation's loss is the sum over its per-turn samples (as training makes them);
    an example's tools reach the template (a template that lists them gives longer prompts)."""
    from test_templates import LAST_TURN_THINKS, TWO_TURNS

    model, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = LAST_TURN_THINKS
    whole, _ = tasks.run_lm(model, tok, [{"messages": TWO_TURNS}], tasks.EvalOptions(mask="each_assistant"))
    turns, per_turn = tasks.run_lm(model, tok, [{"messages": TWO_TURNS[:2]}, {"messages": TWO_TURNS}],
                                   tasks.EvalOptions(mask="last_assistant"))
    assert whole["tokens"] == sum(row["tokens"] for row in per_turn)
    assert whole["loss"] == pytest.approx(sum(row["nll"] for row in per_turn) / whole["tokens"], rel=1e-5)
    tok.chat_template = ("{% if tools %}<|im_start|>system\ntools:{% for t in tools %} {{ t['function']['name'] }}"
                         "{% endfor %}<|im_end|>\n{% endif %}" + LAST_TURN_THINKS)
    example = {"messages": TWO_TURNS[:2], "tools": [{"type": "function", "function": {"name": "f"}}]}
    with_tools = scoring.encode_for_loss(tok, example, "auto", "assistant")[0][0]
    without = scoring.encode_for_loss(tok, {"messages": TWO_TURNS[:2]}, "auto", "assistant")[0][0]
    assert tok.decode(with_tools).startswith("<|im_start|>system\ntools: f") and len(with_tools) > len(without)
