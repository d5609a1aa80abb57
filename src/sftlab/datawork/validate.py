"""Validation of a hand-written dataset file: encoding, JSON syntax, schema, empty fields, duplicate ids,
duplicate examples, cls texts with conflicting labels and mixed formats, each problem reported with its file:line.

    problems = validate_file("train.jsonl", fmt="auto", stage=None, id_field="id")

Unlike training, which stops at the first bad record, validation keeps going and lists every problem.
A file with image+text rows (`datawork.images`) is checked as `sftlab train` reads it for vision-language models:
each row's shape and `<image>` placeholders against its images, and every image that training could not open
(missing, not decodable, a decompression bomb, a web URL) as a problem of kind `image`; duplicates must have the
same images.
Encoding is checked line by line on the raw bytes (bytes that are not UTF-8 stop the other checks, which need
the text) and JSON-lines syntax line by line, so one broken line hides neither the next nor the problems of the
rows around it; every row goes through `sftlab.data.formats` one at a time.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from sftlab.data.option_names import option_names
from sftlab.datawork.dedup import example_hash
from sftlab.datawork.images import check_image_options, image_example, image_problems, images_dir, is_image_row
from sftlab.datawork.records import lone_surrogate
from sftlab.errors import SftlabError


@dataclass
class Problem:
    """One problem found in a file: where, what kind, and a one-line explanation."""

    src: str
    kind: str
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def validate_file(path: str | Path, fmt: str = "auto", stage: str | None = None, columns: dict | None = None,
                  id_field: str | None = "id") -> tuple[list[Problem], int]:
    """All problems in `path` and the number of rows read (0 when the file could not be read at all)."""
    from sftlab.data.formats import read_rows

    path = Path(path)
    if not path.is_file():
        raise SftlabError(f"data file not found: {path}")
    problems = _encoding_problems(path)
    if any(problem.kind == "encoding-fatal" for problem in problems):
        return [Problem(p.src, "encoding", p.message) for p in problems], 0
    try:
        rows, syntax = _read_rows(path)
    except SftlabError as exc:
        return problems + [Problem(str(path), "unreadable", str(exc))], 0
    if any(is_image_row(row) for row in rows):
        problems += syntax + _image_row_problems(rows, path, fmt, stage, columns)
    else:
        problems += syntax + _row_problems(rows, fmt, stage, columns)
    if id_field:
        problems += _duplicate_ids(rows, id_field)
    return sorted(problems, key=_src_order), len(rows)


def _read_rows(path: Path) -> tuple[list[dict], list[Problem]]:
    """The rows of `path` and the JSON-lines syntax problems: a .jsonl file (not a JSON array saved as .jsonl) is
    read line by line, lines split as `sftlab.data.readers` splits them, so a broken line is listed and skipped
    and the rows around it are still checked; other files through `read_rows`."""
    from sftlab.data.readers import _lines, read_rows

    if path.suffix.lower() != ".jsonl":
        return read_rows(path, surrogates=True), []
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        return read_rows(path, surrogates=True), []
    rows, problems = [], []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"{path}:{number}", "syntax", f"malformed JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(value, dict):
            problems.append(Problem(f"{path}:{number}", "syntax", f"expected a JSON object, got {type(value).__name__}"))
            continue
        rows.append({**value, "_src": f"{path}:{number}"})
    if not rows and not problems:
        raise SftlabError(f"{path}: empty dataset (no rows)")
    return rows, problems


def _encoding_problems(path: Path) -> list[Problem]:
    if path.suffix.lower() == ".parquet":
        return []
    problems = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if b"\x00" in raw:
            problems.append(Problem(f"{path}:{number}", "encoding-fatal", f"binary content (NUL bytes), not a {path.suffix} text file"))
            break
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(f"{path}:{number}", "encoding-fatal", f"not valid UTF-8 at byte {exc.start} ({raw[exc.start]:#04x}); re-save as UTF-8"))
            continue
        if "\ufffd" in line:
            problems.append(Problem(f"{path}:{number}", "encoding", "contains U+FFFD replacement characters (text was decoded with the wrong encoding earlier)"))
    return problems


def _row_formats(rows: list[dict], fmt: str, columns: dict | None) -> tuple[list[str | None], Counter]:
    """Each row's format (None when its keys fit none) and how many rows have each format."""
    from sftlab.data.formats import apply_columns, detect_format

    found: list[str | None] = []
    for row in rows:
        try:
            found.append(detect_format(apply_columns(row, columns)) if fmt == "auto" else fmt)
        except SftlabError:
            found.append(None)
    return found, Counter(f for f in found if f is not None)


