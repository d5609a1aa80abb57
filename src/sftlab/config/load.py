"""Load a run config from YAML plus dotted command-line overrides, with one-line errors.

    cfg = load_config("run.yaml", ["train.lr=2e-5", "strategy.kind=lora"])

Unknown keys fail with a "did you mean" suggestion; wrong types name the key and the expected type; a key given
twice in the YAML file is an error naming both lines (`sftlab.io.read_yaml_mapping`; YAML would keep the last one
silently).
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sftlab.config.schema import RunConfig
from sftlab.errors import SftlabError
from sftlab.io import read_yaml_mapping


def load_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Read YAML at `path` (or start from `base`), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = copy.deepcopy(base or {})  # overrides set nested keys: never in the caller's dict
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if path.is_dir():
            raise SftlabError(f"{path}: a directory, not a run config file")
        if not path.is_file():
            raise SftlabError(f"config file not found: {path}")
        raw.update(read_yaml_mapping(path, "a mapping of groups (model, data, ...)"))
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source)


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in the nested dict `raw`; the value is parsed as YAML (numbers, lists, null)."""
    key, equals, text = item.partition("=")
    parts = key.strip().split(".")
    if not equals or not all(part.strip() for part in parts):
        raise SftlabError(f"override {item!r} must look like key.sub=value")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = text


def validate_config(raw: dict, source: str = "config") -> RunConfig:
    """Validate a nested dict into a RunConfig, raising the first problem as a one-line SftlabError."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()  # a union (data.train: str or list) fails once per member: the deepest error is the real one
        deepest = max(errors, key=lambda err: len([part for part in err.get("loc", ()) if not _union_member(part)]))
        raise SftlabError(f"{source}: {describe_error(deepest)}") from None


def _union_member(part) -> bool:
    """Whether a pydantic error location part names a union member ('str', 'list[int]', 'DatasetSpec'), not a key."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part or part[:1].isupper())


def describe_error(err: dict) -> str:
    """Turn one pydantic error into 'key: message', with a suggestion for unknown keys."""
    loc = [str(part) for part in err.get("loc", ()) if not _union_member(part)]
    key = ".".join(loc) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown key {key!r}" + _suggestion(loc)
    if kind == "missing":
        return f"missing required key {key!r}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        close = difflib.get_close_matches(str(err.get("input")), choices, n=1, cutoff=0.8)  # typos, not other tools
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key}: got {err.get('input')!r}, expected one of {expected}{hint}"
    if kind in {"model_type", "dict_type"}:  # a group or mapping given as a scalar or list (`model: x`)
        return f"{key}: expected a mapping of keys, got {err.get('input')!r}"
    message = err.get("msg", "invalid value").removeprefix("Value error, ")
    if "input" in err and kind not in {"value_error", "assertion_error"}:
        return f"{key}: {message} (got {err['input']!r})"
    return f"{key}: {message}" if loc else message


def _suggestion(loc: list[str]) -> str:
    """Find the model the unknown key sat in and suggest the closest known field."""
    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        if part.isdigit() and model is not None:  # a list item (data.train.1): the model found for the list
            continue
        field = model.model_fields.get(part) if model else None
        model = _model_in(field.annotation) if field else None
    if model is None:
        return ""
    close = closest_field(model, loc[-1])
    if close:
        return f"; did you mean {'.'.join(loc[:-1] + [close])!r}?"
    return f"; known keys here: {', '.join(model.model_fields)}"


def closest_field(model: type[BaseModel], name: str) -> str | None:
    """The field of `model` an unknown key `name` most likely meant, or None (run configs and serve settings)."""
    close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.5)
    return close[0] if close else None


def _model_in(annotation) -> type[BaseModel] | None:
    """The config model an annotation holds: itself, or one inside a union or list (`str | list[str | DatasetSpec]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, written next to every output."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
