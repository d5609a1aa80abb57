"""Load a run config from YAML plus dotted command-line overrides, with one-line errors.

    cfg = load_config("run.yaml", ["train.lr=2e-5", "strategy.kind=lora"])

Unknown keys fail with a "did you mean" suggestion: the sftlab key for a name LLaMA-Factory or TRL use
(resources/peer_names.yaml; such a key is reported before any other problem, so that another tool's config is
answered by its names), the keys of that name in other groups, or the closest spelling; wrong types name the
key and the expected type; a key given twice in the YAML file is an error naming both lines
(`sftlab.io.read_yaml_mapping`; YAML would keep the last one silently).
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

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
        peers = [err for err in errors if err.get("type") == "extra_forbidden" and _peer_key(err)]
        if peers:  # another tool's config (no model group, say): its names first, not "missing required key 'model'"
            more = f"; {len(peers) - 1} more LLaMA-Factory/TRL name(s) in it" if len(peers) > 1 else ""
            raise SftlabError(f"{source}: {describe_error(peers[0])}{more}") from None
        raise SftlabError(f"{source}: {describe_error(deepest)}") from None


def _peer_key(err: dict) -> str | None:
    """The last key of an unknown-key error's location when it is another tool's name (resources/peer_names.yaml)."""
    loc = [str(part) for part in err.get("loc", ()) if not _union_member(part)]
    return loc[-1] if loc and loc[-1] in peer_names() else None


def _union_member(part) -> bool:
    """Whether a pydantic error location part names a union member ('str', 'list[int]', 'DatasetSpec'), not a key."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part or part[:1].isupper())


def describe_error(err: dict) -> str:
    """Turn one pydantic error into 'key: message', with a suggestion for unknown keys."""
    loc = [str(part) for part in err.get("loc", ()) if not _union_member(part)]
    key = ".".join(loc) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown key {key!r}" + _suggestion(loc, err.get("input"))
    if kind == "missing":
        return f"missing required key {key!r}"
    if kind == "list_type" and isinstance(err.get("input"), str):  # LLaMA-Factory's `all`, a comma string `a,b`
        return _list_hint(key, loc, err["input"])
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


def _list_hint(key: str, loc: list[str], text: str) -> str:
    """'key: got 'q_proj,v_proj'; write a YAML list ([q_proj, v_proj])' for a string where a list is expected."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    modules = loc[-1:] == ["target_modules"]
    example = ", ".join(items) if len(items) > 1 or not modules else "q_proj, v_proj"
    what = "all-linear or a YAML list of module names" if modules else "a YAML list"
    return f"{key}: got {text!r}; write {what} ([{example}])"


class PeerName(BaseModel):
    """One entry of resources/peer_names.yaml: another tool's config name -> the sftlab key for it."""

    model_config = ConfigDict(extra="forbid")
    key: str
    tools: list[Literal["LLaMA-Factory", "TRL"]]
    note: str | None = None


@functools.cache
def peer_names() -> dict[str, PeerName]:
    """LLaMA-Factory and TRL config names with their sftlab keys (resources/peer_names.yaml)."""
    text = resources.files("sftlab").joinpath("resources", "peer_names.yaml").read_text(encoding="utf-8")
    return {name: PeerName.model_validate(entry) for name, entry in yaml.safe_load(text).items()}


def _peer_suggestion(name: str) -> str:
    """'; did you mean 'train.max_length'? (sftlab's name for LLaMA-Factory's cutoff_len; docs/migrating.md)' for
    another tool's name `name`, else ''."""
    peer = peer_names().get(name)
    if peer is None:
        return ""
    tools = " and ".join(f"{tool}'s" for tool in peer.tools)
    note = f"; {peer.note}" if peer.note else ""
    return f"; did you mean {peer.key!r}? (sftlab's name for {tools} {name}{note}; docs/migrating.md)"


def _keys_named(name: str, model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """The dotted keys of the run config's groups (and their sub-groups, strategy.lora...) that end in `name`:
    ['train.lr'] for `lr`, ['strategy.lora.rank'] for `rank`."""
    found = []
    for field_name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found += [f"{prefix}{field_name}.{name}"] * (name in sub.model_fields)
            found += _keys_named(name, sub, f"{prefix}{field_name}.")
    return found


def _suggestion(loc: list[str], value: Any = None) -> str:
    """Suggest what an unknown key meant: the sftlab key for another tool's name, the keys of that name in other
    groups, else the closest known field of the model it sat in (a group only for a mapping `value`: `do_train: true`
    is no misspelt `train` group)."""
    if peer := _peer_suggestion(loc[-1]):
        return peer
    if elsewhere := _keys_named(loc[-1]):
        return f"; did you mean {' or '.join(map(repr, elsewhere))}?"
    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        if part.isdigit() and model is not None:  # a list item (data.train.1): the model found for the list
            continue
        field = model.model_fields.get(part) if model else None
        model = _model_in(field.annotation) if field else None
    if model is None:
        return ""
    close = closest_field(model, loc[-1])
    if close and (model is not RunConfig or isinstance(value, dict)):
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
