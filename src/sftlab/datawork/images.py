"""Image+text rows in the data commands: reading them as canonical examples that keep their images, checking and
hashing the image files, and keeping `<image>` placeholders where they are through every text edit.

    examples = read_image_examples(rows, "data/train.jsonl")   # when any row `is_image_row`
    examples[0] == {"messages": [{"role": "user", "content": "<image>What is this?"}, ...],
                    "images": ["images/cat.png"], "_src": "data/train.jsonl:1", "_images_dir": "/abs/data"}
    image_problems(examples[0])   # [("image not found", "image 1 (images/cat.png): file not found: ...")] or []
    image_key(examples[0])        # ["sha256:..."]: what deduplication compares, cached per file
    keep_placeholders("<p><image>Hi</p>", normalizer)   # "<image>Hi": placeholders never move, vanish or appear

Rows are read as `sftlab train` reads them for vision-language models (`sftlab.vision.data.to_multimodal`, with
its checks of roles and of `<image>` placeholders against images), but images are neither located nor opened
here: "images" keeps each entry as the row gives it (a path relative to the data file, an absolute path, a
`file://` or `data:` URL) and `_images_dir` the data file's directory, so that `sftlab.datawork.imagewrite` can
write the entries back so they still resolve from the output's directory. A file is image+text data when any of
its rows has images; then every row is read so (as the trainer reads it), rows without images get "images": [].
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.vision.data import IMAGE_PLACEHOLDER, image_reference, locate_image, open_image, to_multimodal

PLACEHOLDER = IMAGE_PLACEHOLDER
# Stands for a placeholder while a text is edited: a private-use character, which NFKC, HTML stripping, control
# character removal, whitespace collapsing, OpenCC, PII patterns and the word splitters all leave alone.
MARK = "\ue010"
IMAGE_FORMATS = ("auto", "sharegpt", "messages")
_TOOL_ROLES = ("tool", "observation", "function_call")
_HASHES: dict[tuple, str] = {}
_CHECKS: dict[tuple, tuple[str, str] | None] = {}


def is_image_row(row: dict) -> bool:
    """True when a data row carries images: a non-empty `images` list (or one entry beside a conversation), or
    OpenAI `image_url` / `image` content parts."""
    turns = next((row[key] for key in ("messages", "conversations") if isinstance(row.get(key), list)), None)
    images = row.get("images")
    if isinstance(images, list) and images or not isinstance(images, list) and images and turns is not None:
        return True
    return any(_has_image_part(turn) for turn in turns or [])


def _has_image_part(turn) -> bool:
    content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
    return isinstance(content, list) and any(isinstance(part, dict) and part.get("type") in ("image_url", "image")
                                             for part in content)


def has_images(example: dict) -> bool:
    """True for an example read from image+text data (`read_image_examples`), with or without images."""
    return "images" in example


def read_image_examples(rows: list[dict], path: str | Path, fmt: str = "auto", stage: str | None = None,
                        columns: dict | None = None,
                        options: tuple[str, str] = ("--format", "--columns")) -> list[dict]:
    """The rows of an image+text data file as canonical examples with their image entries (see the module
    docstring); fields the vision reader does not read (an `id`, metadata) go under `_extra`. Errors name the
    row's file:line and, for options image+text data cannot take, the option (`options`: format, columns)."""
    check_image_options(rows, fmt, stage, columns, options)
    base = images_dir(path)
    return [image_example(row, base) for row in rows]


def images_dir(path: str | Path) -> Path:
    """The absolute directory of a data file, against which its relative image paths resolve."""
    return Path(os.path.abspath(Path(path).parent))


def check_image_options(rows: list[dict], fmt: str, stage: str | None, columns: dict | None,
                        options: tuple[str, str] = ("--format", "--columns")) -> None:
    """Fail, naming the first image+text row and the option, when `fmt`, `columns` or `stage` cannot read it."""
    first = next(row for row in rows if is_image_row(row))["_src"]
    if fmt not in IMAGE_FORMATS:
        raise SftlabError(f"{first}: an image+text row; it is read as a sharegpt or messages record, not as "
                          f"{options[0]} {fmt} (use auto)")
    if columns:
        raise SftlabError(f"{first}: an image+text row; {options[1]} is not supported for image+text data "
                          "(records use messages or conversations and images, as sftlab train reads them)")
    if stage not in (None, "sft"):
        raise SftlabError(f"{first}: an image+text row is sft data; --stage {stage} cannot read it")


def image_example(row: dict, base_dir: Path) -> dict:
    """One row as a canonical example with "images" (entries as given) and `_images_dir`; tool data is refused."""
    src = row.get("_src", "row")
    _refuse_tool_data(row, src)
    example = to_multimodal(row, base_dir, resolve=False)
    example["images"] = [image_reference(entry, src) for entry in example["images"]]
    example["_images_dir"] = str(base_dir)
    turns = "messages" if isinstance(row.get("messages"), list) else "conversations"
    extra = {key: value for key, value in row.items()
             if not key.startswith("_") and key not in (turns, "system", "images")}
    return example | ({"_extra": extra} if extra else {})


