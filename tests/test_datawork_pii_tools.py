"""sftlab data clean --redact-pii on tool-calling data: tool-call arguments (objects and JSON text), tool results
(JSON text and plain text) and LLaMA-Factory function_call / observation turns are redacted in string values
only, JSON stays valid and byte-identical apart from the redacted values, the tools list, names and ids are left
alone, the report counts each field, and the CLI writes the redacted file."""

from __future__ import annotations

import copy
import json

import pytest

from sftlab.cli import main
from sftlab.datawork.clean import CleanOptions, clean_examples
from sftlab.datawork.pii import KINDS, Redactor

# PII in string values (redacted), in a key and in a number (both kept), nested in a list and an object
ARGS = {"to": "zhang.san@corp.cn", "a.b@corp.com": "keep the key", "count": 13812345678,
        "cc": ["li@corp.cn", "nobody"], "nested": {"host": "server 10.0.0.1", "ok": True, "none": None}}
REDACTED_ARGS = {"to": "[EMAIL]", "a.b@corp.com": "keep the key", "count": 13812345678,
                 "cc": ["[EMAIL]", "nobody"], "nested": {"host": "server [IP]", "ok": True, "none": None}}
# JSON text with its own spacing, line breaks and a \u escape (the @ of the first address)
ARGS_TEXT = ('{ "to" : "zhang.san\\u0040corp.cn",\n  "a.b@corp.com": "keep the key", "count": 13812345678,\n'
             '  "cc": ["li@corp.cn", "nobody"], "nested": {"host": "server 10.0.0.1", "ok": true, "none": null} }')
REDACTED_ARGS_TEXT = ('{ "to" : "[EMAIL]",\n  "a.b@corp.com": "keep the key", "count": 13812345678,\n'
                      '  "cc": ["[EMAIL]", "nobody"], "nested": {"host": "server [IP]", "ok": true, "none": null} }')
