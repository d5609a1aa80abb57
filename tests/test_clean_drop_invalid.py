"""`sftlab data clean --drop-invalid`: rows that do not convert are left out and listed, instead of stopping the
command at the first; without the option, the first one is an error that names the option."""

from __future__ import annotations

import json

import pytest

from sftlab.cli import main
from sftlab.data.formats import to_canonical
from sftlab.errors import SftlabError

ROWS = [
    '{"id": "a", "instruction": "First question", "output": "First answer"}',
    '{"instruction": "No answer here"}',                                       # line 2: a required field missing
    '{"id": "c", "instruction": "Second question", "output": "Second answer"}',
    '{"text": "a pt document in an sft file"}',                               # line 4: another format
    '{"instruction": "Half an emoji \\ud83d", "output": "x"}',               # line 5: a lone surrogate
    '{"id": "f", "instruction": "Third question", "output": "Third answer"}',
]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_without_the_option_the_first_bad_row_is_one_line_naming_it_and_the_option(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", ROWS)
    assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{data}:5: lone UTF-16 surrogate" in err and "--drop-invalid" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_the_option_keeps_the_good_rows_and_lists_every_bad_one_in_file_order(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    assert main(["data", "clean", str(data), str(out), "--drop-invalid"]) == 0
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in kept] == ["a", "c", "f"]  # ids (fields the format does not read) kept
    assert [row["messages"][0]["content"] for row in kept] == ["First question", "Second question", "Third question"]
    report = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))
    assert report["before"] == 6 and report["after"] == 3
    assert report["removed"]["invalid row"]["count"] == 3
    listed = report["sections"]["invalid rows"]
    assert [item["src"] for item in listed] == [f"{data}:2", f"{data}:4", f"{data}:5"]
    assert listed[0]["error"].endswith("missing required field 'output'")  # the file's format's own error
    assert "mixed formats" in listed[1]["error"] and "surrogate" in listed[2]["error"]
    assert "invalid row" in capsys.readouterr().out


def test_error_messages_of_dropped_rows_name_the_commands_options(tmp_path):
    data = _write(tmp_path / "in.jsonl", ['{"instruction": "q", "output": "a"}', '{"text": "?"}'])
    assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl"), "--drop-invalid", "--format", "alpaca"]) == 0
    listed = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))["sections"]["invalid rows"]
    assert len(listed) == 1 and "--format is 'alpaca'" in listed[0]["error"] and "data.format" not in listed[0]["error"]


def test_the_format_most_rows_have_decides_not_the_first_rows(tmp_path):
    """A pt row first, then alpaca rows, then one whose keys tell no format: as `data build validate` sees it."""
    data = _write(tmp_path / "in.jsonl", ['{"text": "t"}', ROWS[0], ROWS[2], '{"instruction": "q0"}'])
    out = tmp_path / "out.jsonl"
    assert main(["data", "clean", str(data), str(out), "--drop-invalid"]) == 0
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == ["a", "c"]
    listed = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))["sections"]["invalid rows"]
    assert [item["error"].removeprefix(f"{data}:") for item in listed] == [
        "1: row looks like 'text' but most rows of the file are 'alpaca'; mixed formats",
        "4: missing required field 'output'"]


def test_a_tool_result_without_a_call_is_dropped_as_llama_factory_data_has_one(tmp_path):
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    bad = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                             {"from": "observation", "value": "{\"x\": 1}"}, {"from": "gpt", "value": "Done"}]}
    data = tmp_path / "in.json"
    other = {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "Four"}]}
    data.write_text(json.dumps([good, bad, other], indent=1), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["data", "clean", str(data), str(out), "--drop-invalid"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    listed = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))["sections"]["invalid rows"]
    assert len(listed) == 1 and "tool result" in listed[0]["error"] and "[#1]" in listed[0]["src"]


