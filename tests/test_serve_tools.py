"""Tool calling through `sftlab serve`: tools rendered into the prompt by the tokenizer's own template, tool-call
history accepted, `<tool_call>` blocks in answers returned as OpenAI tool_calls (plain and streamed), tool_choice,
400s naming the field (also for images with tools), and the access log's finish_reason as the client got it.
Answers are fixed texts from a stubbed `Engine.submit`, so a random tiny model
"calls" a tool deterministically; the prompt ids it received are checked against `render_prompt`."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from sftlab.data.templates import render_prompt
from sftlab.infer.loading import load_served
from sftlab.models.tiny import save_tiny
from sftlab.serve.config import ServeSettings
from sftlab.serve.server import ServerThread
from logged_server import access_log_records, start_logged_server
from test_tool_calls import MESSAGES, TOOL_TEMPLATE, TOOLS

pytestmark = pytest.mark.timeout(120)
CALL_BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ASK = MESSAGES[:2]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = load_served(save_tiny("qwen2", tmp_path_factory.mktemp("tools") / "tiny"))
    served.tokenizer.chat_template = TOOL_TEMPLATE
    return served


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    thread = start_logged_server(served, tmp_path_factory)
    yield thread
    thread.stop()


@pytest.fixture()
def answer(server, monkeypatch):
    """Stub generation: every request is answered with `answer["text"]`; `answer["prompt"]` is the ids it got."""
    seen = {"text": CALL_BLOCK, "finish": "stop"}

    def submit(job):
        seen["prompt"] = list(job.prompt_ids)
        text = seen["text"]
        if job.stream:
            for piece in (text[:7], text[7:]):
                job.emit({"type": "delta", "text": piece})
        job.finished = True
        job.emit({"type": "done", "finish_reason": seen["finish"], "text": text, "prompt_tokens": len(job.prompt_ids),
                  "completion_tokens": 9})
        return job

    monkeypatch.setattr(server.engine, "submit", submit)
    return seen


def _post(server, body):
    return httpx.post(f"{server.url}/v1/chat/completions", json={"model": "tiny", **body}, timeout=60)


def _choice(server, body) -> dict:
    response = _post(server, body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def test_tools_reach_the_prompt_and_a_tool_call_comes_back(served, server, answer):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS)
    assert answer["prompt"] == render_prompt(served.tokenizer, ASK, tools=TOOLS)
    assert '"get_weather"' in served.tokenizer.decode(answer["prompt"])  # the tools block was rendered
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and len(call.id) > 10 and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ROME = '{"name": "get_weather", "arguments": {"city": "Rome"}}'


@pytest.mark.parametrize("text, content, cities", [
    (f"Let me check.\n<tool_call>{PARIS}</tool_call>\n<tool_call>{ROME}</tool_call>", "Let me check.",
     ["Paris", "Rome"]),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>', None, []),  # not JSON
    ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', None, []),  # not one of the tools
    ('<tool_call>{"name": "get_weather", "arguments": "Paris"}</tool_call>', None, []),  # arguments not an object
    (f"A <tool_call>{PARIS}</tool_call> B <tool_call>{{oops</tool_call>", "A  B <tool_call>{oops</tool_call>",
     ["Paris"]),
])
def test_only_valid_blocks_become_tool_calls(server, answer, text, content, cities):
    answer["text"] = text
    choice = _choice(server, {"messages": ASK, "tools": TOOLS})
    message = choice["message"]
    if not cities:  # left as plain content
        assert message == {"role": "assistant", "content": text} and choice["finish_reason"] == "stop"
        return
    assert message["content"] == content and choice["finish_reason"] == "tool_calls"
    assert [json.loads(c["function"]["arguments"])["city"] for c in message["tool_calls"]] == cities
    assert len({c["id"] for c in message["tool_calls"]}) == len(cities)


def test_an_answer_cut_by_max_tokens_keeps_length(server, answer):
    answer["text"], answer["finish"] = CALL_BLOCK + "\nand then", "length"
    choice = _choice(server, {"messages": ASK, "tools": TOOLS})
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == "and then"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_tool_choice_none_and_no_tools_leave_the_text_alone(served, server, answer):
    for body in ({"tools": TOOLS, "tool_choice": "none"}, {}, {"tools": [], "tool_choice": "auto"}):
        choice = _choice(server, {"messages": ASK, **body})
        assert choice["message"] == {"role": "assistant", "content": CALL_BLOCK} and choice["finish_reason"] == "stop"
        assert answer["prompt"] == render_prompt(served.tokenizer, ASK, tools=body.get("tools") or None)


def test_history_with_tool_calls_and_tool_results_is_rendered(served, server, answer):
    openai_call = {"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [openai_call]},
               {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"}]
    answer["text"] = "It is 21 degrees in Paris."
    choice = _choice(server, {"messages": history, "tools": TOOLS})
    assert choice["message"]["content"] == "It is 21 degrees in Paris." and choice["finish_reason"] == "stop"
    canonical = [*MESSAGES[:2], {**MESSAGES[2], "tool_calls": [{**MESSAGES[2]["tool_calls"][0], "id": "call_1"}]},
                 {**MESSAGES[3], "tool_call_id": "call_1", "name": "get_weather"}]
    assert answer["prompt"] == render_prompt(served.tokenizer, canonical, tools=TOOLS)
    assert "<tool_response>" in served.tokenizer.decode(answer["prompt"])


def test_streaming_with_tools_sends_the_calls_in_one_delta(server, answer):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
    answer["text"] = f"Checking.<tool_call>{PARIS}</tool_call>"
    chunks = list(client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(d.content or "" for d in deltas) == "Checking."
    (with_calls,) = [d for d in deltas if d.tool_calls]
    (call,) = with_calls.tool_calls
    assert call.index == 0 and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    answer["text"] = "no call here"
    plain = list(client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in plain) == "no call here"
    assert plain[-1].choices[0].finish_reason == "stop"


def test_real_generation_with_tools(served, server):
    for stream in (False, True):
        response = _post(server, {"messages": ASK, "tools": TOOLS, "max_tokens": 4, "temperature": 0, "stream": stream})
        assert response.status_code == 200 and ("data: [DONE]" in response.text if stream else response.json()["usage"])


CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("body, param, words", [
    ({"messages": [{**USER, "tool_calls": [CALL]}]}, "messages.0.tool_calls", "only assistant"),
    ({"messages": [{**USER, "tool_call_id": "c1"}]}, "messages.0.tool_call_id", "only tool"),
    ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages.1.content", "null only"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [{"function": {"name": "", "arguments": {}}}]}]},
     "messages.1.tool_calls", "tool_calls[0].function.name"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}]},
     "messages.1.tool_calls", "function.arguments is not valid JSON"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": {"name": "f"}}]}, "messages.1.tool_calls",
     "non-empty list"),
    ({"messages": [USER, {"role": "tool", "content": "21"}]}, "messages", "no assistant turn with tool_calls"),
    ({"messages": [USER, {"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "content": None}]},
     "messages.2.content", "null only"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools", "name"),
    ({"messages": [USER], "tools": "get_weather"}, "tools", "list of function definitions"),
    ({"messages": [USER], "tools": TOOLS, "tool_choice": "required"}, "tool_choice", "not supported"),
    ({"messages": [USER], "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     "tool_choice", "not supported"),
])
def test_bad_tool_shapes_are_400_naming_the_field(server, body, param, words):
    response = _post(server, body)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param and words in error["message"], error


def test_templates_without_a_tool_format_refuse_tools(served, monkeypatch):
    history = [USER, {"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "content": "21"}]
    with ServerThread(served, ServeSettings(port=0, template="chatml")) as url:
        for body, param in (({"messages": [USER], "tools": TOOLS}, "tools"), ({"messages": history}, "messages")):
            response = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", **body}, timeout=60)
            error = response.json()["error"]
            assert response.status_code == 400 and error["param"] == param
            assert "built-in chatml, which has no tool format" in error["message"]
        monkeypatch.setattr(served.tokenizer, "chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
        with ServerThread(served, ServeSettings(port=0)) as own:
            response = httpx.post(f"{own}/v1/chat/completions", json={"model": "tiny", "messages": [USER],
                                                                        "tools": TOOLS}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
    assert "did not render tool 'get_weather'" in response.json()["error"]["message"]


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
WITH_IMAGE = {"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]}
HISTORY = [USER, {"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "content": "21"}]


@pytest.mark.parametrize("body, param", [
    ({"messages": [WITH_IMAGE], "tools": TOOLS}, "tools"),
    ({"messages": [WITH_IMAGE], "tools": TOOLS, "tool_choice": "none"}, "tools"),
    ({"messages": [*HISTORY[:2], WITH_IMAGE]}, "messages.1.tool_calls"),
    ({"messages": [*HISTORY, WITH_IMAGE], "tools": TOOLS}, "tools"),
])
def test_images_with_tools_are_400_naming_the_fields(server, answer, body, param):
    before = _logged_lines(server)
    response = _post(server, body)
    error = response.json()["error"]
    image = f"messages.{len(body['messages']) - 1}.content.1"
    assert response.status_code == 400 and error["param"] == param and error["code"] == "invalid_value"
    assert error["message"] == (f"{param}: tools, tool_calls and tool messages are not supported in a request with "
                                f"images ({image} is an image_url part); send images and tools in separate requests")
    assert "prompt" not in answer  # refused before generation
    (record,) = _log_records(server, 1, before)
    assert record["status"] == 400 and "finish_reason" not in record


def test_images_with_an_empty_tools_list_go_on_to_the_image_path(server):
    response = _post(server, {"messages": [WITH_IMAGE], "tools": [], "tool_choice": "auto"})
    assert response.status_code == 400 and "does not take images" in response.json()["error"]["message"]  # text model


def _log_records(server, count: int, before: int) -> list[dict]:
    """The access log's records after the first `before`, waiting until `count` of them have been written."""
    return access_log_records(server, lambda records: len(records) >= before + count)[before:]


