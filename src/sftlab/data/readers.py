"""Data files -> raw rows, each with `"_src"` naming where it came from (file:line); never modifies a file.

    rows = read_rows("train.jsonl")    # [{"instruction": ..., "_src": "train.jsonl:3"}, ...]

.json (a list of objects, or an object holding one list; JSON lines saved as .json are accepted too, as
Hugging Face's json loader does), .jsonl, .csv/.tsv (header on line 1, its names stripped of surrounding spaces,
each name once), .parquet, .txt (one text per
non-empty line). `_src` is `file:line`; for a JSON list it is `file:line[#i]`, the line where item i
(0-based) starts; for parquet `file[#i]`. Missing files, malformed JSON (file and line), a file that is
not what its extension says, bad UTF-8 (file and line), unknown extensions and empty files raise a
one-line `SftlabError`, and so does a JSON string holding a lone UTF-16 surrogate escape (`"\\ud83d"`, half of
an emoji), which no UTF-8 file, cache or tokenizer can hold (`lone_surrogate`; `surrogates=True` returns such
rows for `sftlab data build validate`, which lists them). `apply_columns` renames a row's columns to the
canonical names (`data.columns`), remembering them so errors name the user's column (`column_name`).
`sftlab.data.formats` turns the rows into canonical examples.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from sftlab.errors import SftlabError

READ_EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
# Canonical fields a data.columns mapping may name although a row lacks the column.
OPTIONAL_FIELDS = ("input", "system", "history", "tools")
# List-valued fields of a single record: an object whose only list is one of these is one record, not a wrapper.
_RECORD_LIST_FIELDS = ("conversations", "messages", "history", "prompt", "completion")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def read_rows(path: str | Path, surrogates: bool = False) -> list[dict]:
    """Read every row of a data file as a dict with `_src`; never modifies the file. A row of a JSON file with a
    lone surrogate is an error naming its `file:line` and field, unless `surrogates`."""
    path = Path(path)
    ext = path.suffix.lower()
    if not path.is_file():
        raise SftlabError(f"data file not found: {path}")
    if ext not in READ_EXTENSIONS:
        raise SftlabError(f"{path}: unknown data file extension {ext or '(none)'!r}; expected one of {', '.join(READ_EXTENSIONS)}")
    if ext == ".parquet":
        rows = _read_parquet(path)
    else:
        text = _decode(path)
        if ext == ".json":
            rows = _read_json(path, text)
        elif ext == ".jsonl":  # a JSON array saved as .jsonl is read as JSON, as HF's json loader does
            rows = _read_json(path, text) if text.lstrip().startswith("[") else _read_jsonl(path, text)
        elif ext == ".txt":
            rows = [{"text": line, "_src": f"{path}:{i}"} for i, line in enumerate(_lines(text), 1) if line.strip()]
        else:
            rows = _read_csv(path, text, "\t" if ext == ".tsv" else ",")
    if not rows:
        raise SftlabError(empty_dataset(path))
    # Only a JSON escape can make one (UTF-8 text cannot): rows are searched when the text holds a \uD800-\uDFFF escape.
    if ext in (".json", ".jsonl") and not surrogates and _SURROGATE_ESCAPE.search(text):
        for row in rows:
            problem = lone_surrogate(row)
            if problem:
                raise SftlabError(f"{row['_src']}: {problem}")
    return rows


def lone_surrogate(value, where: str = "") -> str | None:
    """A one-line description of the first lone UTF-16 surrogate (a JSON escape such as `\\ud83d`, half of an
    emoji cut in two) in the strings of `value`, with the field that holds it; None when there is none. Such a
    character cannot be written as UTF-8, so no output could hold it."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found:
            return (f"lone UTF-16 surrogate \\u{ord(found.group()):04x} in {where or 'the text'} (half of an emoji?); "
                    "it cannot be written as UTF-8: fix or remove it")
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if key == "_src":
            continue
        found = lone_surrogate(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found:
            return found
    return None


def json_problem(exc: json.JSONDecodeError) -> str:
    """What is wrong and where in the line: "Expecting ',' delimiter at column 8" (json's own message for an
    unterminated string already ends in "starting at", which would read "at at column")."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def empty_dataset(path) -> str:
    """The error for a data file without rows (the in-memory reader's and the stream's)."""
    return f"{path}: empty dataset (no rows)"


def not_utf8(path, line: int, byte: int) -> str:
    """The error for a data file's first byte that is not UTF-8 (the in-memory reader's and the stream's)."""
    return f"{path}:{line}: not valid UTF-8 (byte {byte:#04x}); re-save the file as UTF-8"


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise SftlabError(f"{path}: binary content (NUL bytes), not a {path.suffix} text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SftlabError(not_utf8(path, data[: exc.start].count(b"\n") + 1, data[exc.start])) from None


def _lines(text: str) -> list[str]:
    """The lines of `text`, split at \\n, \\r\\n and \\r only: str.splitlines also splits at U+2028, U+0085 and
    form feeds, which JSON strings and texts may hold as they are (json.dumps(..., ensure_ascii=False) writes them)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _read_jsonl(path: Path, text: str) -> list[dict]:
    rows = []
    for number, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SftlabError(f"{path}:{number}: malformed JSON line ({json_problem(exc)})") from None
        if not isinstance(obj, dict):
            raise SftlabError(f"{path}:{number}: expected one JSON object per line, got {type(obj).__name__}")
        rows.append({**obj, "_src": f"{path}:{number}"})
    return rows


def _read_json(path: Path, text: str) -> list[dict]:
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped[0] not in "[{":
        raise SftlabError(
            f"{path}:1: not JSON: starts with {stripped[:30]!r}; a .json file must hold a list of objects "
            "(is it CSV or plain text? rename it to .csv/.txt)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped[0] == "{" and _first_line_is_object(stripped):
            return _read_jsonl(path, text)  # JSON lines saved as .json, as HF's json loader allows
        raise SftlabError(f"{path}:{exc.lineno}: malformed JSON ({json_problem(exc)})") from None
    items, start = _json_items(path, data, text)
    rows = []
    line, counted = 1, 0  # line of `counted`: offsets only grow, so each stretch of text is counted once
    for index, (item, offset) in enumerate(zip(items, _item_offsets(text, start, len(items)))):
        line += text.count("\n", counted, offset)
        counted = offset
        src = f"{path}:{line}[#{index}]"
        if not isinstance(item, dict):
            raise SftlabError(f"{src}: expected a JSON object, got {type(item).__name__}")
        rows.append({**item, "_src": src})
    return rows


def _first_line_is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(_lines(text)[0]), dict)
    except json.JSONDecodeError:
        return False


def _json_items(path: Path, data: Any, text: str) -> tuple[list, int]:
    """The list of records in a JSON document and the offset where that list starts in `text`."""
    if isinstance(data, list):
        return data, text.index("[")
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if not lists or any(key in _RECORD_LIST_FIELDS for key in lists):
            return [data], text.index("{")  # a single record (e.g. one conversation) is a one-row dataset
        if len(lists) == 1:
            return data[lists[0]], _value_offset(text, lists[0])
        raise SftlabError(f"{path}:1: JSON object holds several lists ({', '.join(lists)}); expected a list of records or one list")
    raise SftlabError(f"{path}:1: expected a list of JSON objects, got {type(data).__name__}")


def _value_offset(text: str, key: str) -> int:
    """Offset of the value of top-level `key` in a JSON object (walks the object with raw_decode)."""
    decoder = json.JSONDecoder()
    pos = text.index("{") + 1
    while True:
        pos = _skip(text, pos, ", \t\r\n")
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos, " \t\r\n:")
        if name == key:
            return pos
        _, pos = decoder.raw_decode(text, pos)


def _item_offsets(text: str, start: int, count: int) -> list[int]:
    """Start offsets of the `count` items of the JSON array that begins at `start` (or the object itself)."""
    if text[start] == "{":
        return [start]
    decoder = json.JSONDecoder()
    offsets, pos = [], start + 1
    for _ in range(count):
        pos = _skip(text, pos, ", \t\r\n")
        offsets.append(pos)
        _, pos = decoder.raw_decode(text, pos)
    return offsets


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _read_csv(path: Path, text: str, delimiter: str) -> list[dict]:
    if text.lstrip()[:1] in ("[", "{"):
        raise SftlabError(f"{path}:1: looks like JSON, not {path.suffix[1:].upper()}; rename it to .json or .jsonl")
    csv.field_size_limit(2**31 - 1)  # long documents in one cell are fine
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            return []
        header = header_names(path, header)
        rows, start = [], reader.line_num + 1
        for record in reader:
            if record and len(record) != len(header):
                raise SftlabError(f"{path}:{start}: row has {len(record)} fields, the header has {len(header)}")
            if any(field.strip() for field in record):
                rows.append({**dict(zip(header, record)), "_src": f"{path}:{start}"})
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SftlabError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return rows


def header_names(path: Path, names: list[str]) -> list[str]:
    """The header's column names without surrounding spaces (`text, label` names `label`, not ` label`); a name
    given twice is an error, since one column's values would silently replace the other's."""
    names = [name.strip() for name in names]
    for index, name in enumerate(names):
        if name and name in names[:index]:
            raise SftlabError(f"{path}:1: the header names column {name!r} twice (columns {names.index(name) + 1} and "
                              f"{index + 1}); rename one")
    return names


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowInvalid, OSError) as exc:
        raise SftlabError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    return [{**row, "_src": f"{path}[#{i}]"} for i, row in enumerate(table.to_pylist())]


def apply_columns(row: dict, columns: dict[str, str] | None) -> dict:
    """Rename file columns to canonical names: `columns` maps canonical name -> column in the file.

    A mapped column that a row lacks is an error, except for the optional fields input, system, history, tools.
    Every value is read from the row as it was, so mappings may swap names (`{text: label, label: text}`). The
    mapping is kept under `_columns` (canonical -> column), so the errors about a value name the user's column:
    "column 'intent' (data.columns.label) is empty".
    """
    if not columns:
        return row
    mapped = {canonical: column for canonical, column in columns.items() if column != canonical}
    out = {key: value for key, value in row.items() if key not in mapped.values()}
    for canonical, column in mapped.items():
        if column not in row:
            if canonical in OPTIONAL_FIELDS:
                continue
            keys = [key for key in row if not key.startswith("_")]
            raise SftlabError(f"{row.get('_src', 'row')}: column {column!r} (data.columns.{canonical}) not found; the row has {keys}")
        out[canonical] = row[column]
    if mapped:
        out["_columns"] = {**row.get("_columns", {}), **mapped}
    return out


def column_name(row: dict, key: str) -> str:
    """How an error names field `key` of `row`: "field 'label'", or the user's column when data.columns mapped it,
    "column 'intent' (data.columns.label)"."""
    column = row.get("_columns", {}).get(key)
    return f"column {column!r} (data.columns.{key})" if column else f"field {key!r}"


def column_key(row: dict, key: str) -> str:
    """`key` as the file names it (its data.columns column), to start paths such as `conv[2].content`."""
    return row.get("_columns", {}).get(key, key)
