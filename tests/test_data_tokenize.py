"""Token rows for pt/sft/cls: block packing, truncation policies with counts, labels, cache, prepare_data."""

from __future__ import annotations

import json

import pytest
import torch

from sftlab.config.load import validate_config
from sftlab.config.schema import DataConfig, TrainConfig
from sftlab.data.pipeline import prepare_data
from sftlab.data.token_cache import cache_root
from sftlab.data.tokenize import IGNORE_INDEX, fit_length, label_set, tokenize_examples
from sftlab.errors import SftlabError
from sftlab.train.loss import count_supervised_tokens
from sftlab.models.tiny import make_tokenizer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def chatml():
    return make_tokenizer("chatml")


@pytest.fixture(scope="module")
def llama3():
    return make_tokenizer("llama3")


def docs(*texts):
    return [{"text": t, "_src": f"d.jsonl:{i + 1}"} for i, t in enumerate(texts)]


def chat(user: str, answer: str, src: str = "c.jsonl:1"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], "_src": src}


def test_pt_concat_cuts_blocks_across_documents(chatml):
    texts = ["The quick brown fox jumps over the lazy dog."] * 3 + ["What is the capital of France?"]
    rows, stats = tokenize_examples(docs(*texts), chatml, DataConfig(train="x"), TrainConfig(stage="pt", max_length=16))
    stream = [t for text in texts for t in chatml(text)["input_ids"] + [chatml.eos_token_id]]
    assert [t for row in rows["input_ids"] for t in row] == stream  # every token kept, in order, EOS between documents
    assert all(len(row) == 16 for row in rows["input_ids"][:-1]) and rows["input_ids"] == rows["labels"]
    assert stats.tail_tokens == len(stream) % 16 and stats.rows == -(-len(stream) // 16) and stats.tokens == len(stream)
    # the loss predicts every token but each row's first: data_stats counted those too (one per row more than
    # training's supervised tokens)
    labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(row) for row in rows["labels"]], batch_first=True,
                                             padding_value=IGNORE_INDEX)
    assert stats.supervised_tokens == count_supervised_tokens(labels) == len(stream) - stats.rows


def test_pt_document_mode_truncates_and_counts(chatml):
    rows, stats = tokenize_examples(docs("short", "hello world " * 20), chatml, DataConfig(train="x", pt_mode="document"),
                                    TrainConfig(stage="pt", max_length=12))
    assert [len(r) for r in rows["input_ids"]] == [len(chatml("short")["input_ids"]) + 1, 12]
    assert stats.truncated == 1 and stats.rows == 2
    long_ids = chatml("hello world " * 20)["input_ids"] + [chatml.eos_token_id]
    assert stats.truncated_tokens == len(long_ids) - 12 > 0  # the tokens cut from the document's end
    _, cached = tokenize_examples(docs("short", "hello world " * 20), chatml, DataConfig(train="x", pt_mode="document"),
                                  TrainConfig(stage="pt", max_length=12))
    assert cached.cache_hit and cached.truncated_tokens == stats.truncated_tokens


def test_cls_truncation_counts_the_tokens_cut():
    bert = make_tokenizer("none")
    long_text = "good " * 20
    examples = [{"text": "good", "label": "pos", "_src": "c:1"}, {"text": long_text, "label": "pos", "_src": "c:2"}]
    rows, stats = tokenize_examples(examples, bert, DataConfig(train="x"), TrainConfig(stage="cls", max_length=8))
    assert (stats.truncated, len(rows["input_ids"][1])) == (1, 8)
    assert stats.truncated_tokens == len(bert(long_text)["input_ids"]) - 8 > 0


def test_cls_labels_index_into_label_set_and_unknown_label_fails():
    bert = make_tokenizer("none")
    examples = [{"text": "good", "label": "pos", "_src": "c.csv:2"}, {"text": "bad", "label": "neg", "_src": "c.csv:3"}]
    rows, stats = tokenize_examples(examples, bert, DataConfig(train="x"), TrainConfig(stage="cls", max_length=8))
    assert rows["label"] == [1, 0] and stats.label_counts == {"neg": 1, "pos": 1}
    assert rows["input_ids"][0][0] == bert.cls_token_id and rows["input_ids"][0][-1] == bert.sep_token_id
    odd = examples + [{"text": "meh", "label": "neutral", "_src": "c.csv:4"}]
    with pytest.raises(SftlabError, match=r"c.csv:4: label 'neutral' is not in the label set \(neg, pos\)"):
        tokenize_examples(odd, bert, DataConfig(train="x", labels=["neg", "pos"]), TrainConfig(stage="cls", max_length=8))
    assert label_set([{"label": "10"}, {"label": "2"}], DataConfig(train="x")) == ["2", "10"]


def test_sft_rows_supervise_only_the_answer(chatml):
    rows, stats = tokenize_examples([chat("Hi", "Hello")], chatml, DataConfig(train="x", template="chatml"),
                                    TrainConfig(stage="sft", max_length=64))
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    assert len(ids) == len(labels) and stats.rows == 1
    supervised = [t for t in labels if t != IGNORE_INDEX]
    assert chatml.decode(supervised).startswith("Hello") and stats.supervised_tokens == len(supervised)