def _logged_lines(server) -> int:
    """How many lines the access log has once earlier requests' lines are in (written just after their response)."""
    def count() -> int:
        return len(server.log.read_text(encoding="utf-8").splitlines()) if server.log.exists() else 0

    seen, now = -1, count()
    while now != seen:
        time.sleep(0.2)
        seen, now = now, count()
    return now


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("text, finish, sent", [
    (CALL_BLOCK, "stop", "tool_calls"),
    ("no call here", "stop", "stop"),
    (CALL_BLOCK + " and then", "length", "length"),
])
def test_access_log_records_the_finish_reason_the_client_got(server, answer, stream, text, finish, sent):
    answer["text"], answer["finish"] = text, finish
    before = _logged_lines(server)
    response = _post(server, {"messages": ASK, "tools": TOOLS, "stream": stream})
    assert response.status_code == 200
    if stream:
        chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        received = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    else:
        received = [response.json()["choices"][0]["finish_reason"]]
    assert received == [sent]
    (record,) = _log_records(server, 1, before)
    assert record["finish_reason"] == sent and record["stream"] is stream and record["status"] == 200


def test_access_log_records_timeouts_plain_and_streamed(server, answer):
    answer["finish"] = "timeout"
    before = _logged_lines(server)
    plain = _post(server, {"messages": ASK, "tools": TOOLS})
    streamed = _post(server, {"messages": ASK, "tools": TOOLS, "stream": True})
    assert plain.status_code == 504 and plain.json()["error"]["code"] == "timeout"
    assert streamed.status_code == 200 and "request ended: timeout" in streamed.text
    records = _log_records(server, 2, before)
    assert [(r["status"], r["stream"], r["finish_reason"]) for r in records] == [(504, False, "timeout"),
                                                                                 (200, True, "timeout")]
