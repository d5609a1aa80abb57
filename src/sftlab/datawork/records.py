"""Uniform access to canonical examples of every stage: which stage, prompt, response, label, all text.

Canonical shapes (DEVELOPERS.md): sft `{"messages": [...]}`, pt `{"text"}`, cls `{"text", "label"}`, each
with `"_src": "file:line"`. Data-work operations use these helpers so they need not branch on the stage.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from sftlab.errors import SftlabError


def stage_of(example: dict) -> str:
    """'sft', 'cls' or 'pt' from the example's shape."""
    if "messages" in example:
        return "sft"
    if "label" in example:
        return "cls"
    return "pt"


def prompt_text(example: dict) -> str:
    """What the model is given: non-assistant turns before the last answer (sft), the text (cls), '' (pt)."""
    kind = stage_of(example)
    if kind == "sft":
        messages = example["messages"]
        last = last_assistant_index(messages)
        return "\n".join(m["content"] for m in messages[: last if last >= 0 else len(messages)] if m["role"] != "assistant")
    if kind == "cls":
        return example["text"]
    return ""


def response_text(example: dict) -> str:
    """What the model learns to produce: the last assistant turn (sft), the label (cls), the text (pt)."""
    kind = stage_of(example)
    if kind == "sft":
        last = last_assistant_index(example["messages"])
        return example["messages"][last]["content"] if last >= 0 else ""
    if kind == "cls":
        return str(example["label"])
    return example["text"]


def label_of(example: dict) -> str:
    """The class of a labelled example: `label` (cls) or the last assistant answer (sft whose response is a label)."""
    if stage_of(example) == "pt":
        raise SftlabError(f"{example.get('_src', 'example')}: a pt example has no label")
    return response_text(example).strip()


def full_text(example: dict) -> str:
    """Every text field of the example joined by newlines (for hashing, dedup and language checks)."""
    if stage_of(example) == "sft":
        return "\n".join(m["content"] for m in example["messages"])
    return example["text"]


def last_assistant_index(messages: list[dict]) -> int:
    """Index of the last assistant message, or -1."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return index
    return -1


def map_texts(example: dict, fn: Callable[[str], str]) -> dict:
    """A copy of `example` with `fn` applied to every text (message contents or `text`); labels untouched."""
    out = copy.deepcopy(example)
    if stage_of(out) == "sft":
        for message in out["messages"]:
            message["content"] = fn(message["content"])
    else:
        out["text"] = fn(out["text"])
    return out


def src(example: dict) -> str:
    """The example's `file:line` origin, or '?' when it has none."""
    return str(example.get("_src", "?"))


def load_examples(path: str | Path, fmt: str = "auto", stage: str | None = None, columns: dict | None = None) -> list[dict]:
    """Read a dataset file with `sftlab.data.formats` and return canonical examples (each with `_src`).

    `stage` None takes the stage the format implies (alpaca -> sft, text -> pt, label -> cls).
    """
    from sftlab.data.formats import read_rows, to_canonical

    return to_canonical(read_rows(path), fmt, stage, columns or None)


def save_examples(path: str | Path, examples: list[dict], fmt: str | None = None) -> Path:
    """Write canonical examples with `sftlab.data.formats.write_rows` (default: messages for sft, jsonl otherwise)."""
    from sftlab.data.formats import write_rows

    if fmt is None:
        fmt = "messages" if examples and stage_of(examples[0]) == "sft" else "jsonl"
    write_rows(path, examples, fmt)
    return Path(path)
