"""What is wrong with a streamed pt corpus (`data.streaming`), named as the in-memory reader names it (`file:line`).

    empty_file(path)                       # "f.jsonl: empty dataset (no rows)" for an empty or blank file, else None
    quiet_reader_logs()                    # no "Failed to load JSON ..." log line from datasets before the error
    text_problem(value, column)            # "missing required field 'text'" / "field 'text' is empty" / ... or None
    csv_header_problem(path)               # "f.csv:1: the header names column 'text' twice (...)" or None
    find_problem(files, builder, column)   # the first problem of the files, in file order: "f.jsonl:7: ..." or None

A `datasets` stream cannot say which file and line a record came from (files and records come through a shuffle
buffer), and its readers fail with a traceback on bytes that are not UTF-8 or a malformed JSON line. So when a
streamed record has no usable text, or reading the stream fails, `sftlab.data.streaming` calls `find_problem`,
which reads the files again in order, a line at a time (constant memory), and returns the first problem with its
`file:line`, in the words of `sftlab.data.readers` and `sftlab.data.formats`: bytes that are not UTF-8, a line
that is not a JSON object, a record whose text column is missing, null, not a string or blank. `.txt` lines are
documents and blank ones are skipped (as the in-memory reader skips them), so only their bytes can be at fault.
A .csv header's names count without their surrounding spaces, and a name given twice is refused before the file
is streamed (`csv_header_problem`, the in-memory reader's `_header` and its words).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from sftlab.data.readers import empty_dataset, header_names, json_problem, not_utf8
from sftlab.errors import SftlabError

_CHUNK = 1 << 16
_READER_LOGGERS = ("json.json", "csv.csv", "text.text", "parquet.parquet")


class _NoReadFailures(logging.Filter):
    """Drops the `Failed to read/load ... from file` records `datasets`' readers log before they raise: the error
    raised after them is turned into one line (or keeps its traceback, which repeats the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to ")


def quiet_reader_logs() -> None:
    """Add `_NoReadFailures` to the loggers of `datasets`' json, csv, text and parquet readers (once)."""
    for name in _READER_LOGGERS:
        logger = logging.getLogger(f"datasets.packaged_modules.{name}")
        if not any(isinstance(f, _NoReadFailures) for f in logger.filters):
            logger.addFilter(_NoReadFailures())


def empty_file(path: str | Path) -> str | None:
    """The in-memory reader's error for a file with no rows (no bytes, or only whitespace), else None. Reads only
    up to the first byte that is not whitespace."""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            if chunk.strip():
                return None
    return empty_dataset(path)


def text_problem(value, column: str) -> str | None:
    """What is wrong with a record's text (`value` of `column`) for pt, as `sftlab.data.formats` says it; None if
    it is a non-blank string."""
    if value is None:
        return f"missing required field {column!r}"
    if not isinstance(value, str) or isinstance(value, bool):
        return f"field {column!r} must be str, got {type(value).__name__}"
    if not value.strip():
        return f"field {column!r} is empty"
    return None


def csv_header_problem(path: str | Path) -> str | None:
    """The in-memory reader's error for a CSV header that names a column twice once spaces around names are
    stripped (`text, text` or `text,text`), else None. Reads only the header; bytes that are not UTF-8 and malformed
    CSV are left to `find_problem`."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), None) or []
        header_names(Path(path), header)
    except SftlabError as exc:
        return str(exc)
    except (UnicodeDecodeError, csv.Error):
        return None
    return None


def find_problem(files: list[str], builder: str, column: str) -> str | None:
    """The first problem of `files` (read by the `datasets` builder `builder`) in file order, with its `file:line`,
    or None when none is found."""
    for path in files:
        problem = empty_file(path) or _utf8_problem(path)
        if problem is None and builder == "json":
            problem = _jsonl_problem(path, column) if _is_json_lines(path) else _json_problem(path, column)
        elif problem is None and builder == "csv":
            problem = _csv_problem(path, column)
        elif problem is None and builder == "parquet":
            problem = _parquet_problem(path, column)
        if problem:
            return problem
    return None


def _utf8_problem(path: str) -> str | None:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return not_utf8(path, number, line[exc.start])
    return None


def _is_json_lines(path: str) -> bool:
    """Whether a json-builder file is JSON lines (its first character other than whitespace is not `[`)."""
    with open(path, encoding="utf-8-sig") as handle:
        while chunk := handle.read(_CHUNK):
            if chunk.strip():
                return not chunk.lstrip().startswith("[")
    return True


def _jsonl_problem(path: str, column: str) -> str | None:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                return f"{path}:{number}: malformed JSON line ({json_problem(exc)})"
            if not isinstance(record, dict):
                return f"{path}:{number}: expected one JSON object per line, got {type(record).__name__}"
            if problem := text_problem(record.get(column), column):
                return f"{path}:{number}: {problem}"
    return None


def _json_problem(path: str, column: str) -> str | None:
    """A JSON document (a list of records): read whole, as `datasets` reads it too."""
    from sftlab.data.readers import read_rows

    try:
        rows = read_rows(path)
    except SftlabError as exc:
        return str(exc)
    return next((f"{row['_src']}: {problem}" for row in rows if (problem := text_problem(row.get(column), column))),
                None)


def _csv_problem(path: str, column: str) -> str | None:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = header_names(Path(path), next(reader, None) or [])
            start = reader.line_num + 1
            for record in reader:
                if any(field.strip() for field in record):
                    value = dict(zip(header, record)).get(column)
                    if problem := text_problem(value, column):
                        return f"{path}:{start}: {problem}"
                start = reader.line_num + 1
        except csv.Error as exc:
            return f"{path}:{reader.line_num}: malformed CSV ({exc})"
        except SftlabError as exc:  # a name given twice (`header_names`)
            return str(exc)
    return None


def _parquet_problem(path: str, column: str) -> str | None:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=4096):
        for value in batch.column(0).to_pylist():
            if problem := text_problem(value, column):
                return f"{path}[#{index}]: {problem}"
            index += 1
    return None