def test_a_file_where_no_row_converts_is_an_error(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", ['{"instruction": "q"}', '{"instruction": "r"}'])
    assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl"), "--drop-invalid", "--format", "alpaca"]) == 2
    err = capsys.readouterr().err
    assert "none of its 2 rows converts" in err and f"{data}:1" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_problem_of_the_file_or_an_option_is_no_row_problem(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", ROWS[:1])
    for extra in ([], ["--drop-invalid"]):  # alpaca rows under --stage cls: the same error, and no hint
        assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl"), "--stage", "cls", *extra]) == 2
        err = capsys.readouterr().err
        assert "--stage" in err and "--drop-invalid" not in err


def test_to_canonical_collects_rows_that_do_not_convert_when_asked():
    rows = [{"instruction": "q", "output": "a", "_src": "f:1"}, {"instruction": "r", "_src": "f:2"},
            {"text": "t", "_src": "f:3"}]
    with pytest.raises(SftlabError, match="f:2"):
        to_canonical(rows)
    skipped: list[tuple[str, str]] = []
    examples = to_canonical(rows, skipped=skipped)
    assert [example["_src"] for example in examples] == ["f:1"]
    assert [where for where, _ in skipped] == ["f:2", "f:3"] and "mixed formats" in skipped[1][1]


def test_training_data_with_rows_that_do_not_convert_points_at_the_option(tmp_path):
    from sftlab.config.schema import DataConfig
    from sftlab.data.sources import resolve_dataset

    data = _write(tmp_path / "in.jsonl", ROWS[:4] + ROWS[5:])
    with pytest.raises(SftlabError) as caught:
        resolve_dataset(str(data), DataConfig(train=str(data)), "sft", None, None, None)
    message = str(caught.value)
    assert message.startswith(f"{data}:2: ") and "\n" not in message
    assert message.endswith("(2 of 5 rows do not convert; `sftlab data build convert FILE OUT --drop-invalid` "
                            "writes a copy without them and changes nothing else)")
    with pytest.raises(SftlabError) as caught:  # a file's problem (alpaca rows for cls) gets no such note
        resolve_dataset(str(data), DataConfig(train=str(data)), "cls", None, None, None)
    assert "train.stage" in str(caught.value) and "--drop-invalid" not in str(caught.value)


def test_a_malformed_json_line_still_stops_with_the_option(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", [ROWS[0], '{"instruction": "broken", ', ROWS[2]])
    assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl"), "--drop-invalid"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and "\n" not in err.strip() and not (tmp_path / "out.jsonl").exists()


def test_a_format_given_on_a_data_train_item_is_named_so_in_its_errors(tmp_path):
    from sftlab.config.schema import DataConfig, DatasetSpec
    from sftlab.data.sources import resolve_dataset

    data = _write(tmp_path / "in.jsonl", ['{"text": "a document"}'])
    spec = DatasetSpec(path=str(data), format="alpaca")
    with pytest.raises(SftlabError) as caught:
        resolve_dataset(spec, DataConfig(train=[spec]), "sft", None, None, None)
    message = str(caught.value)
    assert f"the format of data.train item {str(data)!r} is 'alpaca'" in message and "data.format" not in message


def test_convert_drops_invalid_rows_and_changes_nothing_else(tmp_path):
    """What the training hint names: the invalid rows go, every other row is written as it was read (clean would
    also normalise, filter and deduplicate)."""
    duplicate = '{"id": "d", "instruction": "First question", "output": "First answer"}'
    data = _write(tmp_path / "in.jsonl", ROWS + [duplicate, '{"instruction": "<b>html</b>", "output": "I\'m sorry"}'])
    out = tmp_path / "out.jsonl"
    assert main(["data", "build", "convert", str(data), str(out), "--to", "alpaca", "--drop-invalid"]) == 0
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row.get("id") for row in kept] == ["a", "c", "f", "d", None]
    assert kept[-1]["instruction"] == "<b>html</b>" and kept[-1]["output"] == "I'm sorry"
    report = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))
    assert report["before"] == 8 and report["after"] == 5
    assert [item["src"] for item in report["sections"]["invalid rows"]] == [f"{data}:2", f"{data}:4", f"{data}:5"]
    assert main(["data", "build", "convert", str(data), str(tmp_path / "strict.jsonl")]) == 2
