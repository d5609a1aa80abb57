"""Acceptance walk of cls training with data.balance: class weights in data_stats.json and the loss, and
balance settings the stage cannot use (refused in one line instead of silently doing nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sftlab.config.load import load_config
from sftlab.errors import SftlabError

INTENTS = {"card_arrival": 8, "exchange_rate": 4, "pin_blocked": 2, "top_up_failed": 1}
WORDS = {"card_arrival": "where is my card", "exchange_rate": "what rate do you use",
         "pin_blocked": "my pin is blocked", "top_up_failed": "the top up did not work"}


def cls_rows() -> list[dict]:
    rows = [{"text": f"{WORDS[label]} please {i}", "label": label} for label, n in INTENTS.items() for i in range(n)]
    return rows[::2] + rows[1::2]  # labels interleaved, not grouped by class


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from sftlab.models.tiny import save_tiny

    out = tmp_path_factory.mktemp("bert") / "bert"
    save_tiny("bert", out, hidden=32, layers=1)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # a deterministic forward to recompute
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    from sftlab.models.tiny import save_tiny

    return save_tiny("qwen2", tmp_path_factory.mktemp("qwen") / "qwen2", hidden=32, layers=1)


def run_config(tmp_path: Path, model_dir: Path, rows: list[dict], **groups) -> dict:
    raw = {"model": {"path": str(model_dir)},
           "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", rows)), "cache_dir": str(tmp_path / "cache")},
           "train": {"stage": "cls", "max_steps": 1, "batch_size": 4, "lr": 1e-3, "max_length": 32},
           "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    for group, values in groups.items():
        raw.setdefault(group, {}).update(values)
    return raw


def test_class_weights_recorded_in_data_stats_and_used_by_the_loss(tmp_path, bert_dir):
    from sftlab.data.collate import make_collator
    from sftlab.data.pipeline import prepare_data
    from sftlab.train import run_training
    from sftlab.train.batches import epoch_micro_batches
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "pin_blocked", "top_up_failed"]  # one absent
    # lr so small that the one step leaves the weights as they were: model/ is then the model the loss was taken on
    cfg = load_config(None, [], base=run_config(tmp_path, bert_dir, cls_rows(), train={"lr": 1e-30},
                                                data={"balance": "class_weight", "labels": labels}))
    result = run_training(cfg, show_progress=False)

    counts = Counter(row["label"] for row in cls_rows())
    n, k = sum(counts.values()), len(counts)  # sklearn "balanced": n_samples / (n_classes * count), classes present
    expected = {name: (n / (k * counts[name]) if counts[name] else 1.0) for name in labels}
    stats = json.loads((result.out_dir / "data_stats.json").read_text())
    recorded = stats["balance"]["class_weights"]
    assert list(recorded) == labels  # in the head's row order
    assert recorded == pytest.approx(expected)
    assert stats["balance"]["method"] == "class_weight"

    # the first logged loss is the class-weighted cross-entropy of the first micro-batch, summed over its
    # examples and divided by their count (docs/train.md, "Loss normalisation"), with the recorded weights
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    prepared = prepare_data(cfg, tokenizer)
    first = epoch_micro_batches(len(prepared.train), 4, cfg.train.seed, 0)[0]
    batch = make_collator(False, tokenizer.pad_token_id)([prepared.train[i] for i in first])
    model = AutoModelForSequenceClassification.from_pretrained(result.out_dir / "model").eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    weight = torch.tensor([recorded[name] for name in labels])
    target = batch["labels"]
    by_hand = float((weight[target] * F.cross_entropy(logits, target, reduction="none")).sum() / len(target))
    unweighted = float(F.cross_entropy(logits, target))
    assert result.losses[0] == pytest.approx(by_hand, rel=1e-5)
    assert abs(by_hand - unweighted) > 1e-3  # the weights do change this batch's loss


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_class_weight_outside_cls_is_refused(tmp_path, qwen_dir, stage):
    from sftlab.data.pipeline import prepare_data
    from transformers import AutoTokenizer

    if stage == "sft":
        rows = [{"messages": [{"role": "user", "content": row["text"]}, {"role": "assistant", "content": row["label"]}]}
                for row in cls_rows()]
    else:
        rows = [{"text": row["text"]} for row in cls_rows()]
    raw = run_config(tmp_path, qwen_dir, rows, data={"balance": "class_weight"}, train={"stage": stage, "max_length": 128})
    with pytest.raises(SftlabError) as info:  # at config load: plan and the board's Check refuse it too
        load_config(None, [], base=raw)
    message = str(info.value)
    assert "\n" not in message and "data.balance=class_weight" in message and f"stage {stage}" in message
    cfg = load_config(None, [], base={**raw, "data": {**raw["data"], "balance": "none"}})
    unchecked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"balance": "class_weight"})})
    with pytest.raises(SftlabError, match="data.balance=class_weight"):  # the pipeline's own guard, same words
        prepare_data(unchecked, AutoTokenizer.from_pretrained(qwen_dir))


def test_class_weight_outside_cls_is_one_line_from_the_cli(tmp_path, qwen_dir):
    rows = [{"text": row["text"]} for row in cls_rows()]
    raw = run_config(tmp_path, qwen_dir, rows, data={"balance": "class_weight"}, train={"stage": "pt"})
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(raw))
    done = subprocess.run([sys.executable, "-m", "sftlab", "train", str(config), "--no-progress",
                           "train.allocator=system"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.balance=class_weight" in errors[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_class_weight_refused_for_a_pt_stream(tmp_path, qwen_dir):
    from sftlab.data.streaming import prepare_streaming
    from transformers import AutoTokenizer

    rows = [{"text": row["text"]} for row in cls_rows()]
    raw = run_config(tmp_path, qwen_dir, rows, data={"balance": "class_weight", "streaming": True},
                     train={"stage": "pt", "max_steps": 2})
    with pytest.raises(SftlabError, match="^config: data.balance=class_weight"):
        load_config(None, [], base=raw)
    cfg = load_config(None, [], base={**raw, "data": {**raw["data"], "balance": "none"}})
    unchecked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"balance": "class_weight"})})
    with pytest.raises(SftlabError, match="^data.balance=class_weight"):
        prepare_streaming(unchecked, AutoTokenizer.from_pretrained(qwen_dir))


def test_undersample_with_a_label_set_class_missing_from_train_is_refused(tmp_path, bert_dir):
    from sftlab.data.pipeline import prepare_data
    from transformers import AutoTokenizer

    labels = [*INTENTS, "lost_or_stolen_card"]
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "i lost my card", "label": "lost_or_stolen_card"},
                                                      {"text": "where is my card", "label": "card_arrival"}])
    cfg = load_config(None, [], base=run_config(tmp_path, bert_dir, cls_rows(), data={
        "balance": "undersample", "labels": labels, "validation": str(validation)}))
    with pytest.raises(SftlabError) as info:
        prepare_data(cfg, AutoTokenizer.from_pretrained(bert_dir))
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.balance=undersample: data.labels has label "
                                                      "'lost_or_stolen_card' with no training example")
    assert "(it is in the validation split only)" in message


def test_resampling_touches_the_training_split_only(tmp_path, bert_dir):
    """oversample / undersample give the documented counts on train; validation (a stratified share) keeps its
    true counts and no duplicated training example reaches it."""
    from sftlab.data.pipeline import prepare_data
    from transformers import AutoTokenizer

    names = {"a": "alpha", "b": "beta", "c": "gamma"}
    rows = [{"text": f"{names[label]} {i}", "label": label} for label, n in {"a": 12, "b": 8, "c": 4}.items()
            for i in range(n)]
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    for method, per_class in (("oversample", 9), ("undersample", 3)):
        cfg = load_config(None, [], base=run_config(tmp_path, bert_dir, rows, data={
            "balance": method, "val_ratio": 0.25, "split": "stratified"}))
        prepared = prepare_data(cfg, tokenizer)
        train_counts = Counter(ex["label"] for ex in prepared.train_examples)
        val_counts = Counter(ex["label"] for ex in prepared.val_examples)
        assert val_counts == {"a": 3, "b": 2, "c": 1}  # each class's share kept, not resampled
        assert train_counts == {"a": per_class, "b": per_class, "c": per_class}
        val_texts = {ex["text"] for ex in prepared.val_examples}
        assert not val_texts & {ex["text"] for ex in prepared.train_examples}
        assert prepared.stats["balance"]["before"] == {"a": 9, "b": 6, "c": 3}
        assert prepared.stats["label_distribution"]["validation"] == {"a": 3, "b": 2, "c": 1}
