"""The new-run form: fields -> an ordinary run config (YAML), checked exactly as the CLI checks it.

    raw, cfg = form_to_config(fields, run_dir)     # SftlabError from validate_config on a bad choice
    field = error_field(str(error))               # which form field an error message belongs to

The YAML holds only what the form set (plus `output.dir`), so `sftlab train RUNS/NAME.yaml` trains the
same run. Errors come from `sftlab.config.validate_config`, `resolve_model_path` and the data pipeline,
so the board shows the CLI's own one-line messages, next to the field they name. A `.gguf` model is checked, not
converted, by Check and Launch (`check_gguf`): training converts it.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from sftlab.config.load import apply_override, validate_config
from sftlab.errors import SftlabError

# The form's fields, by the config key they set (the element ids in the page use the same names).
FIELDS = [
    "model.path", "data.train", "data.validation", "data.registry", "data.val_ratio", "data.format", "data.template",
    "data.mask", "train.stage", "strategy.kind", "strategy.freeze.layers", "strategy.lora.rank", "strategy.auto.budget",
    "train.max_steps", "train.epochs", "train.batch_size", "train.grad_accum", "train.lr", "train.max_length",
    "train.precision", "eval.every_n_steps", "eval.metric", "eval.mode",
]
PATH_FIELDS = {"model.path", "data.train", "data.validation", "data.registry"}
STRATEGY_FIELDS = {"strategy.freeze.layers": "freeze", "strategy.lora.rank": "lora", "strategy.auto.budget": "auto"}
_CONFIG_KEY = re.compile(r"^[^:]*: (?:unknown key |missing required key )?'?([A-Za-z_][\w.]*)'?")


def absolute_path(value: str, base: Path) -> str:
    """A path typed relative to the board's working directory, made absolute (bare names are kept as typed)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    looks_like_file = "/" in value or path.suffix != ""  # a bare word may be a registry or embedded model name
    return str((base / path).resolve()) if (base / path).exists() or looks_like_file else value


def form_to_raw(fields: dict[str, str], run_dir: Path, cwd: Path) -> dict:
    """The nested config dict for the form's non-empty fields, the extra `key=value` lines and output.dir."""
    raw: dict = {}
    kind = (fields.get("strategy.kind") or "full").strip()
    for key in FIELDS:
        value = str(fields.get(key, "") or "").strip()
        if not value or STRATEGY_FIELDS.get(key, kind) != kind:
            continue  # only the chosen strategy's own setting is written
        if key in PATH_FIELDS:
            _set(raw, key, absolute_path(value, cwd))  # kept as text: a path is never parsed as YAML
        elif key == "strategy.freeze.layers":
            _set(raw, key, value)
        else:
            apply_override(raw, f"{key}={value}")  # numbers and booleans parsed as YAML, as on the command line
    for number, line in enumerate(str(fields.get("extra", "") or "").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                apply_override(raw, line.strip())
            except SftlabError as exc:
                raise SftlabError(f"extra line {number}: {exc}") from None
    raw.setdefault("output", {})["dir"] = str(run_dir)
    raw["output"].setdefault("tensorboard", False)
    return raw


def _set(raw: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    if key == "strategy.freeze.layers" and re.fullmatch(r"\s*\[.*\]\s*", value):
        value = yaml.safe_load(value)
    node[last] = value


def typed(raw: dict, cfg) -> dict:
    """`raw` with every value replaced by the validated config's (typed) value for the same key."""
    dumped = cfg.model_dump(mode="json")

    def walk(node: dict, resolved: dict) -> dict:
        return {key: walk(value, resolved.get(key, {})) if isinstance(value, dict) and isinstance(resolved.get(key), dict)
                else resolved.get(key, value) for key, value in node.items()}

    return walk(raw, dumped)


def form_to_config(fields: dict[str, str], run_dir: Path, cwd: Path):
    """(YAML text, RunConfig) for the form, or SftlabError with the CLI's message."""
    raw = form_to_raw(fields, run_dir, cwd)
    cfg = validate_config(raw, "config")
    text = yaml.safe_dump(typed(raw, cfg), sort_keys=False, allow_unicode=True)
    return text, cfg


def check_sources(cfg) -> list[str]:
    """Fail as training would on a model path, or a data file given as a path, that is not there (embedded model
    names are resolved at train time; bare data names may be registry or built-in datasets). A `.gguf` model file is
    only checked (it exists and starts with the GGUF magic bytes), never converted here: converting a real model takes
    minutes, and training converts it when the run starts. Returns notes for the user (what happens at launch)."""
    from sftlab.models import pull
    from sftlab.models.load import resolve_model_path

    notes = []
    path = cfg.model.path
    local = Path(path).expanduser()
    if local.suffix.lower() == ".gguf" and not local.is_dir():
        notes.append(check_gguf(path))
    elif path not in pull.EMBEDDED:
        resolve_model_path(path)
    items = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
    for key, item in [("data.train", item) for item in items] + [("data.validation", cfg.data.validation)]:
        path = item if isinstance(item, str) or item is None else item.path
        if path and Path(path).is_absolute() and not Path(path).exists():
            raise SftlabError(f"{key}: data file not found: {path}")
    return notes


GGUF_MAGIC = b"GGUF"


def check_gguf(path: str, key: str = "model.path") -> str:
    """SftlabError unless `path` is a readable file starting with the GGUF magic bytes; else the note saying that
    `sftlab train` converts it when the run starts (`sftlab.models.load.resolve_model_path`: once, then cached)."""
    from sftlab.models.load import sftlab_home

    local = Path(path).expanduser()
    if not local.is_file():
        raise SftlabError(f"{key} {path!r}: GGUF file not found")
    try:
        with local.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise SftlabError(f"{key} {path!r}: cannot read the GGUF file: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise SftlabError(f"{key} {path!r}: not a GGUF file (it does not start with the bytes 'GGUF')")
    return (f"{key} {path!r} is a GGUF file: it is not converted now; the run converts it when training starts "
            f"(minutes for a large model), once, into {sftlab_home() / 'models' / 'gguf'}, where later runs find it")


def error_field(message: str) -> str:
    """The form field an error belongs to: the config key it names, else 'extra' or '_form'."""
    text = message.removeprefix("error: ")
    if text.startswith("extra line"):
        return "extra"
    if text.startswith("run name"):
        return "name"
    match = _CONFIG_KEY.match(text) if text.startswith("config:") else None
    key = match.group(1) if match else ""
    if not key:
        key = next((field for field in sorted(FIELDS, key=len, reverse=True) if field in text), "")
    if not key and re.match(r"data\b", text):  # data file errors, not "database ..."
        key = "data.train"
    for field in sorted(FIELDS, key=len, reverse=True):
        if key == field or key.startswith(field + "."):
            return field
    return "extra" if key and "." in key else "_form"
