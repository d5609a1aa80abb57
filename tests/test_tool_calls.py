"""Tool-calling conversations: canonical shapes, the messages and LLaMA-Factory sharegpt inputs, rendering
through the tokenizer's own tool-capable template (ids as apply_chat_template gives them), masks that
supervise assistant turns and their tool calls but never tool results or the tools block, clear errors, and
a tiny training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.data.formats import read_rows, to_canonical
from sftlab.data.writers import write_rows
from sftlab.data.sources import _registry_rows
from sftlab.data.templates import encode_conversation, render_prompt
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer, save_tiny
from test_templates import _supervised_runs as supervised_runs
from test_train_loop import tiny_run, train, write_jsonl

# A small tool-capable ChatML-like template written for these tests: the tools are listed in a system block,
# tool calls are <tool_call>{json}</tool_call> in the assistant turn, results a user-side <tool_response> turn.
TOOL_TEMPLATE = (
    "{% set ns = namespace(start=0) %}{% if messages[0]['role'] == 'system' %}{% set ns.start = 1 %}{% endif %}"
    "{% if tools or ns.start %}{{ '<|im_start|>system\\n' }}{% if ns.start %}{{ messages[0]['content'] }}{% endif %}"
    "{% if tools %}{{ ('\\n\\n' if ns.start else '') + 'You may call these functions:' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages[ns.start:] %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' + message['content'] }}"
    "{% for call in message.get('tool_calls', []) %}{{ ('\\n' if message['content'] or not loop.first else '')"
    " + '<tool_call>\\n' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)"
    " + '\\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOLS = [{"type": "function", "function": WEATHER}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'


@pytest.fixture
def tok():
    tokenizer = make_tokenizer("chatml")
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def test_ids_equal_apply_chat_template_with_tools(tok):
    ids, labels = encode_conversation(tok, MESSAGES, tools=TOOLS)
    expected = tok.apply_chat_template(MESSAGES, tools=TOOLS, tokenize=True)
    assert ids == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert len(labels) == len(ids)
    text = tok.decode(ids)
    assert '"get_weather"' in text.split("<|im_end|>")[0] and "<tool_response>" in text  # the template did render tools
    prompt = render_prompt(tok, MESSAGES[:2], tools=TOOLS)
    assert prompt == list(tok.apply_chat_template(MESSAGES[:2], tools=TOOLS, add_generation_prompt=True,
                                                  tokenize=True)["input_ids"])


def test_labels_supervise_assistant_turns_and_tool_calls_only(tok):
    ids, labels = encode_conversation(tok, MESSAGES, tools=TOOLS)
    assert supervised_runs(tok, ids, labels) == [CALL_TEXT, "It is 21 degrees in Paris.<|im_end|>"]
    _, last = encode_conversation(tok, MESSAGES, tools=TOOLS, mask="last_assistant")
    assert supervised_runs(tok, ids, last) == ["It is 21 degrees in Paris.<|im_end|>"]
    text_and_call = [*MESSAGES[:2], {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}]
    ids, labels = encode_conversation(tok, text_and_call, tools=TOOLS)
    assert supervised_runs(tok, ids, labels) == ["Let me look.\n" + CALL_TEXT]


def openai_row(arguments) -> dict:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {"messages": [*MESSAGES[:2], {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}, MESSAGES[4]],
            "tools": TOOLS}


SHAREGPT_ROW = {
    "conversations": [{"from": "human", "value": "Weather in Paris?"},
                      {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
                      {"from": "observation", "value": '{"temp": 21}'},
                      {"from": "gpt", "value": "It is 21 degrees in Paris."}],
    "system": "You are helpful.", "tools": json.dumps([WEATHER]),
}


def encode_file(tok, path, **kwargs):
    out = []
    for ex in to_canonical(read_rows(path), **kwargs):
        out.append(encode_conversation(tok, ex["messages"], tools=ex.get("tools"), src=ex["_src"]))
    return out


def test_sharegpt_function_call_file_gives_the_same_ids_as_the_openai_file(tok, tmp_path):
    openai = write_jsonl(tmp_path / "openai.jsonl", [openai_row(json.dumps({"city": "Paris"}))])
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [SHAREGPT_ROW])
    [example] = to_canonical(read_rows(sharegpt))
    assert example["messages"][2] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert example["messages"][3] == {"role": "tool", "content": '{"temp": 21}'} and example["tools"] == TOOLS
    direct = encode_conversation(tok, MESSAGES, tools=TOOLS)
    assert encode_file(tok, openai) == encode_file(tok, sharegpt) == [direct]
    entry = {"file_name": "sharegpt.jsonl", "formatting": "sharegpt",
             "columns": {"messages": "conversations", "system": "system", "tools": "tools"}}
    [registered] = _registry_rows("weather", entry, tmp_path, "sft")
    assert registered["tools"] == TOOLS and registered["messages"] == example["messages"]
    renamed = {"fc": "function_call", "obs": "observation"}
    write_jsonl(tmp_path / "tagged.jsonl", [{**SHAREGPT_ROW, "conversations": [
        {"from": {v: k for k, v in renamed.items()}.get(t["from"], t["from"]), "value": t["value"]}
        for t in SHAREGPT_ROW["conversations"]]}])
    entry |= {"file_name": "tagged.jsonl", "tags": {"function_tag": "fc", "observation_tag": "obs"}}
    assert _registry_rows("tagged", entry, tmp_path, "sft")[0]["messages"] == example["messages"]
    # written back as sharegpt / messages, the conversations read the same
    for fmt in ("sharegpt", "messages"):
        back = write_rows(tmp_path / f"back-{fmt}.jsonl", [example], fmt)
        assert [{k: v for k, v in ex.items() if k != "_src"} for ex in to_canonical(read_rows(back))] == [
            {"messages": example["messages"], "tools": TOOLS}]
    with pytest.raises(SftlabError, match="alpaca has no place for tools"):
        write_rows(tmp_path / "back.json", [example], "alpaca")
    both = {"messages": [*MESSAGES[:2], {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}]}
    with pytest.raises(SftlabError, match="needs the messages format"):
        write_rows(tmp_path / "back.jsonl", [both], "sharegpt")


def test_the_docs_example_lines_give_the_same_example_and_ids(tok, tmp_path):
    docs = (Path(__file__).parent.parent / "docs" / "data.md").read_text(encoding="utf-8")
    section = docs.split("## Tool-calling")[1].split("\n## ")[0]
    lines = [block.split("\n")[1] for block in section.split("```json")[1:]]
    examples = [to_canonical(read_rows(write_jsonl(tmp_path / f"{i}.jsonl", [json.loads(line)])))[0]
                for i, line in enumerate(lines)]
    assert len(examples) == 2 and examples[0]["messages"] == examples[1]["messages"]
    assert examples[0]["tools"] == examples[1]["tools"]
    assert len({str(encode_conversation(tok, ex["messages"], tools=ex["tools"])) for ex in examples}) == 1


def test_data_build_validate_accepts_a_tool_call_turn_without_text(tmp_path):
    from sftlab.datawork.validate import validate_file

    path = write_jsonl(tmp_path / "ok.jsonl", [openai_row({"city": "Paris"})])
    problems, _ = validate_file(path)
    assert problems == []


def _calls(value):
    return [*MESSAGES[:2], {"role": "assistant", "content": "", "tool_calls": value}, *MESSAGES[3:]]


BAD_ROWS = [
    ({"messages": _calls("get_weather")}, r"messages\[2\]\.tool_calls must be a non-empty list of calls, got str"),
    ({"messages": _calls([{"type": "function", "function": {"arguments": {}}}])},
     r"messages\[2\]\.tool_calls\[0\]\.function\.name must be a non-empty string"),
    ({"messages": _calls([{"type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}])},
     r"messages\[2\]\.tool_calls\[0\]\.function\.arguments is not valid JSON"),
    ({"messages": _calls([{"type": "function", "function": {"name": "get_weather", "arguments": "[1]"}}])},
     r"messages\[2\]\.tool_calls\[0\]\.function\.arguments must be a JSON object of arguments, got list"),
    ({"messages": [MESSAGES[1], MESSAGES[3], MESSAGES[4]]},
     "turn 1 is a tool result, but no assistant turn with tool_calls comes before it"),
    ({"messages": MESSAGES, "tools": {"name": "get_weather"}}, "tools must be a list of function definitions, got dict"),
    ({"messages": MESSAGES, "tools": [{"description": "no name"}]}, r"tools\[0\]\.name must be a non-empty string"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "get_weather(Paris)"},
                        {"from": "observation", "value": "21"}, {"from": "gpt", "value": "21"}]},
     r"conversations\[1\]\.value is not valid JSON"),
    ({"conversations": SHAREGPT_ROW["conversations"], "tools": "[{"}, "field 'tools' is not valid JSON"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS)
def test_bad_tool_shapes_give_one_line_errors_naming_file_line(tmp_path, row, message):
    good = SHAREGPT_ROW if "conversations" in row else {"messages": MESSAGES, "tools": TOOLS}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(SftlabError, match=message) as info:
        to_canonical(read_rows(path))
    assert str(info.value).startswith(f"{path}:2: ") and "\n" not in str(info.value)


def test_bad_shapes_at_encode_time_name_the_source_and_message(tok):
    bad = _calls([{"type": "function", "function": {"name": "get_weather", "arguments": "not json"}}])
    with pytest.raises(SftlabError, match=r"^x\.jsonl:7: message 2\.tool_calls\[0\]\.function\.arguments is not valid"):
        encode_conversation(tok, bad, tools=TOOLS, src="x.jsonl:7")
    with pytest.raises(SftlabError, match=r"^x\.jsonl:7: message 1 is a tool result, but no assistant"):
        encode_conversation(tok, [MESSAGES[1], MESSAGES[3], MESSAGES[4]], src="x.jsonl:7")
    with pytest.raises(SftlabError, match=r"^x\.jsonl:7: tools\[0\]\.function\.name must be"):
        encode_conversation(tok, MESSAGES, tools=[{"type": "function", "function": {}}], src="x.jsonl:7")


@pytest.mark.parametrize("template", ["chatml", "plain", "auto-without-template"])
def test_builtin_templates_refuse_tool_data(tok, template):
    if template == "auto-without-template":
        tok.chat_template, template = None, "auto"
    for messages, tools in ((MESSAGES, TOOLS), (MESSAGES, None), (MESSAGES[:2] + MESSAGES[4:], TOOLS)):
        with pytest.raises(SftlabError, match=r"^a\.jsonl:3: .*has no tool format; use a tokenizer whose own chat "
                                              r"template renders tools, with data.template: auto$"):
            encode_conversation(tok, messages, template=template, tools=tools, src="a.jsonl:3")
    plain = [MESSAGES[1], MESSAGES[4]]
    assert encode_conversation(tok, plain, template=template)[0]  # plain conversations still render


def test_a_template_that_ignores_tools_is_refused():
    plain = make_tokenizer("chatml")  # its template renders role + content only
    with pytest.raises(SftlabError, match="did not render tool 'get_weather'.*does not handle tools"):
        encode_conversation(plain, MESSAGES, tools=TOOLS, src="a.jsonl:1")
    with pytest.raises(SftlabError, match="did not render the tool call 'get_weather' of message 2"):
        encode_conversation(plain, [*MESSAGES[:3], {"role": "tool", "content": ""}, MESSAGES[4]], src="a.jsonl:1")
    no_results = make_tokenizer("chatml")
    no_results.chat_template = TOOL_TEMPLATE.replace("+ message['content'] + '\\n</tool_response>", "+ '\\n</tool_response>")
    assert no_results.chat_template != TOOL_TEMPLATE
    with pytest.raises(SftlabError, match="did not render the tool result in message 3"):
        encode_conversation(no_results, MESSAGES, tools=TOOLS, src="a.jsonl:1")


def test_tiny_sft_run_on_a_tool_calling_file(tmp_path):
    from transformers import AutoTokenizer

    model_dir = save_tiny("qwen2", tmp_path / "base-qwen2-causal_lm", hidden=32, layers=1)
    saved = AutoTokenizer.from_pretrained(model_dir)
    saved.chat_template = TOOL_TEMPLATE
    saved.save_pretrained(model_dir)
    rows = [openai_row({"city": f"city {i}"}) for i in range(5)]
    rows += [{"messages": [MESSAGES[1], {"role": "assistant", "content": f"plain answer {i}"}]} for i in range(3)]
    result = train(tiny_run(tmp_path, arch="qwen2", rows=rows, train={"max_steps": 2, "max_length": 1024}))
    stats = json.loads((result.out_dir / "data_stats.json").read_text())["train"]
    assert stats["examples"] == stats["rows"] == len(rows) and stats["supervised_tokens"] > 0


def test_each_assistant_mask_with_tools_gives_a_sample_per_turn(tok, tmp_path):
    from sftlab.config.schema import DataConfig, TrainConfig
    from sftlab.data.tokenize import tokenize_examples

    data = DataConfig(train="unused.jsonl", mask="each_assistant", cache_dir=str(tmp_path))
    rows, stats = tokenize_examples([{"messages": MESSAGES, "tools": TOOLS, "_src": "t.jsonl:1"}], tok, data,
                                    TrainConfig(stage="sft", max_length=512))
    assert stats.rows == 2
    first = tok.apply_chat_template(MESSAGES[:3], tools=TOOLS, tokenize=True, return_dict=False)
    assert list(rows[0]["input_ids"]) == first  # the tool-call turn, with the tools block
    assert supervised_runs(tok, list(rows[0]["input_ids"]), list(rows[0]["labels"])) == [CALL_TEXT]
    assert supervised_runs(tok, list(rows[1]["input_ids"]), list(rows[1]["labels"])) == [
        "It is 21 degrees in Paris.<|im_end|>"]
