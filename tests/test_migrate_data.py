"""Data as LLaMA-Factory and TRL users have it: dataset_info.json entries read as LLaMA-Factory reads them, other
stages' data refused in one line naming the entry, TRL's dataset types (docs/migrating.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.config.schema import DataConfig
from sftlab.data.sources import load_examples
from sftlab.errors import SftlabError

DEMO = Path("/work/shared/data/sft_demo")


def _registry(tmp_path: Path, entries: dict, files: dict[str, list]) -> Path:
    for name, rows in files.items():
        (tmp_path / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries), encoding="utf-8")
    return tmp_path / "dataset_info.json"


def _load(registry: Path | None, train, stage: str = "sft") -> list[dict]:
    data = DataConfig(train=train, registry=str(registry) if registry else None)
    return [{k: v for k, v in ex.items() if k != "_src"} for ex in load_examples(data, stage)[0]]


def test_alpaca_with_system_and_history_builds_the_llama_factory_conversation(tmp_path):
    row = {"q": "Add 2", "ctx": "to 3", "a": "5", "sys": "Be exact.", "hist": [["Hi", "Hello"], ["2+2?", "4"]]}
    entry = {"columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys", "history": "hist"}}
    registry = _registry(tmp_path, {"calc": {"file_name": "calc.json", **entry},
                                    "plain": {"file_name": "calc.json", "columns": {"prompt": "q", "response": "a"}}},
                         {"calc.json": [row]})
    [example] = _load(registry, "calc")
    assert example["messages"] == [
        {"role": "system", "content": "Be exact."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Add 2\nto 3"}, {"role": "assistant", "content": "5"}]
    # columns the entry does not name are not read (system, history, and here the query too)
    assert _load(registry, "plain")[0]["messages"] == [{"role": "user", "content": "Add 2"}, {"role": "assistant", "content": "5"}]


def test_sharegpt_with_custom_tags_and_a_system_column(tmp_path):
    turns = [{"who": "sys", "say": "Be kind."}, {"who": "me", "say": "hi"}, {"who": "bot", "say": "hello"},
             {"who": "me", "say": "weather?"}, {"who": "call", "say": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
             {"who": "result", "say": '{"temp": 3}'}, {"who": "bot", "say": "3 degrees"}]
    tags = {"role_tag": "who", "content_tag": "say", "user_tag": "me", "assistant_tag": "bot", "system_tag": "sys",
            "function_tag": "call", "observation_tag": "result"}
    registry = _registry(tmp_path, {"chat": {"file_name": "chat.json", "formatting": "sharegpt",
                                             "columns": {"messages": "dialog"}, "tags": tags}},
                         {"chat.json": [{"dialog": turns}]})
    [example] = _load(registry, "chat")
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant", "user", "assistant", "tool", "assistant"]
    assert example["messages"][0]["content"] == "Be kind."
    assert example["messages"][4]["tool_calls"] == [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]


def test_an_observation_after_an_answer_without_a_function_call_is_refused_naming_the_record(tmp_path):
    turns = [{"from": "human", "value": "discount?"}, {"from": "gpt", "value": "calculating"},
             {"from": "observation", "value": "160"}, {"from": "gpt", "value": "160 dollars"}]
    registry = _registry(tmp_path, {"glaive": {"file_name": "g.json", "formatting": "sharegpt"}},
                         {"g.json": [{"conversations": turns}]})
    with pytest.raises(SftlabError, match=r"g\.json:\d+.*turn 2 is a tool result, but no assistant turn with tool_calls"):
        _load(registry, "glaive")


def test_a_pretraining_entry_is_text_for_stage_pt_and_refused_for_sft(tmp_path):
    registry = _registry(tmp_path, {"wiki": {"file_name": "wiki.json", "columns": {"prompt": "text"}}},
                         {"wiki.json": [{"text": "Alpha is a letter."}, {"text": "Beta too."}]})
    assert _load(registry, "wiki", stage="pt") == [{"text": "Alpha is a letter."}, {"text": "Beta too."}]
    with pytest.raises(SftlabError) as err:
        _load(registry, "wiki")
    assert str(err.value) == ("registry entry 'wiki' is pretraining text (its columns name only prompt, 'text'); "
                              "set train.stage pt to train on it")


@pytest.mark.parametrize("entry, message", [
    ({"ranking": True, "formatting": "sharegpt", "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
     "registry entry 'x' is a ranking (preference) dataset; sftlab trains pt/sft/cls only"),
    ({"columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
     "registry entry 'x' is a preference (chosen/rejected) dataset (column 'chosen'); sftlab trains pt/sft/cls only"),
    ({"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"}},
     "registry entry 'x' is a KTO dataset (column 'kto_tag'); sftlab trains pt/sft/cls only"),
    ({"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}},
     "registry entry 'x': column 'images' is not supported by a text model; image+text data trains a vision-language "
     "model.path (docs/vision.md)"),
    ({"formatting": "sharegpt", "columns": {"messages": "messages", "audios": "audios"}},
     "registry entry 'x': column 'audios' is not supported by a text model"),
    ({"columns": {"prompt": "instruction", "tools": "tools"}}, "registry entry 'x': column 'tools' is read with formatting sharegpt only"),
])
def test_other_stages_and_media_are_refused_in_one_line_naming_the_entry(tmp_path, entry, message):
    registry = _registry(tmp_path, {"x": {"file_name": "x.json", **entry}}, {"x.json": [{"messages": []}]})
    with pytest.raises(SftlabError) as err:
        _load(registry, "x")
    assert str(err.value) == message


def test_the_registry_may_be_its_directory_and_comma_separated_names_get_the_list(tmp_path):
    rows = [{"instruction": "hi", "output": "hello"}]
    _registry(tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "a.json"}}, {"a.json": rows})
    assert len(_load(tmp_path, ["a", "b"])) == 2
    with pytest.raises(SftlabError, match=r"several datasets are a YAML list: \[a, b\]$"):
        _load(tmp_path, "a,b")


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_trl_dataset_types(tmp_path):
    conversational = _jsonl(tmp_path / "pc.jsonl", [{"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Sky?"}],
                                                    "completion": [{"role": "assistant", "content": "Blue."}]}])
    assert _load(None, conversational)[0]["messages"] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}]
    standard = _jsonl(tmp_path / "std.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    assert _load(None, standard)[0]["messages"] == [{"role": "user", "content": "The sky is"},
                                                   {"role": "assistant", "content": " blue."}]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert _load(None, _jsonl(tmp_path / "m.jsonl", [{"messages": messages}]))[0]["messages"] == messages
    text = _jsonl(tmp_path / "t.jsonl", [{"text": "The sky is blue."}])
    assert _load(None, text, stage="pt") == [{"text": "The sky is blue."}]
    with pytest.raises(SftlabError, match="format 'text' gives pt examples, but train.stage is 'sft' .*; set train.stage pt "
                                          "for this data, or check data.format / data.columns$"):
        _load(None, text)


@pytest.mark.skipif(not (DEMO / "dataset_info.json").is_file(), reason="shared LLaMA-Factory demo data absent")
def test_the_llama_factory_demo_registry():
    registry = DEMO / "dataset_info.json"
    first = json.loads((DEMO / "alpaca_en_demo.json").read_text(encoding="utf-8"))[0]
    loaded = {ex["messages"][-1]["content"]: ex for ex in _load(DEMO, "alpaca_en_demo")}
    prompt = f"{first['instruction']}\n{first['input']}" if first["input"] else first["instruction"]
    assert loaded[first["output"]]["messages"] == [{"role": "user", "content": prompt}, {"role": "assistant", "content": first["output"]}]
    assert any(m.get("tool_calls") for ex in _load(registry, "glaive_toolcall_en_demo") for m in ex["messages"])
    assert len(_load(registry, "wiki_demo", stage="pt")) == 30
    with pytest.raises(SftlabError, match=r"glaive_toolcall_zh_demo\.json:\d+\[#\d+\]: turn 2 is a tool result"):
        _load(registry, "glaive_toolcall_zh_demo")
    for name, start in [("dpo_en_demo", "registry entry 'dpo_en_demo' is a ranking (preference) dataset"),
                        ("kto_en_demo", "registry entry 'kto_en_demo' is a KTO dataset"),
                        ("mllm_demo", "registry entry 'mllm_demo': column 'images' is not supported by a text model"),
                        ("c4_demo", "registry entry 'c4_demo' is pretraining text")]:
        with pytest.raises(SftlabError) as err:
            _load(registry, name)
        assert str(err.value).startswith(start)
