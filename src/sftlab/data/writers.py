"""Writing canonical examples back as records: alpaca, sharegpt, messages, canonical jsonl or csv
(`sftlab data` commands' outputs; `sftlab.data.formats` reads them).

    write_rows("out.jsonl", examples, "messages")   # atomic; a .json path gets one JSON list
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from sftlab.data import messages as tool_shapes
from sftlab.data.formats import WRITE_FORMATS, written_extra
from sftlab.errors import SftlabError
from sftlab.io import atomic_write_json, atomic_write_jsonl, atomic_write_text


def write_rows(path: str | Path, examples: list[dict], fmt: str) -> Path:
    """Write canonical examples atomically as alpaca / sharegpt / messages records, canonical jsonl, or csv.

    alpaca/sharegpt/messages go to a JSON list when `path` ends in .json, else to JSON lines.
    `jsonl` writes the canonical dicts themselves; `csv` holds flat (pt/cls) examples only. The fields an example
    holds under `_extra` (`extra_fields` of its row) are written into its record before the format's own fields,
    as `written_extra` says (csv: text and label only).
    """
    if fmt not in WRITE_FORMATS:
        raise SftlabError(f"unknown output format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}")
    path = Path(path)
    if fmt == "csv":
        return atomic_write_text(path, _csv_text(examples))
    records = [{**written_extra(ex, fmt), **_RECORD_WRITERS[fmt](ex)} for ex in examples]
    if fmt != "jsonl" and path.suffix.lower() == ".json":
        return atomic_write_json(path, records)
    return atomic_write_jsonl(path, records)


def _public(example: dict) -> dict:
    return {key: value for key, value in example.items() if not key.startswith("_")}


def _conversation(example: dict, fmt: str) -> list[dict]:
    if "messages" not in example:
        raise SftlabError(f"{example.get('_src', 'example')}: {fmt} output needs a conversation; "
                          f"this example has {sorted(_public(example))}")
    return example["messages"]


def _to_alpaca(example: dict) -> dict:
    messages = list(_conversation(example, "alpaca"))
    if tool_shapes.has_tool_data(messages, example.get("tools")):
        raise SftlabError(f"{example.get('_src', 'example')}: alpaca has no place for tools or tool calls; "
                          "write this data as messages or sharegpt")
    record: dict[str, Any] = {}
    if messages and messages[0]["role"] == "system":
        record["system"] = messages.pop(0)["content"]
    roles = [m["role"] for m in messages]
    if len(roles) % 2 or roles != ["user", "assistant"] * (len(roles) // 2):
        raise SftlabError(f"{example.get('_src', 'example')}: alpaca needs alternating user/assistant turns ending with the assistant")
    pairs = [[messages[i]["content"], messages[i + 1]["content"]] for i in range(0, len(messages), 2)]
    record = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], **record}
    if len(pairs) > 1:
        record["history"] = pairs[:-1]
    return record


def _to_sharegpt(example: dict) -> dict:
    names = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
    turns = []
    for m in _conversation(example, "sharegpt"):
        if not m.get("tool_calls"):
            turns.append({"from": names[m["role"]], "value": m["content"]})
            continue
        if (m.get("content") or "").strip():  # an OpenAI tool-call turn may carry content null
            raise SftlabError(f"{example.get('_src', 'example')}: sharegpt's function_call turn holds no text; "
                              "an assistant turn with both text and tool_calls needs the messages format")
        calls = [c["function"] for c in m["tool_calls"]]
        turns.append({"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)})
    tools = example.get("tools")
    return {"conversations": turns, **({"tools": json.dumps(tools, ensure_ascii=False)} if tools else {})}


def _to_messages(example: dict) -> dict:
    tools = example.get("tools")
    return {"messages": [dict(m) for m in _conversation(example, "messages")], **({"tools": tools} if tools else {})}


_RECORD_WRITERS = {"alpaca": _to_alpaca, "sharegpt": _to_sharegpt, "messages": _to_messages, "jsonl": _public}


def _csv_text(examples: list[dict]) -> str:
    fields = ["text", "label"] if any("label" in ex for ex in examples) else ["text"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for example in examples:
        if "text" not in example or "messages" in example:
            raise SftlabError(f"{example.get('_src', 'example')}: csv holds text/label examples; "
                              "write conversations as alpaca, sharegpt or messages")
        writer.writerow({key: example.get(key, "") for key in fields})
    return buffer.getvalue()
