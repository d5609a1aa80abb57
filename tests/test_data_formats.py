"""Reading data files, converting every format to canonical examples, writing them back, and bad input."""

from __future__ import annotations

import json

import pytest

from sftlab.data.formats import detect_format, read_rows, to_canonical
from sftlab.data.writers import write_rows
from sftlab.errors import SftlabError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def canonical(path, fmt="auto", stage=None, columns=None):
    return to_canonical(read_rows(path), fmt, stage, columns)


def strip_src(examples):
    return [{k: v for k, v in ex.items() if k != "_src"} for ex in examples]


# ------------------------------------------------------------------------------------------ formats


def test_alpaca_json_with_system_history_and_input(tmp_path):
    rows = [{"instruction": "Add", "input": "1+1", "output": "2", "system": "Be brief.", "history": [["a", "b"]]},
            {"instruction": "Say hi", "output": "Hi"}]
    path = write(tmp_path / "a.json", json.dumps(rows, indent=1))
    examples = canonical(path)
    assert examples[0]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "Add\n1+1"}, {"role": "assistant", "content": "2"}]
    assert examples[1]["messages"] == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi"}]
    # _src points at the line where each list item starts, with its index
    assert examples[0]["_src"] == f"{path}:2[#0]"
    assert examples[1]["_src"].startswith(f"{path}:") and examples[1]["_src"].endswith("[#1]")
    line = int(examples[1]["_src"].split(":")[-1].split("[")[0])
    lines = path.read_text().splitlines()
    assert lines[line - 1].strip() == "{" and '"instruction": "Say hi"' in lines[line]


def test_json_object_holding_one_list_and_json_lines_in_a_json_file(tmp_path):
    wrapped = write(tmp_path / "w.json", '{"version": 1, "data": [\n{"text": "a", "label": "x"},\n{"text": "b", "label": 2}]}')
    examples = canonical(wrapped, stage="cls")
    assert strip_src(examples) == [{"text": "a", "label": "x"}, {"text": "b", "label": "2"}]
    assert [ex["_src"] for ex in examples] == [f"{wrapped}:2[#0]", f"{wrapped}:3[#1]"]
    lines = write(tmp_path / "l.json", '{"text": "a"}\n{"text": "b"}\n')
    assert [ex["_src"] for ex in canonical(lines)] == [f"{lines}:1", f"{lines}:2"]


