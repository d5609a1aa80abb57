"""Data files -> rows -> canonical examples (`sftlab.data.writers.write_rows` writes them back to files).

    rows = read_rows("train.jsonl")                       # list of dicts, each with "_src": "train.jsonl:3"
    examples = to_canonical(rows, "auto", stage="sft")    # [{"messages": [...], "_src": ...}, ...]

Reading and `data.columns` mapping live in `sftlab.data.readers` (re-exported here): every row carries
`"_src": "file:line"`.

Canonical shapes (see DEVELOPERS.md): sft `{"messages": [{"role", "content"}]}`, pt `{"text"}`,
cls `{"text", "label"}` (label as str without surrounding spaces, so `a` and ` a` of `text, a` in a CSV are one
class; an integer, or a float with an integer value as a numeric column with gaps holds it, as its digits). Tool-calling sft examples add assistant `tool_calls`, `tool` messages
and an example-level `tools` list (shapes in `sftlab.data.messages`); the messages format reads them as
OpenAI writes them, sharegpt as LLaMA-Factory does (`function_call` / `observation` turns, a `tools` column
holding JSON text). Every problem with a record raises a one-line `SftlabError`
that starts with the record's `_src` (file:line).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sftlab.data import messages as tool_shapes
from sftlab.data.readers import OPTIONAL_FIELDS, READ_EXTENSIONS, apply_columns, read_rows  # noqa: F401  (re-exported)
from sftlab.data.readers import column_key as _key, column_name as _name
from sftlab.errors import SftlabError

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text", "label")
WRITE_FORMATS = ("alpaca", "sharegpt", "messages", "jsonl", "csv")
STAGE_OF_FORMAT = {"alpaca": "sft", "sharegpt": "sft", "messages": "sft", "prompt_completion": "sft", "text": "pt", "label": "cls"}
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT / LLaMA-Factory role tags accepted when no registry says otherwise ("function_call" turns become
# assistant tool calls).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "observation": "tool", "function_call": "function_call"}
DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value"}


# ----------------------------------------------------------------------------------------------- detection


def detect_format(row: dict) -> str:
    """Name the format of one row from its keys (after column mapping)."""
    messages = row.get("messages")
    if isinstance(messages, list):
        first = next((m for m in messages if isinstance(m, dict)), {})
        return "sharegpt" if "from" in first or "value" in first else "messages"
    if messages is not None:  # a conversation read as text (a CSV cell), or another value
        raise SftlabError(f"{row.get('_src', 'row')}: {_name(row, 'messages')} must be a list of turns, got "
                          f"{type(messages).__name__}" + (_TEXT_LIST if isinstance(messages, str) else ""))
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row and "label" in row:
        return "label"
    if "text" in row:
        return "text"
    keys = [key for key in row if not key.startswith("_")]
    raise SftlabError(
        f"{row.get('_src', 'row')}: cannot tell the data format from the keys {keys}; set data.format "
        f"({', '.join(FORMATS)}) and data.columns"
    )


# The fields each format reads; the others (ids, metadata) are extra to it (`extra_fields`).
READ_FIELDS = {"alpaca": ("instruction", "input", "output", "system", "history"),
               "sharegpt": ("conversations", "messages", "system", "tools"), "messages": ("messages", "tools"),
               "prompt_completion": ("prompt", "completion", "system"), "text": ("text",), "label": ("text", "label")}
FORMAT_FIELDS = frozenset(name for names in READ_FIELDS.values() for name in names) | {"images"}


def extra_fields(row: dict, fmt: str) -> dict:
    """The fields of `row` (after `apply_columns`) that format `fmt` does not read, `_src` and other `_` keys
    left out (ids, metadata); `write_rows` writes them back beside an example that holds them under `_extra`."""
    return {key: value for key, value in row.items() if not key.startswith("_") and key not in READ_FIELDS[fmt]}


def written_extra(example: dict, fmt: str) -> dict:
    """The `_extra` fields of `example` that `write_rows` writes in `fmt`: none for csv, else every one that no
    format reads (a `system`, `tools` or `text` column extra to the input's format would become part of the
    example when read back in another format, so it is left out)."""
    if fmt == "csv":
        return {}
    return {key: value for key, value in example.get("_extra", {}).items() if key not in FORMAT_FIELDS}


def unwritten_fields(examples: list[dict], fmt: str) -> list[str]:
    """Names of the `_extra` fields of `examples` that `write_rows` leaves out in `fmt` (see `written_extra`)."""
    return sorted({key for ex in examples for key in ex.get("_extra", {}) if key not in written_extra(ex, fmt)})


# ----------------------------------------------------------------------------------------------- conversion


def to_canonical(
    rows: list[dict], fmt: str = "auto", stage: str | None = None, columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None, skipped: list[tuple[str, str]] | None = None,
) -> list[dict]:
    """Convert raw rows to canonical examples for `stage` (default: the stage the format implies).

    `fmt="auto"` detects the format from the first row and rejects rows of another format.
    `tags` are LLaMA-Factory sharegpt tags (role_tag, content_tag, user_tag, assistant_tag, system_tag).
    With `skipped` (a list), a row that does not convert (a column of `columns` missing, another format) is left
    out and appended to it as (its `_src`, the error) instead of failing (`sftlab data clean --drop-invalid`), and
    `fmt="auto"` takes the format most rows have (`data build validate`'s majority), not the first row's; a format
    that does not give `stage` still fails, since that is the file's problem, not a row's.
    """
    if not rows:
        raise SftlabError("empty dataset (no rows)")
    if fmt != "auto" and fmt not in FORMATS:
        raise SftlabError(f"data.format: unknown data format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    rows = [apply_columns(row, columns) for row in rows] if skipped is None else _mapped(rows, columns, skipped)
    if not rows:
        return []
    chosen = fmt if fmt != "auto" else detect_format(rows[0]) if skipped is None else _majority_format(rows)
    first = rows[0] if skipped is None else next((row for row in rows if _detected(row) == chosen), rows[0])
    stage = stage or STAGE_OF_FORMAT[chosen]
    if STAGE_OF_FORMAT[chosen] != stage:
        raise SftlabError(
            f"{first.get('_src', 'row')}: format {chosen!r} gives {STAGE_OF_FORMAT[chosen]} examples, but train.stage is "
            f"{stage!r} (sft needs conversations, pt needs text, cls needs text+label); set train.stage "
            f"{STAGE_OF_FORMAT[chosen]} for this data, or check data.format / data.columns"
        )
    basis = f"the file started as {chosen!r} ({first.get('_src', 'row')})" if skipped is None else \
        f"most rows of the file are {chosen!r}"
    examples = []
    for row in rows:
        try:
            if fmt == "auto" and row is not first and (found := _detected(row)) not in (None, chosen):
                raise SftlabError(f"{row['_src']}: row looks like {found!r} but {basis}; mixed formats")
            try:  # a row whose format cannot be told gets the chosen format's own error (a missing field)
                examples.append({**_CONVERTERS[chosen](row, tags or {}), "_src": row.get("_src", "row")})
            except SftlabError as exc:
                raise SftlabError(f"{exc}{_format_hint(row, fmt)}") from None
        except SftlabError as exc:
            if skipped is None:
                raise
            skipped.append((str(row.get("_src", "row")), str(exc)))
    return examples


def _detected(row: dict) -> str | None:
    """`detect_format(row)`, None where the keys do not tell."""
    try:
        return detect_format(row)
    except SftlabError:
        return None


def _majority_format(rows: list[dict]) -> str:
    """The format most rows are detected as (a tie: the one of the earliest such row); where no row's keys tell,
    the first row's error."""
    found = [name for row in rows if (name := _detected(row))]
    if not found:
        detect_format(rows[0])  # raises: the keys of no row tell the format
    counts = Counter(found)
    return next(name for name in found if counts[name] == max(counts.values()))


def _mapped(rows: list[dict], columns: dict[str, str] | None, skipped: list[tuple[str, str]]) -> list[dict]:
    """`apply_columns` on each row; a row that lacks a mapped column is appended to `skipped` instead."""
    mapped = []
    for row in rows:
        try:
            mapped.append(apply_columns(row, columns))
        except SftlabError as exc:
            skipped.append((str(row.get("_src", "row")), str(exc)))
    return mapped


def _format_hint(row: dict, fmt: str) -> str:
    """When an explicit data.format fails on a row whose keys say it is another format: a hint naming both."""
    if fmt == "auto":
        return ""
    try:
        found = detect_format(row)
    except SftlabError:
        return ""
    if found == fmt:
        return ""
    return f" (data.format is {fmt!r}, but the row looks like {found!r}: set data.format to {found} or auto)"


def _field(row: dict, key: str, required: bool = True, kind: type = str) -> Any:
    value = row.get(key)
    if value is None:
        if required:
            raise SftlabError(f"{row.get('_src', 'row')}: " + (f"{_name(row, key)} has no value" if key in row.get(
                "_columns", {}) else f"missing required field {key!r}"))
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SftlabError(f"{row.get('_src', 'row')}: {_name(row, key)} must be {kind.__name__}, got {type(value).__name__}"
                          + (_TEXT_LIST if kind is list and isinstance(value, str) else ""))
    return value


# A list field read as text: what CSV, TSV and .txt cells hold.
_TEXT_LIST = " (a CSV/TSV cell holds text, not a list: write list fields in a .jsonl, .json or .parquet file)"


def _from_alpaca(row: dict, tags: dict) -> dict:
    instruction = _field(row, "instruction")
    query = _field(row, "input", required=False) or ""
    prompt = f"{instruction}\n{query}" if query else instruction
    messages = []
    if system := _field(row, "system", required=False):
        messages.append({"role": "system", "content": system})
    for turn, pair in enumerate(_field(row, "history", required=False, kind=list) or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise SftlabError(f"{row['_src']}: {_key(row, 'history')}[{turn}] must be a [user, assistant] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _field(row, "output")}]
    return {"messages": _check_conversation(row, messages)}


def _from_sharegpt(row: dict, tags: dict) -> dict:
    field = "conversations" if "conversations" in row else "messages"
    turns, key = _field(row, field, kind=list), _key(row, field)
    role_tag = tags.get("role_tag") or DEFAULT_TAGS["role_tag"]
    content_tag = tags.get("content_tag") or DEFAULT_TAGS["content_tag"]
    if turns and isinstance(turns[0], dict) and role_tag not in turns[0] and "role" in turns[0] and not tags:
        role_tag, content_tag = "role", "content"  # OpenAI-style tags inside a sharegpt file
    roles = dict(SHAREGPT_ROLES)
    for name, role in (("user_tag", "user"), ("assistant_tag", "assistant"), ("system_tag", "system"),
                       ("observation_tag", "tool"), ("function_tag", "function_call")):
        if tags.get(name):
            roles[tags[name]] = role
    messages = []
    if system := _field(row, "system", required=False):
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise SftlabError(f"{row['_src']}: {key}[{i}] must be an object with {role_tag!r} and {content_tag!r}")
        tag, content = turn.get(role_tag), turn.get(content_tag)
        if tag not in roles:
            raise SftlabError(f"{row['_src']}: {key}[{i}] {tool_shapes.role_problem(tag, role_tag)}; expected one of {sorted(roles)}")
        if not isinstance(content, str):
            raise SftlabError(f"{row['_src']}: {key}[{i}].{content_tag} must be a string, got {type(content).__name__}")
        if roles[tag] == "function_call":
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": _function_call(content, f"{row['_src']}: {key}[{i}].{content_tag}")})
        else:
            messages.append({"role": roles[tag], "content": content})
    return _with_tools(row, {"messages": _check_conversation(row, messages)})


def _function_call(text: str, field: str) -> list[dict]:
    """A LLaMA-Factory function_call value (JSON {"name", "arguments"}, or a list of them) as canonical tool_calls."""
    calls = tool_shapes.parse_json_field(text, field)
    calls = calls if isinstance(calls, list) else [calls]
    clean = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
            raise SftlabError(f"{field} must be a JSON object with a non-empty \"name\" (and \"arguments\"), or a list of them")
        arguments = tool_shapes.arguments(call.get("arguments"), f"{field} \"arguments\"")
        clean.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return clean


def _with_tools(row: dict, example: dict) -> dict:
    """Add the row's `tools` list (or JSON text of one, as LLaMA-Factory stores it) to the example when it has one."""
    tools = row.get("tools")
    if isinstance(tools, str):
        tools = tool_shapes.parse_json_field(tools, f"{row['_src']}: {_name(row, 'tools')}") if tools.strip() else None
    tools = tool_shapes.check_tools(tools, row.get("_src", "row"))
    return {**example, "tools": tools} if tools else example


def _from_messages(row: dict, tags: dict) -> dict:
    messages = _openai_messages(row, "messages", _field(row, "messages", kind=list))
    return _with_tools(row, {"messages": _check_conversation(row, messages)})


def _openai_messages(row: dict, field: str, items: list) -> list[dict]:
    messages, key = [], _key(row, field)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SftlabError(f"{row['_src']}: {key}[{i}] must be an object with 'role' and 'content'")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise SftlabError(f"{row['_src']}: {key}[{i}] {tool_shapes.role_problem(role)}; expected one of {list(ROLES)}")
        if tool_shapes.has_tool_calls(item, role) and content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep text parts only when all are text
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise SftlabError(f"{row['_src']}: {key}[{i}].content has non-text parts; only text is supported")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise SftlabError(f"{row['_src']}: {key}[{i}].content must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content, **tool_shapes.tool_fields(item, role, f"{row['_src']}: {key}[{i}]")})
    return messages


def _from_prompt_completion(row: dict, tags: dict) -> dict:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion (TRL style)
        messages = _openai_messages(row, "prompt", prompt) + _openai_messages(row, "completion", completion)
    else:
        messages = []
        if system := _field(row, "system", required=False):
            messages.append({"role": "system", "content": system})
        messages += [{"role": "user", "content": _field(row, "prompt")}, {"role": "assistant", "content": _field(row, "completion")}]
    return {"messages": _check_conversation(row, messages)}


def _check_conversation(row: dict, messages: list[dict]) -> list[dict]:
    src = row.get("_src", "row")
    for i, message in enumerate(messages):
        if message["role"] == "system" and i != 0:
            raise SftlabError(f"{src}: a system message may only come first (found at turn {i})")
    tool_shapes.check_tool_order(messages, src, "turn ")
    if not any(m["role"] == "user" for m in messages) or not any(m["role"] == "assistant" for m in messages):
        raise SftlabError(f"{src}: a conversation needs at least one user and one assistant message")
    return messages


def _from_text(row: dict, tags: dict) -> dict:
    text = _field(row, "text")
    if not text.strip():
        raise SftlabError(f"{row['_src']}: {_name(row, 'text')} is empty")
    return {"text": text}


def _from_label(row: dict, tags: dict) -> dict:
    label = row.get("label")
    if label is None:
        _field(row, "label")  # the missing-value error
    if isinstance(label, str) and not label.strip():  # a blank label would become a class
        raise SftlabError(f"{row.get('_src', 'row')}: {_name(row, 'label')} is empty")
    if isinstance(label, float) and label.is_integer():  # 3.0: an integer column with gaps, as pandas writes it
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise SftlabError(f"{row['_src']}: {_name(row, 'label')} must be a string or integer, got {type(label).__name__}")
    return {"text": _from_text(row, tags)["text"], "label": str(label).strip()}


_CONVERTERS = {
    "alpaca": _from_alpaca, "sharegpt": _from_sharegpt, "messages": _from_messages,
    "prompt_completion": _from_prompt_completion, "text": _from_text, "label": _from_label,
}
