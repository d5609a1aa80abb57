"""Conversation checks: roles, text contents, tool calls, tool results and an example's tools list.

    clean = check_messages(messages, src="train.jsonl:3")   # plain dicts, ready for a chat template
    tools = check_tools(example.get("tools"), "train.jsonl:3")   # OpenAI/transformers form, or None
    has_tool_data(clean, tools)                              # True when the template must render tools

Tool-calling shapes (the OpenAI / transformers chat-template convention):
- an assistant turn may carry `"tool_calls": [{"type": "function", "function": {"name": str, "arguments": ...}}]`
  (an optional "id" str is kept); its content may then be "" or null. `arguments` is an object, or JSON text
  of one, which is parsed to a dict (chat templates write it with `tojson`).
- `{"role": "tool", "content": str, "name"?: str, "tool_call_id"?: str}` is a tool result; it must follow an
  assistant turn with tool_calls (directly or after other tool results).
- `tools` is a list of `{"type": "function", "function": {"name": str, "description"?: str, "parameters"?: {...}}}`;
  a bare function object `{"name", ...}` is wrapped in that form. An empty list means no tools.
Every problem raises a one-line SftlabError that starts with the source (file:line) and names the field.
"""

from __future__ import annotations

import json

from sftlab.errors import SftlabError

ROLES = ("system", "user", "assistant", "tool")


def where_of(src: str | None) -> str:
    return src or "conversation"


def check_messages(messages, src: str | None = None, need_assistant: bool = True) -> list[dict]:
    """Validate roles, contents and tool fields; returns plain dicts (role, content, tool fields). Raises SftlabError."""
    where = where_of(src)
    if not isinstance(messages, (list, tuple)) or not messages:
        raise SftlabError(f"{where}: expected a non-empty list of messages")
    clean: list[dict] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES:
            raise SftlabError(f"{where}: message {i} {role_problem(role)}; expected one of {', '.join(ROLES)}")
        calls = has_tool_calls(message, role)
        if calls and content is None:
            content = ""
        if not isinstance(content, str):
            raise SftlabError(f"{where}: message {i} ({role}) has no text content")
        if not calls and role == "assistant" and not content.strip():
            raise SftlabError(f"{where}: message {i} is an assistant turn with empty content")
        clean.append({"role": role, "content": content, **tool_fields(message, role, f"{where}: message {i}")})
    check_tool_order(clean, where, "message ")
    if need_assistant and not any(m["role"] == "assistant" for m in clean):
        raise SftlabError(f"{where}: conversation has no assistant turn, so nothing would be learned from it")
    return clean


def mask_samples(messages: list[dict], mask: str) -> list[tuple[list[dict], str]]:
    """The (messages, mask) samples a conversation trains as: itself under `mask`, or with mask each_assistant
    one sample per assistant turn, the conversation up to it with that turn supervised (last_assistant)."""
    if mask != "each_assistant":
        return [(messages, mask)]
    ends = [i + 1 for i, message in enumerate(messages) if message.get("role") == "assistant"] or [len(messages)]
    return [(messages[:end], "last_assistant") for end in ends]


def has_tool_calls(message: dict, role: str) -> bool:
    """Whether `message` is an assistant turn carrying tool calls (its content may then be null or "")."""
    return role == "assistant" and message.get("tool_calls") not in (None, [])


def tool_fields(message: dict, role: str, at: str) -> dict:
    """The checked tool fields of one message: an assistant's `tool_calls`, a tool result's `name` and
    `tool_call_id`; {} for anything else. `at` names the message ("x.jsonl:3: message 2")."""
    if has_tool_calls(message, role):
        return {"tool_calls": check_tool_calls(message["tool_calls"], at)}
    return tool_result_fields(message, at) if role == "tool" else {}


def check_tool_calls(calls, at: str) -> list[dict]:
    """A non-empty list of function calls in canonical form; `at` names the message ("x.jsonl:3: message 2")."""
    if not isinstance(calls, list) or not calls:
        raise SftlabError(f"{at}.tool_calls must be a non-empty list of calls, got {_kind(calls)}")
    clean = []
    for k, call in enumerate(calls):
        field = f"{at}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise SftlabError(f"{field} must be an object with 'function', got {_kind(call)}")
        if call.get("type", "function") != "function":
            raise SftlabError(f"{field}.type must be 'function', got {call.get('type')!r}")
        function = call.get("function")
        if not isinstance(function, dict):
            raise SftlabError(f"{field}.function must be an object with 'name' and 'arguments', got {_kind(function)}")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SftlabError(f"{field}.function.name must be a non-empty string, got {name!r}")
        out = {"type": "function", "function": {"name": name, "arguments": arguments(function.get("arguments"),
                                                                                       f"{field}.function.arguments")}}
        if call.get("id") is not None:
            if not isinstance(call["id"], str):
                raise SftlabError(f"{field}.id must be a string, got {_kind(call['id'])}")
            out = {"id": call["id"], **out}
        clean.append(out)
    return clean