def test_sft_truncation_drop_and_left_with_counts(llama3):
    examples = [chat("hi " * 30, "short answer", "c:1"), chat("q", "long answer " * 30, "c:2"), chat("q", "ok", "c:3")]
    train = TrainConfig(stage="sft", max_length=32)
    _, dropped = tokenize_examples(examples, llama3, DataConfig(train="x", template="llama3", truncation="drop"), train)
    assert (dropped.rows, dropped.dropped_too_long, dropped.cut_left) == (1, 2, 0)
    rows, cut = tokenize_examples(examples, llama3, DataConfig(train="x", template="llama3", truncation="left"), train)
    assert (cut.rows, cut.cut_left, cut.dropped_answer_too_long) == (2, 1, 1)
    first = rows[0]
    assert len(first["input_ids"]) == 32 and first["input_ids"][0] == llama3.bos_token_id  # BOS kept
    assert llama3.decode([t for t in first["labels"] if t != IGNORE_INDEX]).startswith("short answer")


def test_fit_length_edge_cases():
    assert fit_length([1, 2, 3], [-100, 2, 3], 3, "drop") == ([1, 2, 3], [-100, 2, 3], "ok")
    assert fit_length([1, 2, 3, 4], [-100, -100, 3, 4], 3, "left")[2] == "cut_left"
    assert fit_length([1, 2, 3, 4], [-100, -100, 3, 4], 3, "left", bos_id=1) == ([1, 3, 4], [-100, 3, 4], "cut_left")
    assert fit_length([1, 2, 3, 4], [-100, 2, 3, 4], 2, "left")[2] == "dropped_answer_too_long"
    assert fit_length([1, 2, 3, 4], [1, 2, 3, 4], 2, "left", all_supervised=True) == ([3, 4], [3, 4], "cut_left")


def test_sample_without_supervised_tokens_is_dropped_and_counted(llama3, monkeypatch):
    import sftlab.data.templates as templates

    real = templates.render_conversation

    def render(tokenizer, messages, *args, **kwargs):  # a template that supervises nothing for the "silent" answer
        rendered = real(tokenizer, messages, *args, **kwargs)
        return templates.Rendered(rendered.text, []) if messages[-1]["content"] == "silent" else rendered

    monkeypatch.setattr(templates, "render_conversation", render)
    examples = [chat("q", "ok", "c:1"), chat("q", "silent", "c:2")]
    cfg = DataConfig(train="x", template="llama3")
    rows, stats = tokenize_examples(examples, llama3, cfg, TrainConfig(stage="sft", max_length=64))
    assert (stats.rows, stats.dropped_no_supervised) == (1, 1) and len(rows) == 1


def test_nothing_left_after_tokenisation_is_an_error(llama3):
    cfg = DataConfig(train="x", template="llama3", truncation="left")
    with pytest.raises(SftlabError, match="no example is left after tokenisation .*1 with an answer longer than max_length"):
        tokenize_examples([chat("q", "a long answer " * 5)], llama3, cfg, TrainConfig(stage="sft", max_length=6))


def test_cache_hit_is_identical_and_settings_change_the_key(chatml, tmp_path):
    examples = docs("The quick brown fox jumps over the lazy dog.", "What is the capital of France?")
    data, train = DataConfig(train="x"), TrainConfig(stage="pt", max_length=8)
    first, stats1 = tokenize_examples(examples, chatml, data, train)
    second, stats2 = tokenize_examples(examples, chatml, data, train)
    assert not stats1.cache_hit and stats2.cache_hit and stats1.cache_path == stats2.cache_path
    assert first.to_dict() == second.to_dict()
    assert stats2.cache_path.startswith(str(tmp_path / "cache" / "tokenized"))
    _, stats3 = tokenize_examples(examples, chatml, data, TrainConfig(stage="pt", max_length=9))
    _, stats4 = tokenize_examples(examples[:1], chatml, data, train)
    assert not stats3.cache_hit and not stats4.cache_hit
    assert cache_root(DataConfig(train="x", cache_dir=str(tmp_path / "mine"))) == tmp_path / "mine"


def test_num_workers_gives_the_same_rows(chatml, tmp_path):
    examples = docs(*[f"document number {i} about tax relief" for i in range(8)])
    one, _ = tokenize_examples(examples, chatml, DataConfig(train="x", cache_dir=str(tmp_path / "a")), TrainConfig(stage="pt", max_length=8))
    two, _ = tokenize_examples(examples, chatml, DataConfig(train="x", num_workers=2, cache_dir=str(tmp_path / "b")),
                               TrainConfig(stage="pt", max_length=8))
    assert one.to_dict() == two.to_dict()