def _row_problems(rows: list[dict], fmt: str, stage: str | None, columns: dict | None) -> list[Problem]:
    """Rows converted one at a time; a row whose format cannot be told is checked against the file's main format."""
    from sftlab.data.formats import to_canonical

    found, formats = _row_formats(rows, fmt, columns)
    majority = formats.most_common(1)[0][0] if formats else None
    problems, seen = [], {}
    for row, row_fmt in zip(rows, found):
        where = row.get("_src", "?")
        surrogate = lone_surrogate(row)
        if surrogate:
            problems.append(Problem(where, "encoding", surrogate))
        try:
            if row_fmt is None and majority is None:
                to_canonical([row], "auto", stage, columns)  # raises the "cannot tell the format" error
            example = to_canonical([row], row_fmt or majority, stage, columns)[0]
        except SftlabError as exc:
            problems.append(Problem(where, "schema", option_names(_strip_src(str(exc), where))))
            continue
        problems += _empty_fields(example, where) + _duplicate(example, where, seen)
    if fmt == "auto" and len(formats) > 1:
        problems += [Problem(row["_src"], "mixed-format", f"row is {f!r} but most rows ({formats[majority]}) are {majority!r}")
                     for row, f in zip(rows, found) if f is not None and f != majority]
    return problems


def _image_row_problems(rows: list[dict], path: Path, fmt: str, stage: str | None,
                        columns: dict | None) -> list[Problem]:
    """Image+text rows read one at a time as the trainer reads them (the sharegpt and messages layouts may mix,
    as they may there), with a problem for every image that training could not open."""
    check_image_options(rows, fmt, stage, columns)
    base, problems, seen = images_dir(path), [], {}
    for row in rows:
        where = row.get("_src", "?")
        surrogate = lone_surrogate(row)
        if surrogate:
            problems.append(Problem(where, "encoding", surrogate))
        try:
            example = image_example(row, base)
        except SftlabError as exc:
            problems.append(Problem(where, "schema", _strip_src(str(exc), where)))
            continue
        problems += [Problem(where, "image", detail) for _, detail in image_problems(example)]
        problems += _empty_fields(example, where) + _duplicate(example, where, seen)
    return problems


def _duplicate(example: dict, where: str, seen: dict) -> list[Problem]:
    """A duplicate (or, for cls, label-conflict) problem when an earlier row had the same content (`example_hash`);
    `seen` maps each content hash to its first row and label."""
    digest, label = example_hash(example), example.get("label") if "messages" not in example else None
    if digest not in seen:
        seen[digest] = (where, label)
        return []
    if seen[digest][1] != label:
        return [Problem(where, "label-conflict", f"label {label!r}, but {seen[digest][0]} has the same text with "
                                                 f"label {seen[digest][1]!r}")]
    return [Problem(where, "duplicate", f"same content as {seen[digest][0]}")]


def _empty_fields(example: dict, where: str) -> list[Problem]:
    if "messages" in example:
        return [Problem(where, "empty", f"message {i} ({m['role']}) has empty content")
                for i, m in enumerate(example["messages"]) if not m["content"].strip() and not m.get("tool_calls")]
    problems = []
    if not example.get("text", "").strip():
        problems.append(Problem(where, "empty", "field 'text' is empty"))
    if "label" in example and not str(example["label"]).strip():
        problems.append(Problem(where, "empty", "field 'label' is empty"))
    return problems


def _duplicate_ids(rows: list[dict], id_field: str) -> list[Problem]:
    first: dict[str, str] = {}
    problems = []
    for row in rows:
        if id_field not in row or row[id_field] in (None, ""):
            continue
        key = str(row[id_field])
        if key in first:
            problems.append(Problem(row["_src"], "duplicate-id", f"{id_field} {key!r} already used at {first[key]}"))
        else:
            first[key] = row["_src"]
    return problems


def _strip_src(message: str, where: str) -> str:
    return message[len(where) + 2 :] if message.startswith(f"{where}: ") else message


def _src_order(problem: Problem) -> tuple:
    head, _, tail = problem.src.rpartition(":")
    digits = "".join(ch for ch in tail if ch.isdigit())
    return (head or problem.src, int(digits) if digits else 0, problem.kind)