def parse_json_field(text: str, field: str):
    """`text` parsed as JSON; a one-line SftlabError naming `field` ("x.jsonl:3: ...arguments") when it is not."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SftlabError(f"{field} is not valid JSON ({exc.msg} at character {exc.pos})") from None


def arguments(value, field: str) -> dict:
    """Call arguments as a dict: an object, or JSON text of one."""
    if isinstance(value, str):
        value = parse_json_field(value, field)
    if not isinstance(value, dict):
        raise SftlabError(f"{field} must be a JSON object of arguments, got {_kind(value)}")
    return value


def tool_result_fields(message: dict, at: str) -> dict:
    """The optional `name` and `tool_call_id` of a tool result, checked."""
    out = {}
    for key in ("name", "tool_call_id"):
        value = message.get(key)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise SftlabError(f"{at}.{key} must be a non-empty string, got {value!r}")
            out[key] = value
    return out


def check_tool_order(messages: list[dict], where: str, label: str) -> None:
    """Every tool result follows an assistant turn with tool_calls (directly or after other tool results)."""
    for i, message in enumerate(messages):
        if message["role"] != "tool":
            continue
        j = i - 1
        while j >= 0 and messages[j]["role"] == "tool":
            j -= 1
        if j < 0 or not messages[j].get("tool_calls"):
            raise SftlabError(f"{where}: {label}{i} is a tool result, but no assistant turn with tool_calls comes "
                              "before it")


def check_tools(tools, src: str | None) -> list[dict] | None:
    """The example's tools list in `{"type": "function", "function": {...}}` form; None when absent or empty."""
    where = where_of(src)
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise SftlabError(f"{where}: tools must be a list of function definitions, got {_kind(tools)}")
    clean = []
    for k, tool in enumerate(tools):
        field = f"{where}: tools[{k}]"
        if not isinstance(tool, dict):
            raise SftlabError(f"{field} must be a function definition object, got {_kind(tool)}")
        if "function" in tool and tool.get("type", "function") != "function":
            raise SftlabError(f"{field}.type must be 'function', got {tool.get('type')!r}")
        function = tool["function"] if "function" in tool else tool
        field += ".function" if "function" in tool else ""
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
            raise SftlabError(f"{field}.name must be a non-empty string")
        if not isinstance(function.get("parameters", {}), dict):
            raise SftlabError(f"{field}.parameters must be a JSON schema object, got {_kind(function['parameters'])}")
        clean.append({"type": "function", "function": dict(function)})
    return clean or None


def has_tool_data(messages: list[dict], tools: list | None) -> bool:
    """Whether a conversation needs a template that renders tools: a tools list, tool calls or tool results."""
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def check_tools_rendered(text: str, messages: list[dict], tools: list | None, where: str) -> None:
    """Refuse a chat template that silently dropped the tools list or a tool result (it does not handle tools)."""
    missing = [f"tool {t['function']['name']!r}" for t in tools or [] if t["function"]["name"] not in text]
    missing += [f"the tool result in message {i}" for i, m in enumerate(messages)
                if m["role"] == "tool" and m["content"].strip() and not _result_rendered(m["content"], text)]
    if missing:
        raise SftlabError(f"{where}: the tokenizer's chat template did not render {missing[0]}, so it does not "
                          "handle tools; use a model whose own chat template renders tools and tool calls")


def _result_rendered(content: str, text: str) -> bool:
    """Whether a tool result's text is in the rendering: as it is, trimmed, or as a JSON string (Llama 3.1-3.3
    and Llama 4 write a result with `tojson`, so `{"temp": 21}` appears as `"{\\"temp\\": 21}"`)."""
    forms = {content, content.strip()}
    forms |= {json.dumps(form, ensure_ascii=ascii)[1:-1] for form in set(forms) for ascii in (False, True)}
    return any(form and form in text for form in forms)


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def role_problem(role, field: str = "role") -> str:
    """What is wrong with a message's role: "has no 'role'" when it is missing, else "has unknown role 'x'"."""
    return f"has no {field!r}" if role is None else f"has unknown role {role!r}"
