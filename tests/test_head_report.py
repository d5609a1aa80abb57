"""A classification head created on a base model, or fitted to the data's labels when the checkpoint's head was
saved for other labels (re-initialised) or for the same labels in another order (its rows reordered): one sftlab
line in the run log instead of transformers' LOAD REPORT, which still comes through, as transformers writes it, when
other weights are missing; a base-model weight of another shape is a one-line error."""

from __future__ import annotations

import json
import logging

import pytest

from sftlab.config.schema import ModelConfig
from sftlab.errors import SftlabError
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


HEAD_KEYS = {"bert": "classifier.bias, classifier.weight", "qwen2": "score.weight"}


def saved_classifier(tmp_path, arch: str, labels: list[str]):
    """A tiny bert or qwen2 classifier saved with a head for `labels` whose rows are far apart (random, std 1)."""
    import torch

    if arch == "bert":
        base, tok = headless_bert(tmp_path / "bert-base"), make_tokenizer("none")
    else:
        base, tok = save_tiny("qwen2", tmp_path / "qwen2-base", hidden=32, layers=1), make_tokenizer("chatml")
    model = load_model(ModelConfig(path=str(base)), "cls", label_names=labels)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in (model.classifier if arch == "bert" else model.score).parameters():
            param.normal_()
    out = tmp_path / f"{arch}-{''.join(labels)}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, model.eval()


def head_weights(model) -> dict:
    return {name: param for name, param in model.named_parameters() if not name.startswith(("bert.", "model."))}


def logits(model, arch: str):
    import torch

    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([[5, 6, 7, 8, 9], [9, 12, 14, 3, 5]])).logits


@pytest.mark.parametrize("arch", ["bert", "qwen2"])
def test_a_head_saved_for_other_labels_is_re_initialised_in_one_line(tmp_path, reports, arch):
    import torch

    path, saved = saved_classifier(tmp_path, arch, ["a", "b", "c"])
    more = load_model(ModelConfig(path=str(path)), "cls", label_names=["a", "b", "c", "d", "e"])
    assert more.sftlab_head_line == (f"classification head: {HEAD_KEYS[arch]} re-initialised (model.path's head has "
                                     "3 labels: a, b, c; the data has 5 labels: a, b, c, d, e)")
    assert more.config.id2label == dict(enumerate("abcde")) and logits(more, arch).shape == (2, 5)
    base = {name: param for name, param in saved.named_parameters() if name not in head_weights(saved)}
    assert all(torch.equal(param, base[name]) for name, param in more.named_parameters() if name in base)
    renamed = load_model(ModelConfig(path=str(path)), "cls", label_names=["x", "y", "z"])  # same count, other names
    assert renamed.sftlab_head_line == (f"classification head: {HEAD_KEYS[arch]} re-initialised (model.path's head "
                                        "has 3 labels: a, b, c; the data has 3 labels: x, y, z)")
    for name, param in head_weights(renamed).items():  # initialised as transformers initialises a new head
        assert param.std() < 0.1 if name.endswith("weight") else not param.any(), name
    fewer = load_model(ModelConfig(path=str(path)), "cls", label_names=["a", "c"])
    assert fewer.sftlab_head_line == (f"classification head: {HEAD_KEYS[arch]} re-initialised (model.path's head has "
                                      "3 labels: a, b, c; the data has 2 labels: a, c; data.labels listing the head's "
                                      "labels keeps it)")
    assert reports == []


@pytest.mark.parametrize("arch", ["bert", "qwen2"])
def test_the_same_labels_in_another_order_keep_their_rows(tmp_path, reports, arch):
    import torch

    path, saved = saved_classifier(tmp_path, arch, ["a", "b", "c"])
    before = logits(saved, arch)
    same = load_model(ModelConfig(path=str(path)), "cls", label_names=["a", "b", "c"])
    assert not hasattr(same, "sftlab_head_line") and torch.equal(logits(same, arch), before)
    moved = load_model(ModelConfig(path=str(path)), "cls", label_names=["c", "a", "b"])
    assert moved.sftlab_head_line == (f"classification head: {HEAD_KEYS[arch]} kept, its rows reordered to the "
                                      "data's labels (model.path's head has a, b, c; the data has c, a, b)")
    assert moved.config.id2label == {0: "c", 1: "a", 2: "b"}
    torch.testing.assert_close(logits(moved, arch), before[:, [2, 0, 1]])  # each label scores as it did
    assert reports == []


