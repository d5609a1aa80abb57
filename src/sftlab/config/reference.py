"""The configuration reference as Markdown, generated from the typed config models.

`docs/train.md` embeds this table between markers; a test keeps the two equal, so the documented keys,
types and defaults are always the ones the code accepts. Regenerate with
`python -m sftlab.config.reference docs/train.md`.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from sftlab.config.load import _model_in
from sftlab.config.schema import RunConfig

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # the schema's strict Int and Bool
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(arg).replace("'", "") for arg in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        text = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type_name(annotation)} | `{default}` | {text} |")
        item_model = _model_in(annotation)  # list items that are mappings of their own (data.train's DatasetSpec)
        if item_model is not None:
            rows += _rows(item_model, f"{prefix}{name}[].")
    return rows


def markdown_reference() -> str:
    """One table per config group: key, type, default, meaning."""
    parts = []
    for group, field in RunConfig.model_fields.items():
        model = field.annotation
        parts.append(f"### `{group}`: {model.__doc__.strip().splitlines()[0]}\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        parts.extend(_rows(model, f"{group}."))
        parts.append("")
    return "\n".join(parts)


def embed(doc: str) -> str:
    """`doc` with the text between the reference markers replaced by the current reference."""
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{markdown_reference()}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_text(embed(path.read_text(encoding="utf-8")), encoding="utf-8")
