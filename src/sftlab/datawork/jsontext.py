"""String values inside JSON, changed without breaking the JSON: used by PII redaction and normalisation of
tool-call arguments and tool results, and the canonical JSON text that deduplication compares.

    map_json_or_text('{"to" : "a@b.com", "n": 1}', redact)   # -> '{"to" : "[EMAIL]", "n": 1}'
    map_json_value({"to": "a@b.com", "n": 1}, redact)         # -> {"to": "[EMAIL]", "n": 1}
    canonical_json({"b": 1, "a": [1, 2]})                     # -> '{"a": [1, 2], "b": 1}'

Only string values change: keys, numbers, booleans, nulls and the structure stay, and in JSON text every
character outside a changed string value (spacing, line breaks, escapes of unchanged strings) is kept as it was.
A changed value is written back as a JSON string (escaped with `json.dumps`), so the text stays valid JSON.
"""

from __future__ import annotations

import json
import re
from typing import Callable

# a JSON string token, then `:` when it is an object key (in text already known to be valid JSON)
_JSON_STRING = re.compile(r'("(?:[^"\\]|\\.)*")(\s*:)?')


def map_json_value(value, fn: Callable[[str], str]):
    """A copy of a parsed JSON value with `fn` applied to every string value, at any depth; keys, numbers and
    structure kept."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_json_value(item, fn) for key, item in value.items()}
    if isinstance(value, list):
        return [map_json_value(item, fn) for item in value]
    return value


def parse_json_text(text: str):
    """The parsed value of `text` when it is JSON of an object or an array, else None."""
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def map_json_text(text: str, fn: Callable[[str], str]) -> str | None:
    """JSON text of an object or array with `fn` applied to its string values (not keys), every other character
    kept as it was; None when `text` is not JSON of an object or array."""
    if parse_json_text(text) is None:
        return None

    def one(match: re.Match) -> str:
        token, key = match.group(1), match.group(2)
        if key:
            return match.group(0)
        value = json.loads(token)
        changed = fn(value)
        return token if changed == value else json.dumps(changed, ensure_ascii=token.isascii())

    return _JSON_STRING.sub(one, text)


def map_json_or_text(text: str, fn: Callable[[str], str]) -> str:
    """`map_json_text` for JSON text of an object or array; `fn(text)` for any other text."""
    mapped = map_json_text(text, fn)
    return fn(text) if mapped is None else mapped


def map_arguments(arguments, fn: Callable[[str], str]):
    """Tool-call arguments with `fn` applied to their string values: JSON text stays JSON text (any other text
    is passed to `fn` whole), an object stays an object."""
    if isinstance(arguments, str):
        return map_json_or_text(arguments, fn)
    return map_json_value(arguments, fn)


def canonical_json(value) -> str:
    """One text per JSON value: keys sorted, `", "` and `": "` between tokens, non-ASCII characters as they are.
    Key order and spacing of the source do not change it; list order, keys and values do."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
