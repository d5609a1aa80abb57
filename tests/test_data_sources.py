"""Registry (LLaMA-Factory dataset_info.json) compatibility, weighted mixing, splits and max_samples."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sftlab.config.schema import DataConfig, DatasetSpec
from sftlab.data.sources import load_examples, mix_datasets, split_validation
from sftlab.errors import SftlabError

SHARED_DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft_demo" / "dataset_info.json"


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def registry_dir(tmp_path):
    """A small LLaMA-Factory-style dataset directory: alpaca with renamed columns, sharegpt with OpenAI tags."""
    write_json(tmp_path / "qa.json", [{"question": f"q{i}", "answer": f"a{i}", "sys": "S", "system": "ignored"} for i in range(4)])
    write_json(tmp_path / "plain.json", [{"instruction": "hi", "input": "there", "output": "yo", "system": "not declared"}])
    chats = [{"conversation": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}]
    write_json(tmp_path / "chat.json", chats)
    write_json(tmp_path / "gpt.json", [{"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}], "system": "S"}])
    write_json(tmp_path / "dataset_info.json", {
        "qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "answer", "system": "sys"}},
        "plain": {"file_name": "plain.json"},
        "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "conversation"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                          "system_tag": "system"}},
        "gpt": {"file_name": "gpt.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"}},
        "hub": {"hf_hub_url": "someone/alpaca"},
        "pairs": {"file_name": "qa.json", "ranking": True},
        "pics": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "conversation", "images": "images"}},
    })
    return tmp_path


def test_registry_entries_load_like_llama_factory(registry_dir):
    cfg = DataConfig(train=["qa", "plain", "chat", "gpt"], registry="dataset_info.json")
    train, val = load_examples(cfg, "sft", base_dir=registry_dir)
    assert val == []
    by_src = {Path(ex["_src"].split(":")[0]).name: ex["messages"] for ex in train}
    assert by_src["qa.json"][0] == {"role": "system", "content": "S"}  # the declared system column, not "system"
    assert by_src["plain.json"] == [{"role": "user", "content": "hi\nthere"}, {"role": "assistant", "content": "yo"}]  # undeclared system ignored
    expected_chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert by_src["chat.json"] == expected_chat and by_src["gpt.json"] == expected_chat
    assert len(train) == 4 + 1 + 1 + 1


@pytest.mark.parametrize("name, message", [
    ("hub", "registry entry 'hub' uses hf_hub_url; sftlab reads local files only"),
    ("pairs", "registry entry 'pairs' is a ranking"),
    ("pics", "registry entry 'pics': column 'images' is not supported"),
    ("qaa", "'qaa' is neither a file .* nor an entry of the registry; did you mean 'qa'"),
])
def test_unsupported_registry_entries_fail_naming_the_entry(registry_dir, name, message):
    with pytest.raises(SftlabError, match=message):
        load_examples(DataConfig(train=name, registry=str(registry_dir / "dataset_info.json")), "sft")


@pytest.mark.skipif(not SHARED_DEMO.is_file(), reason="shared LLaMA-Factory demo data not present")
def test_shared_llama_factory_registry_alpaca_en_demo():
    train, val = load_examples(DataConfig(train="alpaca_en_demo", registry=str(SHARED_DEMO), val_ratio=0.1), "sft")
    assert len(train) + len(val) == len(json.loads((SHARED_DEMO.parent / "alpaca_en_demo.json").read_text()))
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in train)


def test_files_resolve_against_base_dir_and_validation_file(tmp_path):
    (tmp_path / "d").mkdir()
    write_json(tmp_path / "d" / "train.json", [{"text": f"t{i}"} for i in range(5)])
    write_json(tmp_path / "d" / "val.json", [{"text": "v"}])
    train, val = load_examples(DataConfig(train="d/train.json", validation="d/val.json", val_ratio=0.5), "pt", base_dir=tmp_path)
    assert len(train) == 5 and [ex["text"] for ex in val] == ["v"]  # data.validation wins over val_ratio
    with pytest.raises(SftlabError, match="data file not found"):
        load_examples(DataConfig(train="d/train.json"), "pt", base_dir=tmp_path / "elsewhere")


def labelled(n_per_label: dict[str, int]) -> list[dict]:
    return [{"text": f"{label} {i}", "label": label, "_src": f"f:{i}"} for label, n in n_per_label.items() for i in range(n)]


def test_stratified_split_keeps_label_ratios():
    examples = labelled({"a": 60, "b": 30, "c": 10})
    train, val = split_validation(examples, 0.2, "stratified", seed=1)
    assert Counter(ex["label"] for ex in val) == {"a": 12, "b": 6, "c": 2}
    assert Counter(ex["label"] for ex in train) == {"a": 48, "b": 24, "c": 8}
    again, _ = split_validation(examples, 0.2, "stratified", seed=1)
    assert again == train
    with pytest.raises(SftlabError, match="stratified needs labelled examples"):
        split_validation([{"text": "x"}, {"text": "y"}], 0.5, "stratified", 0)


def test_random_split_and_max_samples(tmp_path):
    write_json(tmp_path / "t.json", [{"text": f"t{i}"} for i in range(50)])
    train, val = load_examples(DataConfig(train=str(tmp_path / "t.json"), max_samples=20, val_ratio=0.25, seed=3), "pt")
    assert len(train) == 15 and len(val) == 5
    assert not {ex["text"] for ex in train} & {ex["text"] for ex in val}


def test_mixing_by_weight_is_seeded_and_proportional(tmp_path):
    write_json(tmp_path / "a.json", [{"text": f"a{i}"} for i in range(10)])
    write_json(tmp_path / "b.json", [{"text": f"b{i}"} for i in range(20)])
    spec = [DatasetSpec(path=str(tmp_path / "a.json"), weight=2.5), DatasetSpec(path=str(tmp_path / "b.json"), weight=0.5)]
    first, _ = load_examples(DataConfig(train=spec, seed=7), "pt")
    second, _ = load_examples(DataConfig(train=spec, seed=7), "pt")
    other, _ = load_examples(DataConfig(train=spec, seed=8), "pt")
    counts = Counter(ex["text"][0] for ex in first)
    assert counts == {"a": 25, "b": 10}
    assert first == second and first != other
    per_text = Counter(ex["text"] for ex in first if ex["text"][0] == "a")
    assert sorted(set(per_text.values())) == [2, 3]  # two full copies plus a random half
    assert len({ex["text"] for ex in first if ex["text"][0] == "b"}) == 10  # half of b, no repeats


def test_mix_datasets_keeps_every_example_at_weight_one():
    a, b = labelled({"a": 3}), labelled({"b": 4})
    mixed = mix_datasets([(a, 1.0), (b, 1.0)], seed=0)
    assert sorted(ex["text"] for ex in mixed) == sorted(ex["text"] for ex in a + b)


def test_registry_file_name_may_be_a_directory(tmp_path):
    (tmp_path / "parts").mkdir()
    write_json(tmp_path / "parts" / "a.json", [{"instruction": "a", "output": "1"}])
    (tmp_path / "parts" / "b.jsonl").write_text('{"instruction": "b", "output": "2"}\n', encoding="utf-8")
    (tmp_path / "parts" / "notes.md").write_text("not data", encoding="utf-8")
    write_json(tmp_path / "dataset_info.json", {"parts": {"file_name": "parts"}, "bad": {"file_name": "parts", "formatting": "kto"}})
    train, _ = load_examples(DataConfig(train="parts", registry=str(tmp_path / "dataset_info.json")), "sft")
    assert sorted(ex["messages"][0]["content"] for ex in train) == ["a", "b"]
    with pytest.raises(SftlabError, match="registry entry 'bad': formatting 'kto' is not supported"):
        load_examples(DataConfig(train="bad", registry=str(tmp_path / "dataset_info.json")), "sft")


def test_a_data_path_with_a_tilde_is_the_users_home_not_a_folder_beside_the_config(tmp_path, monkeypatch, registry_dir):
    """`data.train: ~/x.jsonl` was read as `<config dir>/~/x.jsonl` while model.path and output.dir expanded `~`."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    write_json(home / "mine.json", [{"instruction": "hi", "input": "", "output": "yo"}])
    write_json(home / "registry.json", {"plain": {"file_name": str(registry_dir / "plain.json")}})
    train, _ = load_examples(DataConfig(train="~/mine.json"), "sft", base_dir=tmp_path / "configs")
    assert [m["content"] for m in train[0]["messages"]] == ["hi", "yo"]
    train, _ = load_examples(DataConfig(train="plain", registry="~/registry.json"), "sft", base_dir=tmp_path / "configs")
    assert len(train) == 1