def test_sharegpt_conversations_and_role_content_variant(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "Be brief."}]
    path = write(tmp_path / "s.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert detect_format(read_rows(path)[0]) == "sharegpt"
    examples = canonical(path)
    assert examples[0]["messages"] == CHAT and examples[1]["messages"] == CHAT
    assert examples[1]["_src"] == f"{path}:2"
    tagged = [{"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    tagged_path = write(tmp_path / "t.jsonl", json.dumps(tagged[0]) + "\n")
    assert canonical(tagged_path, "sharegpt")[0]["messages"] == CHAT[1:]


def test_openai_messages_with_text_parts(tmp_path):
    rows = [{"messages": CHAT}, {"messages": [{"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]},
                                              {"role": "assistant", "content": "Hello"}]}]
    path = write(tmp_path / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert detect_format(read_rows(path)[0]) == "messages"
    assert strip_src(canonical(path)) == [{"messages": CHAT}, {"messages": CHAT[1:]}]


def test_prompt_completion_plain_and_conversational(tmp_path):
    rows = [{"prompt": "Hi", "completion": "Hello"},
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}]
    path = write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert strip_src(canonical(path)) == [{"messages": CHAT[1:]}, {"messages": CHAT[1:]}]


def test_text_txt_and_csv_label_with_column_mapping(tmp_path):
    txt = write(tmp_path / "corpus.txt", "first line\n\nsecond line\n")
    assert canonical(txt) == [{"text": "first line", "_src": f"{txt}:1"}, {"text": "second line", "_src": f"{txt}:3"}]
    csv_path = write(tmp_path / "c.csv", 'sentence,category\n"two\nlines",refund\nhello,greeting\n')
    examples = canonical(csv_path, "label", "cls", {"text": "sentence", "label": "category"})
    assert examples == [{"text": "two\nlines", "label": "refund", "_src": f"{csv_path}:2"},
                        {"text": "hello", "label": "greeting", "_src": f"{csv_path}:4"}]  # header is line 1


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), path)
    assert canonical(path) == [{"text": "a", "label": "x", "_src": f"{path}[#0]"}, {"text": "b", "label": "y", "_src": f"{path}[#1]"}]


@pytest.mark.parametrize("fmt, suffix", [("alpaca", ".json"), ("sharegpt", ".jsonl"), ("messages", ".json"), ("jsonl", ".jsonl")])
def test_conversations_round_trip_through_write_rows(tmp_path, fmt, suffix):
    examples = [{"messages": CHAT, "_src": "x:1"},
                {"messages": CHAT[1:] + [{"role": "user", "content": "More"}, {"role": "assistant", "content": "Sure"}], "_src": "x:2"}]
    out = write_rows(tmp_path / f"out{suffix}", examples, fmt)
    back = to_canonical(read_rows(out), "auto" if fmt != "jsonl" else "messages")
    assert strip_src(back) == strip_src(examples)


def test_flat_examples_round_trip_through_csv_and_jsonl(tmp_path):
    examples = [{"text": 'a, "quoted"\nline', "label": "x"}, {"text": "b", "label": "y"}]
    for name, fmt in (("o.csv", "csv"), ("o.jsonl", "jsonl")):
        out = write_rows(tmp_path / name, examples, fmt)
        assert strip_src(canonical(out, stage="cls")) == examples


def test_write_rows_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(SftlabError, match="csv holds text/label"):
        write_rows(tmp_path / "o.csv", [{"messages": CHAT, "_src": "x:3"}], "csv")
    with pytest.raises(SftlabError, match="x:4: alpaca needs alternating"):
        write_rows(tmp_path / "o.json", [{"messages": CHAT[1:2] + CHAT[1:], "_src": "x:4"}], "alpaca")
    with pytest.raises(SftlabError, match="unknown output format"):
        write_rows(tmp_path / "o.json", [{"text": "a"}], "yaml")
    assert not list(tmp_path.iterdir())  # nothing half-written


# ------------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(SftlabError, match=r"data file not found: .*nope\.jsonl"):
        read_rows(tmp_path / "nope.jsonl")


def test_an_unterminated_string_reads_once_at(tmp_path):
    # json's message "Unterminated string starting at" came out as "... starting at at column 10"
    path = write(tmp_path / "cut.jsonl", '{"text": "ok"}\n{"text": "cut\n')
    with pytest.raises(SftlabError) as err:
        read_rows(path)
    assert str(err.value) == f"{path}:2: malformed JSON line (Unterminated string starting at column 10)"


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(SftlabError, match=rf"{path}:3: malformed JSON line"):
        read_rows(path)


def test_unicode_line_separators_inside_records_are_not_line_breaks(tmp_path):
    # JSON strings may hold U+2028, U+2029 and U+0085 as they are (json.dumps(..., ensure_ascii=False) writes them),
    # and a text line may hold a form feed; str.splitlines broke such lines apart
    texts = ["a\u2028b", "c\u2029d\x85e"]
    path = write(tmp_path / "u.jsonl", "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    assert [(row["text"], row["_src"]) for row in read_rows(path)] == [(texts[0], f"{path}:1"), (texts[1], f"{path}:2")]
    path = write(tmp_path / "u.txt", "page one\x0cstill line one\r\nline two\n")
    assert [(row["text"], row["_src"]) for row in read_rows(path)] == [("page one\x0cstill line one", f"{path}:1"),
                                                                       ("line two", f"{path}:2")]


def test_lone_surrogate_escape_is_an_error_naming_line_and_field(tmp_path):
    line = '{"messages": [{"role": "user", "content": "smile \\ud83d"}, {"role": "assistant", "content": "ok"}]}'
    path = write(tmp_path / "s.jsonl", '{"text": "fine \\ud83d\\ude00"}\n' + line + "\n")
    message = r"lone UTF-16 surrogate \\ud83d in messages\[0\].content \(half of an emoji\?\)"
    with pytest.raises(SftlabError, match=rf"^{path}:2: {message}"):
        read_rows(path)
    path = write(tmp_path / "s.json", "[\n" + line + "\n]")
    with pytest.raises(SftlabError, match=rf"^{path}:2\[#0\]: {message}"):
        read_rows(path)
    assert read_rows(path, surrogates=True)[0]["messages"][0]["content"] == "smile \ud83d"


def test_training_on_a_lone_surrogate_is_a_one_line_error(tmp_path, capsys):
    import yaml

    from sftlab.cli import main
    from test_train_loop import SFT_ROWS, tiny_run

    raw = tiny_run(tmp_path, "qwen2")
    data = tmp_path / "train.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "smile \\ud83d"}, {"role": "assistant", "content": "ok"}]}'
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert len(lines) == len(SFT_ROWS)
    assert main(["train", str(tmp_path / "run.yaml"), "--no-progress"]) == 2  # was a UnicodeEncodeError traceback
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error") or "Error" in line]
    assert errors == [f"error: {data}:3: lone UTF-16 surrogate \\ud83d in messages[0].content (half of an emoji?); it " \
                      "cannot be written as UTF-8: fix or remove it"]


def test_malformed_json_document_names_line(tmp_path):
    path = write(tmp_path / "bad.json", '[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(SftlabError, match=rf"{path}:3: malformed JSON"):
        read_rows(path)


def test_json_file_that_is_really_csv(tmp_path):
    path = write(tmp_path / "data.json", "text,label\nhello,x\n")
    with pytest.raises(SftlabError, match=rf"{path}:1: not JSON.*CSV"):
        read_rows(path)


def test_binary_and_non_utf8_files(tmp_path):
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(SftlabError, match="binary content"):
        read_rows(binary)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(SftlabError, match=rf"{latin}:2: not valid UTF-8"):
        read_rows(latin)


def test_unknown_extension_and_unknown_format(tmp_path):
    with pytest.raises(SftlabError, match="unknown data file extension '.xml'"):
        read_rows(write(tmp_path / "d.xml", "<a/>"))
    rows = read_rows(write(tmp_path / "d.jsonl", '{"text": "a"}\n'))
    with pytest.raises(SftlabError, match="unknown data format 'yaml'"):
        to_canonical(rows, "yaml")
    odd = read_rows(write(tmp_path / "o.jsonl", '{"question": "a", "answer": "b"}\n'))
    with pytest.raises(SftlabError, match=r"o.jsonl:1: cannot tell the data format .*question.*data.format"):
        to_canonical(odd)


@pytest.mark.parametrize("name, text", [("e.jsonl", ""), ("e.json", "[]"), ("e.csv", "text,label\n"), ("e2.jsonl", "\n\n")])
def test_empty_dataset(tmp_path, name, text):
    with pytest.raises(SftlabError, match="empty dataset"):
        read_rows(write(tmp_path / name, text))


def test_missing_required_field_names_record(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": null}\n')
    with pytest.raises(SftlabError, match=rf"{path}:2: missing required field 'output'"):
        canonical(path, "alpaca")
    labels = write(tmp_path / "l.csv", "text,label\nhi,x\nho,\n")
    with pytest.raises(SftlabError, match=rf"{labels}:3: field 'label' is empty"):
        canonical(labels, "label")
    blank = write(tmp_path / "b.jsonl", '{"text": "hi", "label": "x"}\n{"text": "ho", "label": "   "}\n')
    with pytest.raises(SftlabError, match=rf"{blank}:2: field 'label' is empty"):  # was a class named "   "
        canonical(blank, "label")
    none = write(tmp_path / "n.jsonl", '{"text": "hi", "label": "x"}\n{"text": "ho"}\n')
    with pytest.raises(SftlabError, match=rf"{none}:2: missing required field 'label'"):
        canonical(none, "label")


def test_a_message_without_a_role_says_so(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"messages": [{"content": "hi"}, {"role": "assistant", "content": "ho"}]}\n')
    with pytest.raises(SftlabError, match=rf"{path}:1: messages\[0\] has no 'role'; expected one of"):
        canonical(path, "messages")


def test_wrong_type_unknown_role_mixed_formats_and_stage_mismatch(tmp_path):
    typed = write(tmp_path / "t.jsonl", '{"instruction": "a", "output": 3}\n')
    with pytest.raises(SftlabError, match=rf"{typed}:1: field 'output' must be str, got int"):
        canonical(typed)
    role = write(tmp_path / "r.jsonl", json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}) + "\n")
    with pytest.raises(SftlabError, match=rf"{role}:1: conversations\[1\] has unknown role 'bot'"):
        canonical(role)
    mixed = write(tmp_path / "m.jsonl", '{"instruction": "a", "output": "b"}\n{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(SftlabError, match=rf"{mixed}:2: row looks like 'prompt_completion' .* 'alpaca'.*mixed formats"):
        canonical(mixed)
    with pytest.raises(SftlabError, match=r"format 'alpaca' gives sft examples, but train.stage is 'cls'"):
        canonical(typed, stage="cls")
    missing_column = write(tmp_path / "c.csv", "text,label\na,b\n")
    with pytest.raises(SftlabError, match=r"c.csv:2: column 'category' \(data.columns.label\) not found"):
        canonical(missing_column, columns={"label": "category"})


def test_conversation_needs_user_and_assistant(tmp_path):
    path = write(tmp_path / "m.jsonl", json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n")
    with pytest.raises(SftlabError, match=rf"{path}:1: a conversation needs at least one user and one assistant"):
        canonical(path)


def test_input_file_is_not_modified(tmp_path):
    path = write(tmp_path / "a.json", json.dumps([{"instruction": "a", "output": "b"}]))
    before = path.read_bytes()
    canonical(path)
    assert path.read_bytes() == before


def test_single_record_json_array_in_jsonl_and_json_in_csv(tmp_path):
    one = write(tmp_path / "one.json", json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}))
    assert strip_src(canonical(one)) == [{"messages": CHAT[1:]}]
    array = write(tmp_path / "a.jsonl", '[\n{"text": "a"},\n{"text": "b"}\n]\n')
    assert [ex["_src"] for ex in canonical(array)] == [f"{array}:2[#0]", f"{array}:3[#1]"]
    several = write(tmp_path / "s.json", '{"train": [{"text": "a"}], "test": [{"text": "b"}]}')
    with pytest.raises(SftlabError, match="holds several lists"):
        read_rows(several)
    with pytest.raises(SftlabError, match=r"j.csv:1: looks like JSON, not CSV"):
        read_rows(write(tmp_path / "j.csv", '[{"text": "a"}]'))
    big = write(tmp_path / "big.csv", "text,label\n" + "x" * 200_000 + ",y\n")
    assert len(read_rows(big)[0]["text"]) == 200_000  # above the csv module's default field limit


def test_a_tool_call_turn_with_content_null_writes_as_sharegpt(tmp_path):
    """The OpenAI shape of a call-only assistant turn (content null), as Python callers hand it over."""
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    example = {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                            {"role": "assistant", "content": None, "tool_calls": [call]},
                            {"role": "tool", "content": "3 C"}, {"role": "assistant", "content": "3 C."}]}
    out = write_rows(tmp_path / "out.json", [example], "sharegpt")
    turns = json.loads(out.read_text(encoding="utf-8"))[0]["conversations"]
    assert [t["from"] for t in turns] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(turns[1]["value"]) == {"name": "weather", "arguments": {"city": "Oslo"}}