def _refuse_tool_data(row: dict, src: str) -> None:
    turns = [turn for key in ("messages", "conversations") for turn in (row.get(key) or []) if isinstance(turn, dict)]
    if row.get("tools") or any(turn.get("tool_calls") or turn.get("role", turn.get("from")) in _TOOL_ROLES
                               for turn in turns):
        raise SftlabError(f"{src}: an image+text row with tools or tool calls; sftlab trains image+text data "
                          "without them, so the data commands refuse the row rather than drop its tool data")


def locations(example: dict) -> list[str | None]:
    """Where each image of `example` is (a path or a data URL); None for a web URL (never opened)."""
    if not example.get("images"):
        return []
    base, src = Path(example.get("_images_dir", ".")), example.get("_src", "example")
    out: list[str | None] = []
    for entry in example.get("images") or []:
        try:
            out.append(locate_image(entry, base, src))
        except SftlabError:
            out.append(None)
    return out


def image_problems(example: dict) -> list[tuple[str, str]]:
    """(kind, detail) for every image of `example` that training could not open: "image not a local file" (a web
    URL), "image not found", "image unreadable" (PIL cannot decode it, or refuses it as a decompression bomb,
    through `sftlab.vision.data.open_image`). Results are cached per file (size and modification time)."""
    problems = []
    for number, (entry, location) in enumerate(zip(example.get("images") or [], locations(example)), start=1):
        what = f"image {number} ({entry if len(entry) <= 60 else entry[:57] + '...'})"
        if location is None:
            problems.append(("image not a local file", f"{what}: a web URL; training reads local files only"))
            continue
        found = _check(location)
        if found is not None:
            problems.append((found[0], f"{what}: {found[1]}"))
    return problems


def _check(location: str) -> tuple[str, str] | None:
    if location.startswith("data:"):
        key: tuple = (location,)
    else:
        try:
            stat = os.stat(location)
        except OSError:
            return "image not found", f"file not found: {location}"
        key = (os.path.realpath(location), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKS:
        try:
            open_image(location if location.startswith("data:") else key[0], "image")
            _CHECKS[key] = None
        except SftlabError as exc:
            _CHECKS[key] = ("image unreadable", str(exc).removeprefix("image: "))
    return _CHECKS[key]


def image_key(example: dict) -> list[str]:
    """What deduplication compares of an example's images, in order: `sha256:` of each image's bytes (a file's
    contents, a data URL's decoded payload), so one image under two paths is the same image and two files at
    one path in two directories are not; `missing:PATH` for a file that is not there, `url:URL` for a web URL."""
    keys = []
    for entry, location in zip(example.get("images") or [], locations(example)):
        keys.append(f"url:{entry}" if location is None else content_hash(location))
    return keys


def content_hash(location: str) -> str:
    """`sha256:HEX` of an image's bytes (cached per real path, size and modification time)."""
    if location.startswith("data:"):
        header, _, payload = location.partition(",")
        try:
            data = base64.b64decode(payload, validate=True) if ";base64" in header else payload.encode("utf-8")
        except (binascii.Error, ValueError):
            data = location.encode("utf-8")
        return "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        stat = os.stat(location)
    except OSError:
        return f"missing:{os.path.abspath(location)}"
    key = (os.path.realpath(location), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        try:
            with open(key[0], "rb") as handle:
                _HASHES[key] = "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            return f"missing:{os.path.abspath(location)}"
    return _HASHES[key]


def keep_placeholders(text: str, fn) -> str:
    """`fn(text)` with every `<image>` placeholder kept as and where it is: each stands as `MARK` while `fn` runs.
    When `fn` would lose or add a mark, or make a new `<image>` (from `&lt;image&gt;` or full-width letters), the
    text is returned unchanged, so the placeholders always match the images."""
    if MARK in text:
        return text
    masked = text.replace(PLACEHOLDER, MARK)
    out = fn(masked)
    if out.count(MARK) != masked.count(MARK) or PLACEHOLDER in out:
        return text
    return out.replace(MARK, PLACEHOLDER)


def strip_placeholders(text: str) -> str:
    """`text` without its `<image>` placeholders (what the language mix reads)."""
    return text.replace(PLACEHOLDER, " ").strip() if PLACEHOLDER in text else text


def refuse_images(items: list[dict], what: str) -> None:
    """Fail with one line naming the first image+text row or example of `items` (`is_image_row`: rows as read, or
    canonical examples) when `what`, a command or an option, cannot take image+text data."""
    first = next((item for item in items if is_image_row(item)), None)
    if first is not None:
        raise SftlabError(f"{first.get('_src', 'row')}: an image+text row; {what}")


def first_with_images(examples: list[dict]) -> dict | None:
    """The first example that has at least one image, or None."""
    return next((example for example in examples if example.get("images")), None)
