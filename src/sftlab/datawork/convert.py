"""Conversion between dataset formats (alpaca, sharegpt, messages, canonical jsonl, csv) through the
canonical examples of `sftlab.data.formats`, so the result reads back exactly as the trainer reads it.

    n = convert_file("raw.json", "train.jsonl", to_fmt="messages")
"""

from __future__ import annotations

from pathlib import Path

from sftlab.datawork.records import dropped_fields_note, load_valid_examples, save_examples
from sftlab.errors import SftlabError


def convert_file(source: str | Path, target: str | Path, to_fmt: str, from_fmt: str = "auto",
                 stage: str | None = None, columns: dict | None = None, notes: list[str] | None = None,
                 invalid: list[tuple[str, str]] | None = None) -> int:
    """Read `source`, write it to `target` in `to_fmt`; returns the number of examples written. Fields of the
    rows that `to_fmt` does not write (`records.dropped_fields_note`) are named in a line added to `notes`. With
    `invalid` (a list), rows that do not convert are left out and appended to it (`records.load_valid_examples`)."""
    if Path(source).resolve() == Path(target).resolve():
        raise SftlabError(f"{target}: output would overwrite the input file; choose another path")
    examples = load_valid_examples(source, from_fmt, stage, columns, invalid)
    save_examples(target, examples, to_fmt)
    note = dropped_fields_note(examples, to_fmt)
    if note and notes is not None:
        notes.append(note)
    return len(examples)
