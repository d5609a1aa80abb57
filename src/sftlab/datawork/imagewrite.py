"""Writing image+text examples back to files that `sftlab train` reads as it read the input: the image layouts
(`messages` with `<image>` placeholders and an `images` list, LLaMA-Factory `sharegpt`, OpenAI content parts
`openai`, canonical `jsonl`) and image entries rewritten to resolve from the output's directory.

    write_image_examples("out/clean.jsonl", examples, "messages")

Image entries: a path relative to the data file is written relative to the output file's directory (unchanged
when both files are in one directory), so `out/clean.jsonl` names `../data/images/cat.png` for the
`images/cat.png` of `data/train.jsonl`; absolute paths, `file://` URLs with an absolute path, `~` paths, web URLs
and `data:` URLs are written exactly as given. Directories are compared after resolving symbolic links, so a
rewritten path resolves wherever a link takes the output directory. Rows without images are written in the same
layout without an `images` field.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from sftlab.datawork.images import PLACEHOLDER
from sftlab.errors import SftlabError
from sftlab.io import atomic_write_json, atomic_write_jsonl

LAYOUTS = ("messages", "sharegpt", "openai", "jsonl")
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def written_reference(entry: str, base_dir: str | Path, out_dir: str | Path) -> str:
    """An image entry of a file in `base_dir` as a file in `out_dir` must give it (see the module docstring)."""
    if entry.startswith(("data:", "~")):
        return entry
    parsed = urlparse(entry)
    if parsed.scheme in ("http", "https"):
        return entry
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(entry)
    if path.is_absolute():
        return entry
    source_dir, target_dir = os.path.realpath(base_dir), os.path.realpath(out_dir)
    if source_dir == target_dir and parsed.scheme != "file":
        return entry
    source = Path(base_dir) / path
    real = os.path.join(os.path.realpath(source.parent), source.name)
    return Path(os.path.relpath(real, target_dir)).as_posix()


def written_images(example: dict, out_dir: str | Path) -> list[str]:
    """The example's image entries as the output file in `out_dir` gives them."""
    base = example.get("_images_dir", out_dir)
    return [written_reference(entry, base, out_dir) for entry in example.get("images") or []]


def write_image_examples(path: str | Path, examples: list[dict], fmt: str) -> Path:
    """Write image+text examples (and any text rows beside them) in layout `fmt` (`LAYOUTS`), atomically: a JSON
    list for a .json path, else JSON lines. The fields kept under `_extra` go first in each record, as
    `sftlab.data.writers.write_rows` writes them; alpaca and csv have no place for images and are refused."""
    from sftlab.data.formats import written_extra

    if fmt not in LAYOUTS:
        first = next(example for example in examples if example.get("images"))
        raise SftlabError(f"{first.get('_src', 'example')}: an image+text row; --to {fmt} has no place for images: "
                          f"write image+text data as messages, sharegpt, openai or jsonl")
    path = Path(path)
    out_dir = path.parent
    records = [{**written_extra(ex, "messages"), **_RECORDS[fmt](ex, written_images(ex, out_dir))} for ex in examples]
    if fmt != "jsonl" and path.suffix.lower() == ".json":
        return atomic_write_json(path, records)
    return atomic_write_jsonl(path, records)


def _with_images(record: dict, images: list[str]) -> dict:
    return record | ({"images": images} if images else {})


def _messages(example: dict, images: list[str]) -> dict:
    """mllm_demo layout: role/content turns with `<image>` placeholders and an `images` list."""
    return _with_images({"messages": [{"role": m["role"], "content": m["content"]} for m in example["messages"]]},
                        images)


def _sharegpt(example: dict, images: list[str]) -> dict:
    """LLaMA-Factory sharegpt: from/value turns (human, gpt, system) with placeholders and an `images` list."""
    turns = [{"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in example["messages"]]
    return _with_images({"conversations": turns}, images)


def _openai(example: dict, images: list[str]) -> dict:
    """OpenAI messages: a turn with images as a list of text and image_url parts, each image where its
    placeholder was; a turn without images keeps its text content."""
    pending = iter(images)
    messages = []
    for message in example["messages"]:
        content = message["content"]
        if PLACEHOLDER in content:
            pieces = content.split(PLACEHOLDER)
            parts = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
            for piece in pieces[1:]:
                parts.append({"type": "image_url", "image_url": {"url": next(pending)}})
                parts += [{"type": "text", "text": piece}] if piece else []
            content = parts
        messages.append({"role": message["role"], "content": content})
    return {"messages": messages}


def _canonical(example: dict, images: list[str]) -> dict:
    """Canonical JSONL: the example's own fields (an `augmented` mark included), its images rewritten."""
    public = {key: value for key, value in example.items() if not key.startswith("_") and key != "images"}
    return _with_images(public, images)


_RECORDS = {"messages": _messages, "sharegpt": _sharegpt, "openai": _openai, "jsonl": _canonical}