TOOLS = [{"type": "function", "function": {"name": "send_mail", "description": "Mails ops@corp.com on failure",
                                           "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}}]


def conversation(arguments, result: str, call_id: str = "call_13812345678") -> dict:
    call = {"id": call_id, "type": "function", "function": {"name": "send_mail", "arguments": arguments}}
    return {"messages": [{"role": "user", "content": "Mail zhang.san@corp.cn please"},
                         {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "content": result, "name": "send_mail", "tool_call_id": call_id},
                         {"role": "assistant", "content": "Sent."}], "tools": TOOLS, "_src": "t:1"}


@pytest.mark.parametrize("arguments, expected", [(ARGS, REDACTED_ARGS), (ARGS_TEXT, REDACTED_ARGS_TEXT)],
                         ids=["object", "json-text"])
def test_tool_call_arguments_redact_string_values_only(arguments, expected):
    redactor = Redactor()
    example = conversation(copy.deepcopy(arguments), "ok")
    out = redactor.redact_example(example)
    got = out["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert type(got) is type(arguments) and got == expected  # text stays text (byte for byte outside the values)
    assert (json.loads(got) if isinstance(got, str) else got) == REDACTED_ARGS  # valid JSON, only values changed
    assert redactor.fields == {"contents": 1, "tool_arguments": 3, "tool_results": 0}
    assert redactor.counts == {"email": 3, "id": 0, "card": 0, "phone": 0, "ip": 1}
    assert example["messages"][1]["tool_calls"][0]["function"]["arguments"] == arguments  # the input is untouched


@pytest.mark.parametrize("result, expected, replaced", [
    ('{"email" : "zhang\\u0040corp.cn", "10.0.0.1": "key kept", "phone": 13812345678,\n "log": ["call 138 1234 5678"]}',
     '{"email" : "[EMAIL]", "10.0.0.1": "key kept", "phone": 13812345678,\n "log": ["call [PHONE]"]}', 2),
    ('[{"ip": "10.0.0.1"}, "寄给 li@corp.cn"]', '[{"ip": "[IP]"}, "寄给 [EMAIL]"]', 2),
    ("Booked; we will call 13812345678", "Booked; we will call [PHONE]", 1),       # plain text
    ('{"broken": "13812345678"', '{"broken": "[PHONE]"', 1),                      # not JSON: plain text
    ("13812345678", "[PHONE]", 1),                                                # a bare JSON number: plain text
])
def test_tool_results_redact_json_values_or_plain_text(result, expected, replaced):
    redactor = Redactor()
    out = redactor.redact_example(conversation({"to": "nobody"}, result))
    assert out["messages"][2]["content"] == expected
    assert redactor.fields == {"contents": 1, "tool_arguments": 0, "tool_results": replaced}
    if result.startswith(("{\"email", "[")):
        json.loads(expected)  # still valid JSON


def test_data_without_pii_is_byte_identical_and_tools_names_ids_are_left_alone():
    redactor = Redactor()
    clean_text = '{ "city":"\\u5df4\\u9ece",  "days" : [1, 2.50, 3e2], "note": "2024-01-15 \\"v1.2.3.4\\"" }'
    example = conversation(clean_text, '{"temp" : 21.0, "unit": "\\u00b0C"}\n')
    example["messages"][0]["content"] = "Weather in Paris?"
    original = json.dumps(example, ensure_ascii=False)
    out = redactor.redact_example(example)
    assert json.dumps(out, ensure_ascii=False) == original
    assert sum(redactor.counts.values()) == 0 and sum(redactor.fields.values()) == 0
    example = conversation({"to": "a@b.com"}, "ok")
    example["messages"][1]["tool_calls"][0]["function"]["name"] = example["messages"][2]["name"] = "page_13812345678"
    with_pii = redactor.redact_example(example)
    assert with_pii["tools"] == TOOLS  # the description's address stays
    call = with_pii["messages"][1]["tool_calls"][0]
    assert call["id"] == "call_13812345678"
    assert call["function"] == {"name": "page_13812345678", "arguments": {"to": "[EMAIL]"}}
    result = with_pii["messages"][2]
    assert result["tool_call_id"] == "call_13812345678" and result["name"] == "page_13812345678"
    assert redactor.fields == {"contents": 1, "tool_arguments": 1, "tool_results": 0}


def test_openai_form_with_null_content_and_text_arguments():
    call = {"type": "function", "function": {"name": "send_mail", "arguments": '{"to": "a@b.com"}'}}
    example = {"messages": [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": None, "tool_calls": [call]}]}
    out = Redactor(["email"]).redact_example(example)
    assert out["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "send_mail", "arguments": '{"to": "[EMAIL]"}'}}]}


def test_clean_report_counts_tool_fields_and_full_width_arguments_are_not_normalised():
    examples = [conversation({"to": "a@b.com", "phone": "138 1234 5678"}, '{"status": "sent to 10.0.0.1"}'),
                conversation({"to": "nobody"}, "done", call_id="c2") | {"_src": "t:2"}]
    examples[1]["messages"][0]["content"] = "Nothing personal here"
    examples[1]["messages"][3]["content"] = "Done."
    kept, report = clean_examples(examples, CleanOptions(redact_pii=list(KINDS)))
    section = report.data["sections"]["pii_redaction"]
    assert section["redacted"] == {"email": 2, "id": 0, "card": 0, "phone": 1, "ip": 1}
    assert section["redacted_in"] == {"contents": 1, "tool_arguments": 2, "tool_results": 1}
    assert section["changed_examples"] == 1 and kept[1] == examples[1]
    assert ("redacted PII in 1 examples: email 2, id 0, card 0, phone 1, ip 1 "
            "(in contents 1, tool-call arguments 2, tool results 1)") in report.summary()
    full_width = [conversation({"phone": "１３８１２３４５６７８"}, "call １３８１２３４５６７８")]
    kept, _ = clean_examples(full_width, CleanOptions(redact_pii=["phone"]))
    assert kept[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"phone": "１３８１２３４５６７８"}
    assert kept[0]["messages"][2]["content"] == "call [PHONE]"  # a tool result is a message content: normalised


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def test_clean_cli_redacts_messages_tool_data(tmp_path, capsys):
    pii = conversation(ARGS_TEXT, '{"sent_to": "zhang.san@corp.cn", "id": 7}')
    plain = conversation({"city": "Paris"}, '{"temp": 21}', call_id="call_2")
    plain["messages"][0]["content"], plain["messages"][3]["content"] = "Weather in Paris?", "It is 21 degrees."
    rows = [{key: value for key, value in row.items() if key != "_src"} for row in (pii, plain)]
    _write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["data", "clean", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--redact-pii"]) == 0
    assert main(["data", "clean", str(tmp_path / "in.jsonl"), str(tmp_path / "raw.jsonl")]) == 0
    out_lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert out_lines[1] == (tmp_path / "raw.jsonl").read_text(encoding="utf-8").splitlines()[1]  # no PII: same bytes
    assert json.loads(out_lines[1]) == rows[1]
    written = json.loads(out_lines[0])
    assert "zhang" not in out_lines[0] and "li@corp" not in out_lines[0] and "10.0.0.1" not in out_lines[0]
    assert written["messages"][0]["content"] == "Mail [EMAIL] please"
    assert written["messages"][1]["tool_calls"][0]["function"]["arguments"] == REDACTED_ARGS  # read as an object
    assert json.loads(written["messages"][2]["content"]) == {"sent_to": "[EMAIL]", "id": 7}
    assert written["tools"] == TOOLS
    report = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))["sections"]["pii_redaction"]
    assert report["redacted_in"] == {"contents": 1, "tool_arguments": 3, "tool_results": 1}
    assert "(in contents 1, tool-call arguments 3, tool results 1)" in capsys.readouterr().out


def test_clean_cli_redacts_sharegpt_function_call_and_observation_turns(tmp_path):
    tools_text = json.dumps([TOOLS[0]["function"]], ensure_ascii=False)
    row = {"conversations": [
        {"from": "human", "value": "Mail my boss"},
        {"from": "function_call", "value": json.dumps({"name": "send_mail", "arguments": {"to": "boss@corp.cn"}})},
        {"from": "observation", "value": '{"delivered": "boss@corp.cn", "queue": "10.0.0.1:25"}'},
        {"from": "gpt", "value": "Mailed."}], "tools": tools_text}
    _write_jsonl(tmp_path / "in.jsonl", [row])
    assert main(["data", "clean", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--to", "sharegpt",
                 "--redact-pii"]) == 0
    (written,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    turns = written["conversations"]
    assert [t["from"] for t in turns] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(turns[1]["value"]) == {"name": "send_mail", "arguments": {"to": "[EMAIL]"}}  # JSON text
    assert turns[2]["value"] == '{"delivered": "[EMAIL]", "queue": "[IP]:25"}'
    assert json.loads(written["tools"]) == TOOLS  # the tools column is left alone (bare functions are wrapped)
    assert "ops@corp.com" in written["tools"]
