"""Datasets shipped inside sftlab resolve by name, and every entry points at a readable file."""

import pytest

from sftlab.config import load_config
from sftlab.data.sources import builtin_datasets, load_examples
from sftlab.errors import SftlabError


def test_every_builtin_dataset_loads_with_its_format():
    for name, entry in builtin_datasets().items():
        stage = {"label": "cls", "text": "pt"}.get(entry["format"], "sft")
        cfg = load_config(None, [f"data.train={name}"], base={"model": {"path": "m"}, "data": {}})
        train, val = load_examples(cfg.data, stage)
        assert train and not val, name
        key = {"cls": "label", "pt": "text"}.get(stage, "messages")
        assert all(key in ex for ex in train)


def test_banking_sets_have_six_balanced_intents():
    cfg = load_config(None, ["data.train=banking_intents_train", "data.validation=banking_intents_test"],
                      base={"model": {"path": "m"}, "data": {}})
    train, val = load_examples(cfg.data, "cls")
    assert len(train) == 240 and len(val) == 90
    for rows, per_label in [(train, 40), (val, 15)]:
        counts = {}
        for ex in rows:
            counts[ex["label"]] = counts.get(ex["label"], 0) + 1
        assert len(counts) == 6 and set(counts.values()) == {per_label}


def test_a_misspelt_builtin_name_gets_a_suggestion(tmp_path):
    cfg = load_config(None, ["data.train=banking_chat_trian"], base={"model": {"path": "m"}, "data": {}})
    with pytest.raises(SftlabError, match="did you mean the built-in dataset 'banking_chat_train'"):
        load_examples(cfg.data, "sft", base_dir=tmp_path)
