"""Image+text records -> canonical multimodal examples, with every image resolved and checked up front.

    train, val = load_vision_examples(cfg.data, base_dir=Path("configs"))
    train[0] == {"messages": [{"role": "user", "content": "<image>Describe this image."},
                              {"role": "assistant", "content": "A cup of coffee."}],
                 "images": ["/abs/path/images/coffee.png"], "_src": "captions.json:2[#0]"}

Accepted records (JSON / JSONL, read by `sftlab.data.readers`, so every error names file:line):
- ShareGPT / LLaMA-Factory `mllm_demo` layout: `messages` or `conversations` turns (`role`/`content` or
  `from`/`value`) whose text holds `<image>` placeholders, and an `images` list of paths relative to the data
  file (absolute paths and `file://` URLs work too; a `data:image/...;base64,` URL is kept as is).
- OpenAI messages: `content` as a list of parts, `{"type": "text", "text": ...}` and
  `{"type": "image_url", "image_url": {"url": PATH_OR_DATA_URL}}` (or `{"type": "image", "image": PATH}`);
  each image part becomes an `<image>` placeholder at its place, in order.

Checks (all before any training step; one-line `SftlabError` naming the record's file:line): the number of
`<image>` placeholders equals the number of images; images appear in system/user turns only (image tokens are
never supervised); every image exists and PIL can decode it; http(s) images are refused (offline). Records
without images are allowed (text-only turns train the language model). `data.registry` entries (LLaMA-Factory
`dataset_info.json`, `formatting: sharegpt`, with an `images` column) are read the same way.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from sftlab.data.formats import ROLES, SHAREGPT_ROLES
from sftlab.data.readers import read_rows
from sftlab.data.sources import config_registry, mix_datasets, split_validation, train_items
from sftlab.errors import SftlabError

IMAGE_PLACEHOLDER = "<image>"


def image_reference(value, src: str) -> str:
    """An image entry as the string it names: the entry itself, or the `url` / `path` of a {"url": ...} object."""
    if isinstance(value, dict):  # {"url": ...} or {"path": ...}
        value = value.get("url") or value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise SftlabError(f"{src}: an image must be a path or a data URL, got {value!r}")
    return value.strip()


def locate_image(value, base_dir: Path, src: str) -> str:
    """Where an image reference points, without opening it: a data URL as it is, else the path (`file://` URLs
    and `~` expanded, a relative path joined to `base_dir`); an http(s) URL is a SftlabError naming `src`."""
    value = image_reference(value, src)
    if value.startswith("data:"):
        return value
    scheme = urlparse(value).scheme
    if scheme in ("http", "https"):
        raise SftlabError(f"{src}: image {value!r} is a web URL; this machine is offline, give a local file path")
    path = Path(unquote(urlparse(value).path)) if scheme == "file" else Path(value).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


def resolve_image(value, base_dir: Path, src: str) -> str:
    """An image reference as an absolute path (or a data URL), after checking it exists and decodes."""
    located = locate_image(value, base_dir, src)
    if located.startswith("data:"):
        open_image(located, src)
        return located
    path = Path(located)
    if not path.is_file():
        raise SftlabError(f"{src}: image file not found: {path}")
    open_image(str(path.resolve()), src)
    return str(path.resolve())


def open_image(reference: str, src: str = "image"):
    """Decode an image (absolute path or data URL) to an RGB PIL image; unreadable -> SftlabError naming `src`."""
    from PIL import Image, UnidentifiedImageError

    try:
        if reference.startswith("data:"):
            header, _, payload = reference.partition(",")
            if ";base64" not in header:
                raise SftlabError(f"{src}: data URL images must be base64 encoded ({header[:40]}...)")
            source = io.BytesIO(base64.b64decode(payload, validate=True))
        else:
            source = reference
        with Image.open(source) as image:
            image.load()
            return image.convert("RGB")
    # PIL's guard against decompression bombs (an image far larger than any model input) is an Exception, not an
    # OSError: caught here so that such a file is a one-line error, never a traceback
    except (UnidentifiedImageError, OSError, binascii.Error, ValueError, Image.DecompressionBombError) as exc:
        shown = reference if len(reference) < 80 else reference[:60] + "..."
        raise SftlabError(f"{src}: cannot read image {shown!r} ({type(exc).__name__}: {str(exc)[:80]})") from None


def _text_of_parts(parts: list, src: str, where: str, images: list) -> str:
    """OpenAI content parts -> text with `<image>` placeholders; image references are appended to `images`."""
    pieces = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind == "image_url":
            images.append(part.get("image_url"))
            pieces.append(IMAGE_PLACEHOLDER)
        elif kind == "image":
            images.append(part.get("image") or part.get("url") or part.get("path"))
            pieces.append(IMAGE_PLACEHOLDER)
        else:
            raise SftlabError(f"{src}: {where}.content[{j}] must be a text, image_url or image part, got {part!r:.60}")
    return "".join(pieces)


def _turns(row: dict, tags: dict) -> tuple[str, list]:
    for key in (tags.get("messages_column"), "messages", "conversations"):
        if key and isinstance(row.get(key), list):
            return key, row[key]
    keys = [key for key in row if not key.startswith("_")]
    raise SftlabError(f"{row.get('_src', 'row')}: an image+text record needs a 'messages' or 'conversations' list; "
                      f"the row has {keys}")


def to_multimodal(row: dict, base_dir: Path, tags: dict | None = None, resolve: bool = True) -> dict:
    """One record -> {"messages": [{"role", "content": str with <image>}], "images": [absolute refs], "_src"}.

    `resolve=False` checks the record's shape (roles, placeholders against images) but neither locates nor
    opens its images: "images" holds the entries as the record gives them (`sftlab.datawork` checks them)."""
    tags = tags or {}
    src = row.get("_src", "row")
    key, turns = _turns(row, tags)
    roles = dict(SHAREGPT_ROLES)
    roles.update({tags[name]: role for name, role in (("user_tag", "user"), ("assistant_tag", "assistant"),
                                                       ("system_tag", "system")) if tags.get(name)})
    part_images: list = []
    messages = []
    if isinstance(row.get("system"), str) and row["system"]:
        messages.append({"role": "system", "content": row["system"]})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise SftlabError(f"{src}: {key}[{i}] must be an object")
        tag = turn.get(tags.get("role_tag") or ("role" if "role" in turn else "from"))
        content = turn.get(tags.get("content_tag") or ("content" if "content" in turn else "value"))
        if tag not in roles:
            raise SftlabError(f"{src}: {key}[{i}] has unknown role {tag!r}; expected one of {sorted(roles)}")
        if isinstance(content, list):
            content = _text_of_parts(content, src, f"{key}[{i}]", part_images)
        if not isinstance(content, str):
            raise SftlabError(f"{src}: {key}[{i}] content must be a string or a list of parts")
        role = roles[tag]
        if role == "assistant" and IMAGE_PLACEHOLDER in content:
            raise SftlabError(f"{src}: {key}[{i}] is an assistant turn with an image; images may only be in "
                              "system or user turns (image tokens are never supervised)")
        messages.append({"role": role, "content": content})
    listed = row.get(tags.get("images_column") or "images") or []
    if not isinstance(listed, list):
        listed = [listed]
    if part_images and listed:
        raise SftlabError(f"{src}: images given both as content parts and in an 'images' list; use one of them")
    references = part_images or listed
    placeholders = sum(message["content"].count(IMAGE_PLACEHOLDER) for message in messages)
    if placeholders != len(references):
        raise SftlabError(f"{src}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(references)} image(s); "
                          f"every image needs exactly one {IMAGE_PLACEHOLDER} in the text")
    _check_roles(messages, src)
    if not resolve:
        return {"messages": messages, "images": list(references), "_src": src}
    images = [resolve_image(reference, base_dir, src) for reference in references]
    return {"messages": messages, "images": images, "_src": src}


def _check_roles(messages: list[dict], src: str) -> None:
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise SftlabError(f"{src}: turn {i} has role {message['role']!r}; expected one of {list(ROLES)}")
        if message["role"] == "system" and i != 0:
            raise SftlabError(f"{src}: a system message may only come first (found at turn {i})")
    if not any(m["role"] == "user" for m in messages) or not any(m["role"] == "assistant" for m in messages):
        raise SftlabError(f"{src}: a conversation needs at least one user and one assistant message")


def read_vision_file(path: Path, tags: dict | None = None) -> list[dict]:
    """Every record of one data file as a canonical multimodal example (image paths relative to the file)."""
    return [to_multimodal(row, path.parent, tags) for row in read_rows(path)]


def _registry_tags(name: str, entry: dict) -> tuple[str, dict]:
    if entry.get("formatting", "alpaca") != "sharegpt":
        raise SftlabError(f"registry entry {name!r}: image+text data must use formatting 'sharegpt'")
    columns = entry.get("columns") or {}
    tags = dict(entry.get("tags") or {})
    tags["messages_column"] = columns.get("messages", "conversations")
    tags["images_column"] = columns.get("images", "images")
    if "file_name" not in entry:
        raise SftlabError(f"registry entry {name!r} has no file_name; sftlab reads local files only")
    return entry["file_name"], tags


def _resolve(item, data_cfg, base: Path | None, registry: dict | None, registry_dir: Path | None) -> list[dict]:
    path_text = item if isinstance(item, str) else item.path
    from sftlab.data.sources import data_files_in

    if registry is not None and path_text in registry:
        file_name, tags = _registry_tags(path_text, registry[path_text])
        files = data_files_in(f"registry entry {path_text!r}", registry_dir / file_name)
        return [example for file in files for example in read_vision_file(file, tags)]
    path = Path(path_text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists():
        raise SftlabError(f"data file not found: {path}")
    return [example for file in data_files_in(f"data: {path_text!r}", path) for example in read_vision_file(file)]


def load_vision_examples(data_cfg, base_dir: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """Train and validation multimodal examples: files or registry names, mixed by weight, split like text data."""
    base = Path(base_dir) if base_dir is not None else None
    specs = [item for item in (data_cfg.train if isinstance(data_cfg.train, list) else []) if not isinstance(item, str)]
    if data_cfg.format not in ("auto", "sharegpt", "messages") or any(spec.format for spec in specs):
        raise SftlabError(f"data.format {data_cfg.format!r}: image+text data is read as sharegpt or messages records")
    if data_cfg.columns or any(spec.columns for spec in specs):
        raise SftlabError("data.columns: not supported for image+text data (records use messages/conversations "
                          "and images; a registry entry's columns work)")
    registry, registry_dir = config_registry(data_cfg, base)
    items = train_items(data_cfg)
    parts = [(_resolve(item, data_cfg, base, registry, registry_dir), getattr(item, "weight", 1.0)) for item in items]
    train = mix_datasets(parts, data_cfg.seed)
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    validation: list[dict] = []
    if data_cfg.validation:
        validation = _resolve(data_cfg.validation, data_cfg, base, registry, registry_dir)
    elif data_cfg.val_ratio > 0:
        train, validation = split_validation(train, data_cfg.val_ratio, data_cfg.split, data_cfg.seed)
    return train, validation