def test_prepare_data_cls_with_stats_and_relative_paths(tmp_path):
    rows = [{"sentence": f"text {i}", "category": "a" if i % 4 else "b"} for i in range(40)]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    cfg = validate_config({"model": {"path": "m"}, "train": {"stage": "cls", "max_length": 16},
                           "data": {"train": "train.json", "columns": {"text": "sentence", "label": "category"},
                                    "val_ratio": 0.25, "split": "stratified", "cache_dir": "cache"}})
    prepared = prepare_data(cfg, make_tokenizer("none"), base_dir=tmp_path)
    assert prepared.label_names == ["a", "b"]
    assert prepared.stats["label_distribution"] == {"train": {"a": 22, "b": 8}, "validation": {"a": 8, "b": 2}}
    assert len(prepared.train) == 30 and len(prepared.validation) == 10 and len(prepared.val_examples) == 10
    assert prepared.stats["train"]["cache_path"].startswith(str(tmp_path / "cache"))


def test_prepare_data_sft_packs_both_splits(tmp_path, chatml):
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(12)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    cfg = validate_config({"model": {"path": "m"}, "train": {"stage": "sft", "max_length": 128},
                           "data": {"train": str(tmp_path / "a.json"), "template": "chatml", "packing": True, "val_ratio": 0.25}})
    prepared = prepare_data(cfg, chatml)
    assert set(prepared.train.column_names) == {"input_ids", "labels", "position_ids"}
    assert prepared.validation is not None and len(prepared.train) < 9
    assert sum(row["position_ids"].count(0) for row in prepared.train) == 9
    assert prepared.stats["packed_rows"]["train"] == len(prepared.train)


def test_prepare_data_oversamples_train_only(tmp_path):
    rows = [{"text": f"t{i}", "label": "rare" if i < 3 else "common"} for i in range(15)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "v.jsonl").write_text('{"text": "v1", "label": "rare"}\n{"text": "v2", "label": "common"}\n')
    cfg = validate_config({"model": {"path": "m"}, "train": {"stage": "cls", "max_length": 8},
                           "data": {"train": "d.jsonl", "validation": "v.jsonl", "balance": "oversample"}})
    prepared = prepare_data(cfg, make_tokenizer("none"), base_dir=tmp_path)
    assert prepared.stats["label_distribution"] == {"train": {"common": 12, "rare": 12}, "validation": {"common": 1, "rare": 1}}
    assert len(prepared.train) == 24 and len(prepared.validation) == 2
    with pytest.raises(SftlabError, match="data.balance=oversample needs labels; stage pt"):
        prepare_data(cfg.model_copy(update={"train": TrainConfig(stage="pt", max_length=8)}), make_tokenizer("none"), tmp_path)


def test_the_cache_key_hashes_every_data_module_that_makes_token_rows(tmp_path):
    """A change to the templates' code, their schema or the message checks must miss the tokenisation cache."""
    import ast
    from pathlib import Path

    from sftlab.data import token_cache

    data_dir = Path(token_cache.__file__).parent

    def data_imports(name: str) -> set[str]:
        tree = ast.parse((data_dir / name).read_text(encoding="utf-8"))
        return {f"{node.module.rsplit('.', 1)[1]}.py" for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sftlab.data.")}

    makers, todo = set(), ["tokenize.py"]
    while todo:  # tokenize.py and what it imports from sftlab.data, transitively; rows.py is the cache's format
        name = todo.pop()
        if name not in makers and name != "rows.py":
            makers.add(name)
            todo += sorted(data_imports(name))
    assert "template_spec.py" in makers
    assert makers <= set(token_cache.CODE_MODULES)
    files = token_cache.code_files()
    assert {path.name for path in files} >= set(token_cache.CODE_MODULES) | {"chatml.yaml"}
    copies = []
    for path in files[:4]:
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    before = token_cache.code_version(copies)
    copies[2].write_bytes(copies[2].read_bytes() + b"\n# changed\n")
    assert token_cache.code_version(copies) != before


def _word_level_tokenizer():
    """An English-only word vocabulary with [UNK], as a WordPiece BERT meets Chinese text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "[SEP]": 2, "good": 3, "day": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[SEP]")


@pytest.mark.parametrize("pt_mode", ["concat", "document"])
def test_unknown_tokens_are_counted_and_logged_with_the_first_record(pt_mode):
    from sftlab.data.preview import drop_lines

    tokenizer = _word_level_tokenizer()
    examples = docs("good day", "good 今天 天气", "day 很好")
    data_cfg = DataConfig(train="x", pt_mode=pt_mode)
    rows, stats = tokenize_examples(examples, tokenizer, data_cfg, TrainConfig(stage="pt", max_length=64))
    assert stats.unknown_tokens == 3 and stats.unknown_first == "d.jsonl:2"
    assert sum(row.count(0) for row in rows["input_ids"]) == 3
    line = f"data: 3 unknown tokens (30.0% of 10) in the train rows, first d.jsonl:2; the tokenizer cannot " \
           "represent that text, which trains as its unknown token"
    assert drop_lines({"train": stats.to_dict()}, 64, "drop") == [line]
    _, known = tokenize_examples(docs("good day"), tokenizer, data_cfg, TrainConfig(stage="pt", max_length=64))
    assert known.unknown_tokens == 0 and drop_lines({"train": known.to_dict()}, 64, "drop") == []
