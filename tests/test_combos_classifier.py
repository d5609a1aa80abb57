"""A classifier saved as a full model (a cls run's model/ with strategy full, freeze or auto, or its export) met by
the commands that generate text: refused in one line naming its labels, as a classification adapter is, where it
used to load as a causal LM with a random lm_head and write noise with exit status 0."""

from __future__ import annotations

import pytest

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.infer.loading import load_served
from sftlab.models.tiny import save_tiny


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_generate_refuses_a_full_classifier_in_one_line(arch, tmp_path, capsys):
    model = save_tiny(arch, tmp_path / arch, task="cls", num_labels=2, hidden=32, layers=1)
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    capsys.readouterr()  # save_tiny's progress bars
    assert main(["generate", str(model), "--input", str(tmp_path / "in.jsonl"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    kind = "LlamaForSequenceClassification" if arch == "llama" else "BertForSequenceClassification"
    assert err == (f"error: {model}/config.json: a classifier ({kind}), not a text generator; `sftlab eval MODEL "
                   "--task labels` scores it\n")
    assert not out.exists()
    with pytest.raises(SftlabError, match="a classifier"):
        load_served(model)


def test_the_refusal_names_a_trained_classifiers_labels(tmp_path):
    import json

    model = save_tiny("llama", tmp_path / "cls", task="cls", num_labels=2, hidden=32, layers=1)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "id2label": {"0": "neg", "1": "pos"},
                                                   "label2id": {"neg": 0, "pos": 1}}))
    with pytest.raises(SftlabError, match=r"a classifier \(LlamaForSequenceClassification, labels neg, pos\), not a"):
        load_served(model)


def test_a_language_model_still_serves(tmp_path):
    assert load_served(save_tiny("qwen2", tmp_path / "lm", hidden=32, layers=1)).names == ["lm"]
