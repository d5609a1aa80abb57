"""Tool calling on /v1/chat/completions: request checks, prompts with tools, `<tool_call>` blocks in answers.

    messages = request_messages(body.messages)          # canonical dicts (sftlab.data.messages); 400 naming the field
    tools, parse = request_tools(body)                  # checked tools list, and whether to parse tool calls
    refuse_tools_with_images(body.messages, messages, tools)      # 400 when image parts come with tool data
    prompt = render_tool_prompt(tok, messages, tools, template)   # only the tokenizer's own chat template
    message, finish = answer_message(text, finish, tools)         # OpenAI message with tool_calls when parsed

Answers are parsed in the Hermes / Qwen2.5 convention: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
one or more blocks. A block whose text is not a JSON object with a `name` of one of the request's tools and an
`arguments` object stays in the content as plain text. Other conventions (Llama 3, Mistral) are not parsed.
"""

from __future__ import annotations

import json
import re
import uuid

from sftlab.data.messages import check_tool_order, check_tools, has_tool_calls, has_tool_data
from sftlab.data.messages import tool_fields
from sftlab.data.templates import BuiltinFormat, chat_format, render_prompt
from sftlab.errors import SftlabError
from sftlab.serve.errors import APIError

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def request_messages(messages) -> list[dict]:
    """The request's messages as canonical dicts; tool fields checked as training checks them, never dropped."""
    clean = []
    for i, message in enumerate(messages):
        at = f"messages.{i}"
        calls = message.tool_calls
        if calls is not None and message.role != "assistant":
            raise _bad(f"{at}.tool_calls", f"{at}.tool_calls: only assistant messages may carry tool_calls")
        if message.tool_call_id is not None and message.role != "tool":
            raise _bad(f"{at}.tool_call_id", f"{at}.tool_call_id: only tool messages may carry a tool_call_id")
        if message.content is None and calls in (None, []):
            raise _bad(f"{at}.content", f"{at}.content: must be text (null only on an assistant message with "
                                        "tool_calls)")
        fields = {"tool_calls": calls, "name": message.name, "tool_call_id": message.tool_call_id}
        try:
            clean.append({"role": message.role, "content": message.text(), **tool_fields(fields, message.role, at)})
        except SftlabError as exc:
            raise _bad(f"{at}.tool_calls" if has_tool_calls(fields, message.role) else at, str(exc)) from None
    try:
        check_tool_order(clean, "messages", "message ")
    except SftlabError as exc:
        raise _bad("messages", str(exc)) from None
    return clean


def request_tools(body) -> tuple[list[dict] | None, bool]:
    """(the checked tools list or None, whether answers are parsed for tool calls) from `tools` and `tool_choice`."""
    try:
        tools = check_tools(body.tools, "request")
    except SftlabError as exc:
        raise _bad("tools", str(exc)) from None
    choice = body.tool_choice
    if choice is not None and choice not in ("auto", "none"):
        shown = "a named function" if isinstance(choice, dict) else repr(choice)
        raise _bad("tool_choice", f"tool_choice: {shown} is not supported; use 'auto' or 'none'")
    return tools, bool(tools) and choice != "none"


def refuse_tools_with_images(raw_messages, messages: list[dict], tools: list | None) -> None:
    """400 naming the field when a request with image_url parts also has tools, tool_calls or a tool message
    (the vision path renders no tools); an empty tools list counts as none."""
    parts = [(i, message.content) for i, message in enumerate(raw_messages) if isinstance(message.content, list)]
    image = next((f"messages.{i}.content.{j}" for i, content in parts for j, part in enumerate(content)
                  if part.type != "text"), None)
    if image is None or not has_tool_data(messages, tools):
        return
    # without tools, an assistant turn has tool_calls: a tool message must follow one (request_messages checks)
    field = "tools" if tools else next(f"messages.{i}.tool_calls" for i, message in enumerate(messages)
                                       if message.get("tool_calls"))
    raise _bad(field, f"{field}: tools, tool_calls and tool messages are not supported in a request with images "
                      f"({image} is an image_url part); send images and tools in separate requests")


def render_tool_prompt(tokenizer, messages: list[dict], tools: list | None, template: str) -> list[int]:
    """Prompt ids with tools, through the tokenizer's own chat template (a built-in template has no tool format)."""
    field = "tools" if tools else "messages"
    fmt = chat_format(tokenizer, template)
    if isinstance(fmt, BuiltinFormat):
        raise _bad(field, f"{field}: the served model's chat template is the built-in {fmt.spec.name}, which has no "
                          "tool format; serve a model whose tokenizer's own chat template renders tools (template auto)")
    try:
        return render_prompt(tokenizer, messages, template, src="messages", tools=tools)  # refuses dropped tool data
    except SftlabError as exc:
        raise _bad(field, str(exc)) from None


def parse_tool_calls(text: str, tools: list[dict]) -> tuple[str | None, list[dict]]:
    """(content outside the parsed blocks or None, OpenAI tool_calls); unparsed blocks stay in the content."""
    names = {tool["function"]["name"] for tool in tools}
    calls, kept, at = [], [], 0
    for match in TOOL_CALL.finditer(text):
        call = _call(match.group(1), names)
        if call is None:
            continue
        kept.append(text[at:match.start()])
        at = match.end()
        calls.append(call)
    if not calls:
        return text, []
    content = ("".join(kept) + text[at:]).strip()
    return content or None, calls


def _call(block: str, names: set[str]) -> dict | None:
    try:
        value = json.loads(block)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names or not isinstance(value.get("arguments"), dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(value["arguments"], ensure_ascii=False)}}


def answer_message(text: str, finish_reason: str, tools: list[dict] | None) -> tuple[dict, str]:
    """The assistant message of a response, and its finish_reason ("tool_calls" when calls ended the answer)."""
    content, calls = parse_tool_calls(text, tools) if tools else (text, [])
    if not calls:
        return {"role": "assistant", "content": text}, finish_reason
    message = {"role": "assistant", "content": content, "tool_calls": calls}
    return message, "tool_calls" if finish_reason == "stop" else finish_reason


def stream_deltas(text: str, finish_reason: str, tools: list[dict]) -> tuple[list[dict], str]:
    """The buffered answer as chunk deltas (content, then all tool calls in one delta) and the finish_reason."""
    message, finish_reason = answer_message(text, finish_reason, tools)
    deltas = [{"content": message["content"]}] if message["content"] else []
    if "tool_calls" in message:
        deltas.append({"tool_calls": [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]})
    return deltas, finish_reason
