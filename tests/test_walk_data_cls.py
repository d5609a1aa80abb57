"""Walk of labelled data for training: data.balance resamples what tokenisation kept (so the trained counts are
balanced and data_stats.json tells them), oversample refuses a data.labels class it cannot fill, and preview
keeps `file:line` under data.mask=each_assistant."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from sftlab.config.load import load_config
from sftlab.errors import SftlabError

LONG = " ".join(["word"] * 120)  # far over max_length 64 with the tiny tokenizer


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    from sftlab.models.tiny import save_tiny

    return save_tiny("qwen2", tmp_path_factory.mktemp("qwen") / "qwen2", hidden=32, layers=1)


@pytest.fixture(scope="module")
def tokenizer(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


def chat(question: str, *answers: str) -> dict:
    turns = []
    for number, answer in enumerate(answers):
        turns += [{"role": "user", "content": f"{question} {number}"}, {"role": "assistant", "content": answer}]
    return {"messages": turns}


def yes_no_rows() -> list[dict]:
    """yes: 12 examples, 9 of them too long for max_length 64 (dropped); no: 5 short ones."""
    rows = [chat(f"is it {i}" + (f" {LONG}" if i >= 3 else ""), "yes") for i in range(12)]
    rows += [chat(f"not {i}", "no") for i in range(5)]
    return rows[::2] + rows[1::2]


def run_config(tmp_path: Path, model_dir: Path, rows: list[dict], **data) -> dict:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"model": {"path": str(model_dir)},
            "data": {"train": str(path), "cache_dir": str(tmp_path / "cache"), **data},
            "train": {"stage": "sft", "max_steps": 1, "batch_size": 2, "lr": 1e-3, "max_length": 64},
            "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}


def trained_answers(rows, tokenizer) -> Counter:
    """The supervised text of each token row (its answer), decoded: what the loss actually sees."""
    answers = Counter()
    for row in rows:
        supervised = [token for token in row["labels"] if token != -100]
        answers[tokenizer.decode(supervised).replace("<|im_end|>", "").strip()] += 1
    return answers


def test_oversample_balances_the_rows_that_train_and_data_stats_says_so(tmp_path, qwen_dir, tokenizer):
    from sftlab.data.pipeline import prepare_data
    from sftlab.train import run_training

    cfg = load_config(None, [], base=run_config(tmp_path, qwen_dir, yes_no_rows(), balance="oversample"))
    result = run_training(cfg, show_progress=False)
    stats = json.loads((result.out_dir / "data_stats.json").read_text())
    assert stats["train"]["dropped_too_long"] == 9
    assert stats["balance"]["examples"] == {"yes": 12, "no": 5}  # what was loaded
    assert stats["balance"]["before"] == {"no": 5, "yes": 3}  # what tokenisation kept
    assert stats["balance"]["after"] == {"no": 5, "yes": 5}  # what trains
    assert stats["train"]["rows"] == 10

    prepared = prepare_data(cfg, tokenizer)  # the same rows the run trained on (cached)
    assert trained_answers(prepared.train, tokenizer) == {"yes": 5, "no": 5}
    assert prepared.stats["train"]["tokens"] == sum(prepared.train.lengths())
    assert Counter(ex["messages"][-1]["content"] for ex in prepared.train_examples) == {"yes": 5, "no": 5}


def test_undersample_after_drops_and_each_assistant_samples(tmp_path, qwen_dir, tokenizer):
    from sftlab.data.pipeline import prepare_data

    cfg = load_config(None, [], base=run_config(tmp_path, qwen_dir, yes_no_rows(), balance="undersample"))
    prepared = prepare_data(cfg, tokenizer)
    assert trained_answers(prepared.train, tokenizer) == {"yes": 3, "no": 3}
    assert prepared.stats["balance"]["after"] == {"no": 3, "yes": 3}
    assert prepared.stats["train"]["rows"] == len(prepared.train) == 6

    # each_assistant: a two-answer conversation trains as two samples, each labelled by its own answer
    rows = [chat(f"pick {i}", "red", "blue") for i in range(2)] + [chat(f"only {i}", "red") for i in range(3)]
    cfg = load_config(None, [], base=run_config(tmp_path, qwen_dir, rows, balance="oversample", mask="each_assistant"))
    prepared = prepare_data(cfg, tokenizer)
    assert prepared.stats["balance"]["before"] == {"red": 5, "blue": 2}
    assert trained_answers(prepared.train, tokenizer) == {"red": 5, "blue": 5}


def test_cls_balance_stats_agree_with_the_rows(tmp_path, qwen_dir):
    from sftlab.data.pipeline import prepare_data
    from sftlab.models.tiny import save_tiny
    from transformers import AutoTokenizer

    bert = save_tiny("bert", tmp_path / "bert", task="cls", num_labels=2, hidden=32, layers=1)
    rows = [{"text": f"good {i}" + (f" {LONG}" if i else ""), "label": "pos"} for i in range(6)]
    rows += [{"text": f"bad {i}", "label": "neg"} for i in range(2)]
    raw = run_config(tmp_path, bert, [], balance="oversample")
    Path(raw["data"]["train"]).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    raw["train"]["stage"] = "cls"
    prepared = prepare_data(load_config(None, [], base=raw), AutoTokenizer.from_pretrained(bert))
    from_rows = Counter(prepared.label_names[row["label"]] for row in prepared.train)
    assert from_rows == {"pos": 6, "neg": 6}  # cls truncates long texts, it never drops them
    assert prepared.stats["train"]["label_counts"] == from_rows == prepared.stats["label_distribution"]["train"]
    assert prepared.stats["balance"]["after"] == dict(from_rows)


@pytest.mark.parametrize("method", ["oversample", "undersample"])
def test_a_data_labels_class_without_training_rows_is_refused(tmp_path, qwen_dir, tokenizer, method):
    from sftlab.data.pipeline import prepare_data

    rows = [{"text": f"good {i}", "label": "pos"} for i in range(3)] + [{"text": "bad", "label": "neg"}]
    raw = run_config(tmp_path, qwen_dir, [], balance=method, labels=["pos", "neg", "meh"])
    Path(raw["data"]["train"]).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    raw["train"]["stage"] = "cls"
    with pytest.raises(SftlabError) as info:
        prepare_data(load_config(None, [], base=raw), tokenizer)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"data.balance={method}: data.labels has label 'meh' with no training example")

    # sft with data.labels: every "yes" sample too long is a class tokenisation emptied
    rows = [chat(f"is it {i} {LONG}", "yes") for i in range(3)] + [chat("not", "no")]
    cfg = load_config(None, [], base=run_config(tmp_path, qwen_dir, rows, balance=method, labels=["yes", "no"]))
    with pytest.raises(SftlabError) as info:
        prepare_data(cfg, tokenizer)
    message = str(info.value)
    assert "\n" not in message and "data.labels has label 'yes'" in message
    assert "tokenisation dropped every training sample of 'yes'" in message


def test_preview_names_file_and_line_under_each_assistant(tmp_path, qwen_dir, capsys):
    from sftlab.cli import main

    rows = [chat("first", "a1", "a2"), chat("second", "b1")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (tmp_path / "run.yaml").write_text(
        f"model: {{path: {qwen_dir}}}\ndata: {{train: train.jsonl, cache_dir: cache, mask: each_assistant}}\n"
        "train: {stage: sft, max_length: 128}\n", encoding="utf-8")
    assert main(["data", "preview", str(tmp_path / "run.yaml"), "-n", "3"]) == 0
    out = capsys.readouterr().out
    headers = re.findall(r"--- sample \d (\S*): \d+ tokens", out)
    assert len(headers) == 3 and all(re.search(r"train\.jsonl:[12]$", src) for src in headers)
    for answer in ("a1", "a2", "b1"):  # each row's header names the line its conversation is on
        header = next(line for line in out.split("\n--- ") if f"[[{answer}<|im_end|>]]" in line).splitlines()[0]
        assert header.split(": ")[0].endswith(":1" if answer.startswith("a") else ":2")
