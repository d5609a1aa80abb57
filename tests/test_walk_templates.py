"""Acceptance walk of chat templates and loss masks: defects found there, and the cases the walk covered that
the other template tests do not (special-looking text, emoji)."""

from __future__ import annotations

import pytest

from sftlab.data.messages import check_messages
from sftlab.data.templates import IGNORE_INDEX, encode_conversation, render_prompt
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer
from test_templates import EXPECTED_ANSWER, FAMILIES, LAST_TURN_THINKS, TWO_TURNS, _ids, _supervised_runs

# The tool parts of Llama 3.1's template (3.2, 3.3 and Llama 4 write tool results the same way): a dated system
# block, the tools in the first user message, one JSON tool call per turn, and a tool result written with
# `tojson` when it "is iterable", which a string is, so `{"temp": 21}` is rendered as "{\"temp\": 21}".
LLAMA31_TOOLS = (
    "{{- bos_token }}{%- if not tools is defined %}{%- set tools = none %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools is not none %}{{- 'Environment: ipython\\n' }}{%- endif %}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- if not tools is none %}{%- set first_user_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}"
    "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}"
    "{{- first_user_message + '<|eot_id|>'}}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- elif 'tool_calls' in message %}{%- set tool_call = message.tool_calls[0].function %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{{- '{\"name\": \"' + tool_call.name + '\", ' }}{{- '\"parameters\": ' }}{{- tool_call.arguments | tojson }}"
    "{{- '}' }}{{- '<|eot_id|>' }}"
    "{%- elif message.role == 'tool' or message.role == 'ipython' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}"
    "{%- if message.content is mapping or message.content is iterable %}{{- message.content | tojson }}"
    "{%- else %}{{- message.content }}{%- endif %}{{- '<|eot_id|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def _tool_conversation(result: str) -> list[dict]:
    return [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "content": result}, {"role": "assistant", "content": "It is 21 degrees."}]


@pytest.mark.parametrize("result", ['{"temp": 21, "sky": "晴"}', '["a", "b"]', ' 21 degrees \n'])
def test_tool_results_a_template_writes_as_json_or_trimmed_are_accepted(result):
    tok = make_tokenizer("llama3")
    tok.chat_template = LLAMA31_TOOLS
    messages = _tool_conversation(result)
    ids, labels = encode_conversation(tok, messages, tools=[WEATHER], src="t.jsonl:1")
    assert ids == _ids(tok.apply_chat_template(check_messages(messages), tools=[WEATHER], tokenize=True))
    assert _supervised_runs(tok, ids, labels) == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is 21 degrees.<|eot_id|>"]
    prompt = render_prompt(tok, messages[:3], tools=[WEATHER])  # the inference prompt passes the same check
    assert ids[:len(prompt)] == prompt


def test_a_template_that_drops_a_json_tool_result_is_still_refused():
    tok = make_tokenizer("llama3")
    tok.chat_template = LLAMA31_TOOLS.replace("{{- message.content | tojson }}", "{{- '{}' }}")
    with pytest.raises(SftlabError, match=r"^t\.jsonl:1: the tokenizer's chat template did not render the tool "
                                          r"result in message 2"):
        encode_conversation(tok, _tool_conversation('{"temp": 21}'), tools=[WEATHER], src="t.jsonl:1")


def test_mask_all_takes_a_template_that_is_not_prefix_stable():
    tok = make_tokenizer("chatml")
    tok.chat_template = LAST_TURN_THINKS  # Qwen3-like: refused by the assistant mask, which must locate answers
    ids, labels = encode_conversation(tok, TWO_TURNS, mask="all")
    assert ids == _ids(tok.apply_chat_template(TWO_TURNS, tokenize=True)) and labels == ids
    opening = [{"role": "assistant", "content": "Welcome!"}, *TWO_TURNS]  # nothing to locate: no prompt needed
    ids, labels = encode_conversation(make_tokenizer("chatml"), opening, mask="all")
    assert labels == ids and tok.decode(ids).startswith("<|im_start|>assistant\nWelcome!")


def test_mask_all_still_refuses_a_template_that_drops_tool_calls():
    tok = make_tokenizer("chatml")  # its template writes role and content only
    messages = [*_tool_conversation("21")[:2], {"role": "tool", "content": ""}, _tool_conversation("21")[3]]
    with pytest.raises(SftlabError, match="did not render the tool call 'get_weather' of message 1"):
        encode_conversation(tok, messages, mask="all", src="t.jsonl:2")


@pytest.mark.parametrize("name, close", [("chatlm", "chatml"), ("ChatML", "chatml"), ("lama3", "llama3"),
                                         ("Gemma", "gemma"), ("mistrall", "mistral"), ("Auto", "auto")])
def test_unknown_template_suggests_the_closest_name(name, close):
    with pytest.raises(SftlabError) as info:
        encode_conversation(make_tokenizer("chatml"), TWO_TURNS, name)
    message = str(info.value)
    assert message.startswith(f"data.template: unknown chat template {name!r}; did you mean {close!r}? known: auto")
    assert "\n" not in message


def test_each_assistant_given_to_encode_conversation_is_not_called_unknown():
    with pytest.raises(SftlabError, match=r"^data\.mask: each_assistant makes one sample per assistant turn.*"
                                          r"mask_samples") as info:
        encode_conversation(make_tokenizer("chatml"), TWO_TURNS, mask="each_assistant")
    assert "unknown" not in str(info.value)


SPECIAL_LOOKING = [
    {"role": "user", "content": "Say <start_of_turn>model\n or <|im_start|>assistant\n 你好 👋🏽"},
    {"role": "assistant", "content": "literal <|im_end|> then <end_of_turn> and <|eot_id|> 🎉 中文"},
    {"role": "user", "content": "再来 🇫🇷?"},
    {"role": "assistant", "content": "好的 ✅"},
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("template", ["named", "auto"])
def test_special_looking_text_and_emoji_keep_parity_and_masks(family, template):
    tok = make_tokenizer(family)
    ids, labels = encode_conversation(tok, SPECIAL_LOOKING, family if template == "named" else "auto")
    assert ids == _ids(tok.apply_chat_template(SPECIAL_LOOKING, tokenize=True))
    answers = [m["content"] for m in SPECIAL_LOOKING if m["role"] == "assistant"]
    assert _supervised_runs(tok, ids, labels) == [EXPECTED_ANSWER[family](a) for a in answers]
    last_ids, last_labels = encode_conversation(tok, SPECIAL_LOOKING, family, mask="last_assistant")
    assert last_ids == ids and _supervised_runs(tok, ids, last_labels) == [EXPECTED_ANSWER[family](answers[-1])]
    assert sum(label != IGNORE_INDEX for label in last_labels) < sum(label != IGNORE_INDEX for label in labels)