def test_an_unnamed_head_has_the_labels_0_1_2(tmp_path, reports):
    import torch

    path = save_tiny("bert", tmp_path / "bert", task="cls", num_labels=3, hidden=32, layers=1)  # LABEL_0, 1, 2
    saved = load_model(ModelConfig(path=str(path)), "cls", num_labels=3)
    kept = load_model(ModelConfig(path=str(path)), "cls", label_names=["0", "1", "2"])
    assert not hasattr(kept, "sftlab_head_line") and torch.equal(logits(kept, "bert"), logits(saved, "bert"))
    named = load_model(ModelConfig(path=str(path)), "cls", label_names=["0", "1"])
    assert named.sftlab_head_line == ("classification head: classifier.bias, classifier.weight re-initialised "
                                      "(model.path's head has 3 labels: LABEL_0, LABEL_1, LABEL_2; the data has "
                                      "2 labels: 0, 1; data.labels listing the head's labels keeps it)")
    assert reports == []


def test_a_base_weight_of_another_shape_is_one_line(tmp_path, reports):
    import torch
    from safetensors.torch import load_file, save_file

    path, _ = saved_classifier(tmp_path, "bert", ["a", "b", "c"])
    weights = load_file(path / "model.safetensors")
    weights["bert.encoder.layer.0.output.dense.bias"] = torch.zeros(5)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    for labels in (["a", "b", "c"], ["a", "b"]):  # also beside a head that is re-initialised
        with pytest.raises(SftlabError, match=rf"^model.path '{path}': weight bert.encoder.layer.0.output.dense.bias "
                                              r"has shape \[5\] in the checkpoint but \[32\] in the model its "
                                              "config.json describes; the weights do not fit the config$"):
            load_model(ModelConfig(path=str(path)), "cls", label_names=labels)
    assert reports == []


CLS_ROWS = [("good", "a"), ("bad", "b"), ("fine", "c"), ("awful", "d"), ("nice", "e"), ("poor", "a")]


@pytest.mark.parametrize("arch", ["bert", "qwen2"])
def test_a_cls_model_trains_on_more_labels_resumes_and_evaluates(tmp_path, capsys, reports, arch):
    """A cls run's model/ (3 labels) fine-tuned on 5: the head is re-initialised and said so once; --resume gives
    the losses of an uninterrupted run; `sftlab eval` scores the 5 labels with the head."""
    from sftlab.cli import main
    from sftlab.train import TrainingInterrupted
    from test_train_loop import tiny_run, train

    def run(name: str, labels: str, **kwargs):
        rows = [{"text": text, "label": label} for text, label in CLS_ROWS if label in labels]
        model = {"path": str(first / "model")} if name != "first" else (
            {"path": str(headless_bert(tmp_path / "bert"))} if arch == "bert" else {})
        raw = tiny_run(tmp_path / name, arch, rows=rows, model=model, output={"dir": str(tmp_path / name / "out"),
                       "tensorboard": False}, train={"stage": "cls", "max_steps": 3, "batch_size": 2})
        return train(raw, **kwargs)

    first = run("first", "abc").out_dir
    capsys.readouterr()
    straight = run("straight", "abcde")
    line = (f"classification head: {HEAD_KEYS[arch]} re-initialised (model.path's head has 3 labels: a, b, c; "
            "the data has 5 labels: a, b, c, d, e)\n")
    assert capsys.readouterr().err.count(line) == 1
    with pytest.raises(TrainingInterrupted):
        run("resumed", "abcde", callbacks=[lambda step, loss: step == 2 and (_ for _ in ()).throw(KeyboardInterrupt)])
    capsys.readouterr()
    resumed = run("resumed", "abcde", resume=True)
    assert "classification head" not in capsys.readouterr().err  # the head comes from the checkpoint
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    data = tmp_path / "resumed" / "train.jsonl"
    assert main(["eval", str(resumed.out_dir), "--data", str(data), "--task", "labels", "--out",
                 str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["method"] == "head" and metrics["labels"] == ["a", "b", "c", "d", "e"] and metrics["n"] == 6
    assert reports == []


def test_a_lora_adapter_whose_head_has_other_labels_names_the_mismatch(tmp_path):
    from sftlab.strategy import select_trainable

    path, model = saved_classifier(tmp_path, "bert", ["a", "b", "c", "d", "e"])
    adapter, _ = select_trainable(model, {"kind": "lora", "lora": {"rank": 2}})  # the head trains in full beside it
    adapter.save_pretrained(tmp_path / "adapter")
    with pytest.raises(SftlabError, match=r"cannot attach it to model.path \(size mismatch for \S+classifier\S+: "
                                          r"copying a param with shape torch.Size\(\[5, 32\]\) from checkpoint, the "
                                          r"shape in current model is torch.Size\(\[3, 32\]\)\.\)$"):
        load_model(ModelConfig(path=str(path), adapter=str(tmp_path / "adapter")), "cls", label_names=["a", "b", "c"])
