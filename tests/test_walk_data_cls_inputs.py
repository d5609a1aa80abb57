"""Walk of odd data files for cls and sft: errors about a data.columns-mapped field name the user's column
(with file:line), CSV headers with spaces or a name twice, labels read as numbers or with spaces, list fields
given as CSV text."""

from __future__ import annotations

import json

import pytest

from sftlab.data.formats import read_rows, to_canonical
from sftlab.data.option_names import option_errors
from sftlab.errors import SftlabError


def load(path, fmt="auto", stage=None, columns=None):
    return to_canonical(read_rows(path), fmt, stage, columns)


def write(path, text: str, bom: bool = False):
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def test_empty_mapped_label_names_the_users_column(tmp_path):
    path = write(tmp_path / "intents.csv", "utterance,intent\r\nhello,greet\r\nbye,\r\n", bom=True)
    with pytest.raises(SftlabError) as info:
        load(path, "label", "cls", {"text": "utterance", "label": "intent"})
    assert str(info.value) == f"{path}:3: column 'intent' (data.columns.label) is empty"
    with pytest.raises(SftlabError, match=r"column 'intent' \(--columns label=intent\) is empty"):
        with option_errors():  # the data commands' wording of the same error
            load(path, "label", "cls", {"text": "utterance", "label": "intent"})
    with pytest.raises(SftlabError, match=r"intents.csv:3: field 'label' is empty$"):  # unmapped: the file's own name
        load(write(tmp_path / "intents.csv", "text,label\nhello,greet\nbye,\n"), "label", "cls")


@pytest.mark.parametrize(("fmt", "stage", "columns", "record", "expected"), [
    ("text", "pt", {"text": "body"}, {"body": "  "}, "column 'body' (data.columns.text) is empty"),
    ("text", "pt", {"text": "body"}, {"body": 5}, "column 'body' (data.columns.text) must be str, got int"),
    ("label", "cls", {"label": "intent"}, {"text": "hi", "intent": None}, "column 'intent' (data.columns.label) has no value"),
    ("label", "cls", {"label": "intent"}, {"text": "hi", "intent": [1]}, "column 'intent' (data.columns.label) must be a string"),
    ("prompt_completion", "sft", {"prompt": "q", "completion": "a"}, {"q": "hi", "a": 3},
     "column 'a' (data.columns.completion) must be str, got int"),
    ("alpaca", "sft", {"instruction": "q", "output": "a"}, {"q": 1, "a": "x"},
     "column 'q' (data.columns.instruction) must be str, got int"),
    ("messages", "sft", {"messages": "conv"}, {"conv": [{"role": "user", "content": 1}]}, "conv[0].content must be a string"),
    ("sharegpt", "sft", {"conversations": "conv"}, {"conv": [{"from": "bot", "value": "x"}]}, "conv[0] "),
    ("messages", "sft", {"messages": "conv"}, {"conv": "text"}, "column 'conv' (data.columns.messages) must be list"),
])
def test_errors_on_mapped_fields_name_the_column(tmp_path, fmt, stage, columns, record, expected):
    path = write(tmp_path / "d.jsonl", json.dumps({"id": 0, "note": "first"}) + "\n" + json.dumps(record) + "\n")
    rows = read_rows(path)[1:]  # the second line: errors must say :2
    with pytest.raises(SftlabError) as info:
        to_canonical(rows, fmt, stage, columns)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and expected in message and "\n" not in message


def test_swapped_column_names_are_read_as_mapped(tmp_path):
    path = write(tmp_path / "swapped.csv", "label,text\nhello there,greet\n")
    [example] = load(path, "label", "cls", {"text": "label", "label": "text"})
    assert (example["text"], example["label"]) == ("hello there", "greet")


def test_csv_header_spaces_and_duplicates(tmp_path):
    spaced = write(tmp_path / "spaced.csv", "text, label\nhello, greet\nbye,greet \n")
    examples = load(spaced, "auto", "cls")
    assert [ex["label"] for ex in examples] == ["greet", "greet"]  # one class, not 'greet' and ' greet'
    twice = write(tmp_path / "twice.tsv", "text\tlabel\tlabel\nhello\ta\tb\n")
    with pytest.raises(SftlabError, match=r"twice.tsv:1: the header names column 'label' twice \(columns 2 and 3\)"):
        read_rows(twice)


def test_numeric_labels_from_json_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sftlab.config.schema import DataConfig
    from sftlab.data.tokenize import label_set

    mixed = write(tmp_path / "mixed.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n'
                  '{"text": "c", "label": 2.0}\n{"text": "d", "label": 10}\n')
    examples = load(mixed, "auto", "cls")
    assert [ex["label"] for ex in examples] == ["1", "1", "2", "10"]
    assert label_set(examples, DataConfig(train="x")) == ["1", "2", "10"]  # numeric order
    with pytest.raises(SftlabError, match=r"mixed.jsonl:1: field 'label' must be a string or integer, got float"):
        load(write(tmp_path / "mixed.jsonl", '{"text": "a", "label": 2.5}\n'), "auto", "cls")
    gaps = tmp_path / "gaps.parquet"  # an integer column with a gap is stored as floats
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, 2.0]}), gaps)
    assert [ex["label"] for ex in load(gaps, "auto", "cls")] == ["1", "2"]
    odd = [{"text": "a", "label": "²"}, {"text": "b", "label": "3"}]  # str.isdigit("²") is True, int("²") fails
    assert label_set(odd, DataConfig(train="x")) == ["3", "²"]


def test_list_fields_given_as_csv_text_say_so(tmp_path):
    history = write(tmp_path / "h.csv", 'instruction,output,history\nq,a,"[[""u"",""v""]]"\n')
    with pytest.raises(SftlabError, match=r"h.csv:2: field 'history' must be list, got str \(a CSV/TSV cell holds text"):
        load(history, "alpaca", "sft")
    messages = write(tmp_path / "m.csv", 'messages\n"[{""role"": ""user""}]"\n')
    with pytest.raises(SftlabError, match=r"m.csv:2: field 'messages' must be a list of turns, got str \(a CSV"):
        load(messages, "auto", "sft")


def test_bom_and_crlf_files_keep_their_lines(tmp_path):
    jsonl = write(tmp_path / "d.jsonl", '{"prompt": "a", "completion": "b"}\r\n\r\n{"prompt": "c", "completion": "d"}\r\n',
                  bom=True)
    assert [ex["_src"] for ex in load(jsonl, "auto", "sft")] == [f"{jsonl}:1", f"{jsonl}:3"]
    csv_file = write(tmp_path / "d.csv", 'text,label\r\n"two\r\nlines",a\r\nnext,b\r\n', bom=True)
    assert [(ex["label"], ex["_src"]) for ex in load(csv_file, "auto", "cls")] == [("a", f"{csv_file}:2"),
                                                                                   ("b", f"{csv_file}:4")]
