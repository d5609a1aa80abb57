"""A classification head created on a base model: one sftlab line in the run log instead of transformers' LOAD
REPORT, which still comes through, as transformers writes it, when other weights are missing."""

from __future__ import annotations

import logging

import pytest

from sftlab.config.schema import ModelConfig
from sftlab.models.load import load_model
from sftlab.models.tiny import make_tokenizer, save_tiny, tiny_config

BERT_HEAD = ("classification head: classifier.bias, classifier.weight newly initialised "
             "(model.path has no classification head)")


@pytest.fixture
def reports():
    """The LOAD REPORT messages that transformers' loading logger lets through to its handlers."""
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage()) if "LOAD REPORT" in record.getMessage() else None
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def headless_bert(path, drop: str | None = None):
    """A tiny BERT encoder without a classification head (as MiniLM is), optionally without the weight `drop`."""
    from safetensors.torch import load_file, save_file
    from transformers import BertModel

    tok = make_tokenizer("none")
    BertModel(tiny_config("bert", tok, hidden=32, layers=1)).save_pretrained(path)
    tok.save_pretrained(path)
    if drop:
        weights = load_file(path / "model.safetensors")
        del weights[drop]
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_a_new_head_is_one_line_not_a_load_report(tmp_path, reports):
    bert = load_model(ModelConfig(path=str(headless_bert(tmp_path / "bert"))), "cls", label_names=["a", "b"])
    assert bert.sftlab_head_line == BERT_HEAD
    save_tiny("qwen2", tmp_path / "qwen2", hidden=32, layers=1)  # a causal LM: its lm_head is left unused
    qwen = load_model(ModelConfig(path=str(tmp_path / "qwen2")), "cls", label_names=["a", "b"])
    assert qwen.sftlab_head_line == ("classification head: score.weight newly initialised (model.path has no "
                                     "classification head; its lm_head.weight not used)")
    assert reports == []
    saved = tmp_path / "saved"
    bert.save_pretrained(saved)  # a classifier loads whole: nothing is new and nothing is said
    make_tokenizer("none").save_pretrained(saved)
    assert not hasattr(load_model(ModelConfig(path=str(saved)), "cls", label_names=["a", "b"]), "sftlab_head_line")


def test_missing_base_weights_still_get_the_whole_report(tmp_path, reports):
    broken = headless_bert(tmp_path / "bert", drop="encoder.layer.0.output.dense.bias")
    model = load_model(ModelConfig(path=str(broken)), "cls", label_names=["a", "b"])
    assert not hasattr(model, "sftlab_head_line")
    assert len(reports) == 1 and "bert.encoder.layer.0.output.dense.bias" in reports[0]
    assert "classifier.weight" in reports[0]


def test_the_run_log_names_the_new_head(tmp_path, capsys, reports):
    from test_train_loop import tiny_run, train

    rows = [{"text": text, "label": label} for text, label in
            [("good", "pos"), ("bad", "neg"), ("fine", "pos"), ("awful", "neg")]]
    bert = headless_bert(tmp_path / "bert")
    train(tiny_run(tmp_path, rows=rows, model={"path": str(bert)},
                   train={"stage": "cls", "max_steps": 1, "batch_size": 2}))
    err = capsys.readouterr().err
    assert err.count(BERT_HEAD + "\n") == 1 and reports == []
