"""Where examples come from: files or registry names, mixed by weight, split into train and validation.

    train, val = load_examples(cfg.data, stage="sft", base_dir=Path("configs"))

A registry is a LLaMA-Factory `dataset_info.json` (data.registry names the file or the directory holding it):
name -> {file_name, formatting (alpaca|sharegpt), columns {prompt, query, response, history, system, messages,
tools (sharegpt)}, tags {role_tag, content_tag, user_tag, assistant_tag, system_tag, observation_tag, function_tag}}.
`file_name` is relative to the registry's directory and may be a directory of data files. An alpaca entry whose
columns name only `prompt` (LLaMA-Factory's pretraining layout: wiki_demo, c4_demo) is text for stage pt. Entries
that need the network or other stages (hf_hub_url; ranking, chosen/rejected or kto_tag: preference data; images,
videos, audios) fail with an error naming the entry.

Mixing: every dataset in `data.train` contributes round(weight * size) examples (weight 1 = the whole
set once, 0.5 = a seeded random half, 2.5 = two full copies plus a seeded random half); the mixture is
then shuffled with `data.seed`. `data.max_samples` keeps the first N of the shuffled mixture. Without
`data.validation`, `data.val_ratio` holds out a random or (for labelled data) stratified share of what
is left, using scikit-learn's `train_test_split` seeded with `data.seed`.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from pathlib import Path

from sftlab.config.schema import DataConfig, DatasetSpec
from sftlab.data.formats import to_canonical
from sftlab.data.readers import READ_EXTENSIONS, read_rows
from sftlab.errors import SftlabError

# LLaMA-Factory's alpaca column names -> sftlab's alpaca field names.
_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
_LF_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system"}
_LF_SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
_TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag", "observation_tag", "function_tag")
_REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_MEDIA_COLUMNS = ("images", "videos", "audios")
_ENTRY_KEYS = {"file_name", "formatting", "columns", "tags", "ranking", "split", "num_samples", "file_sha1", "load_from"}


def load_registry(path: str | Path) -> dict[str, dict]:
    """Read a dataset_info.json-style registry (name -> entry): the file, or a directory holding dataset_info.json."""
    path = registry_file(path)
    if not path.is_file():
        raise SftlabError(f"data.registry: file not found: {path}")
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SftlabError(f"{path}: not a valid JSON registry ({exc})") from None
    if not isinstance(registry, dict) or not all(isinstance(v, dict) for v in registry.values()):
        raise SftlabError(f"{path}: a registry must map dataset names to objects")
    return registry


def registry_file(path: str | Path) -> Path:
    """`path`, or the dataset_info.json in it when `path` is a directory (LLaMA-Factory's dataset_dir)."""
    path = Path(path)
    return path / "dataset_info.json" if path.is_dir() and (path / "dataset_info.json").is_file() else path


def registry_source(name: str, entry: dict, registry_dir: Path,
                    stage: str = "sft") -> tuple[list[Path], str, dict[str, str], dict[str, str]]:
    """Translate one registry entry to (files, format, columns, tags) for `stage`, refusing what sftlab cannot load
    (an alpaca entry whose columns name only `prompt` is pretraining text, as in LLaMA-Factory: stage pt only)."""
    where = f"registry entry {name!r}"
    remote = [key for key in _REMOTE_KEYS if key in entry]
    if remote and "file_name" not in entry:
        raise SftlabError(f"{where} uses {remote[0]}; sftlab reads local files only (give it a file_name)")
    unknown = sorted(set(entry) - _ENTRY_KEYS - set(_REMOTE_KEYS))
    if unknown:
        raise SftlabError(f"{where}: unsupported key {unknown[0]!r} (supported: {', '.join(sorted(_ENTRY_KEYS))})")
    if entry.get("ranking"):
        raise SftlabError(f"{where} is a ranking (preference) dataset; sftlab trains pt/sft/cls only")
    if entry.get("split", "train") != "train":
        raise SftlabError(f"{where}: split {entry['split']!r} is not supported for local files (only 'train')")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise SftlabError(f"{where}: formatting {formatting!r} is not supported (alpaca or sharegpt)")
    lf_columns = entry.get("columns") or {}
    if preference := [key for key in ("chosen", "rejected", "kto_tag") if key in lf_columns]:
        kind = "a KTO" if preference[0] == "kto_tag" else "a preference (chosen/rejected)"
        raise SftlabError(f"{where} is {kind} dataset (column {preference[0]!r}); sftlab trains pt/sft/cls only")
    if "tools" in lf_columns and formatting != "sharegpt":
        raise SftlabError(f"{where}: column 'tools' is read with formatting sharegpt only")
    media = [key for key in _MEDIA_COLUMNS if key in lf_columns]
    if media:
        vision = "; image+text data trains a vision-language model.path (docs/vision.md)" if media[0] == "images" else ""
        raise SftlabError(f"{where}: column {media[0]!r} is not supported by a text model{vision}")
    known = _LF_ALPACA_COLUMNS if formatting == "alpaca" else _LF_SHAREGPT_COLUMNS
    bad = sorted(set(lf_columns) - set(known))
    if bad:
        raise SftlabError(f"{where}: unknown {formatting} column {bad[0]!r} (expected {', '.join(known)})")
    if formatting == "alpaca" and set(lf_columns) == {"prompt"}:  # LLaMA-Factory's pretraining layout (wiki_demo)
        if stage != "pt":
            raise SftlabError(f"{where} is pretraining text (its columns name only prompt, {lf_columns['prompt']!r}); "
                              f"set train.stage pt to train on it")
        return data_files_in(where, registry_dir / entry.get("file_name", "")), "text", {"text": lf_columns["prompt"]}, {}
    if formatting == "alpaca":
        defaults = {"prompt": "instruction", "query": "input", "response": "output"}
        columns = {_LF_ALPACA_COLUMNS[key]: col for key, col in {**defaults, **lf_columns}.items()}
    else:
        columns = {"messages": lf_columns.get("messages", "conversations")}
        for key in ("system", "tools"):
            if key in lf_columns:
                columns[key] = lf_columns[key]
    tags = {key: value for key, value in (entry.get("tags") or {}).items() if key in _TAG_KEYS}
    return data_files_in(where, registry_dir / entry.get("file_name", "")), formatting, columns, tags


def data_files_in(where: str, target: Path) -> list[Path]:
    """`target` itself, or the data files directly in the directory `target` (sorted); `where` starts the error."""
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in READ_EXTENSIONS)
        if not files:
            raise SftlabError(f"{where}: directory {target} holds no data files ({', '.join(READ_EXTENSIONS)})")
        return files
    if not target.is_file():
        raise SftlabError(f"{where}: data file not found: {target}")
    return [target]


def _registry_rows(name: str, entry: dict, registry_dir: Path, stage: str) -> list[dict]:
    files, formatting, columns, tags = registry_source(name, entry, registry_dir, stage)
    examples = []
    for file in files:
        rows = read_rows(file)
        # Like LLaMA-Factory, only the declared columns are read: system/history must be named in `columns`.
        wanted = set(columns.values()) | {"_src"}
        rows = [{key: value for key, value in row.items() if key in wanted} for row in rows]
        examples += canonical_or_hint(rows, formatting, stage, columns, tags)
    if entry.get("num_samples"):
        examples = _resample(examples, int(entry["num_samples"]), random.Random(f"{name}:{entry['num_samples']}"))
    return examples


def builtin_datasets() -> dict[str, dict]:
    """Datasets shipped in sftlab/resources (name -> {file, format, about}), see resources/datasets.yaml."""
    import yaml

    return yaml.safe_load((_RESOURCES / "datasets.yaml").read_text(encoding="utf-8"))


def builtin_file(name: str) -> tuple[Path, str] | None:
    """(file, data.format) of the built-in dataset `name` (resources/datasets.yaml), None for any other name."""
    entry = builtin_datasets().get(name)
    return (_RESOURCES / entry["file"], entry["format"]) if entry else None


def resolve_dataset(item: str | DatasetSpec, data_cfg: DataConfig, stage: str, base_dir: Path | None,
                    registry: dict[str, dict] | None, registry_dir: Path | None) -> list[dict]:
    """Canonical examples of one `data.train` / `data.validation` item: a registry name, a file, or a built-in name."""
    spec = item if isinstance(item, DatasetSpec) else DatasetSpec(path=item)
    if registry is not None and spec.path in registry:
        return _registry_rows(spec.path, registry[spec.path], registry_dir, stage)
    path = Path(spec.path).expanduser()  # `~/x.jsonl` is the user's home, as in model.path and output.dir
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    builtin = builtin_datasets()
    if not path.exists() and (shipped := builtin_file(spec.path)):
        return to_canonical(read_rows(shipped[0]), spec.format or shipped[1], stage, spec.columns or {})
    if not path.exists():
        if registry is None:
            close = difflib.get_close_matches(spec.path, list(builtin), n=1)
            if close:
                raise SftlabError(f"data file not found: {path}; did you mean the built-in dataset {close[0]!r}?")
            raise SftlabError(f"data file not found: {path}" + ("" if path.suffix else " (for a registry name set data.registry)"))
        close = difflib.get_close_matches(spec.path, list(registry), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        names = [name.strip() for name in spec.path.split(",")]
        if len(names) > 1 and all(name in registry for name in names):  # LLaMA-Factory's `dataset: a,b`
            hint = f"; several datasets are a YAML list: [{', '.join(names)}]"
        raise SftlabError(f"data: {spec.path!r} is neither a file ({path}) nor an entry of the registry{hint}")
    files = data_files_in(f"data: {spec.path!r}", path) if path.is_dir() else [path]
    fmt = spec.format or data_cfg.format
    columns = spec.columns if spec.columns is not None else data_cfg.columns
    try:
        return [ex for file in files for ex in canonical_or_hint(read_rows(file), fmt, stage, columns)]
    except SftlabError as exc:
        if not spec.format:
            raise
        # the format came from the data.train item, not from data.format
        raise SftlabError(re.sub(r"\bdata\.format\b", f"the format of data.train item {spec.path!r}", str(exc))) from None


def canonical_or_hint(rows: list[dict], fmt: str, stage: str, columns: dict | None, tags: dict | None = None) -> list[dict]:
    """`to_canonical`, whose error for a row that does not convert also says how many rows of the file do not and
    that `sftlab data clean --drop-invalid` writes a copy without them (a file's problem, such as a format that does
    not give `stage`, gets no such note)."""
    try:
        return to_canonical(rows, fmt, stage, columns, tags)
    except SftlabError as exc:
        skipped: list[tuple[str, str]] = []
        try:
            to_canonical(rows, fmt, stage, columns, tags, skipped=skipped)
        except SftlabError:
            raise exc from None
        if not skipped:
            raise
        raise SftlabError(f"{exc} ({len(skipped)} of {len(rows)} rows do not convert; `sftlab data build convert FILE "
                          "OUT --drop-invalid` writes a copy without them and changes nothing else)") from None


def mix_datasets(parts: list[tuple[list[dict], float]], seed: int) -> list[dict]:
    """round(weight * size) examples from each part (seeded), then one seeded shuffle of the mixture."""
    rng = random.Random(seed)
    mixed: list[dict] = []
    for examples, weight in parts:
        mixed += _resample(examples, max(1, round(weight * len(examples))), rng)
    rng.shuffle(mixed)
    return mixed


def _resample(examples: list[dict], count: int, rng: random.Random) -> list[dict]:
    """`count` examples: whole copies of the set, then a seeded sample without replacement for the rest."""
    copies, rest = divmod(count, len(examples))
    return examples * copies + rng.sample(examples, rest)


def split_validation(examples: list[dict], ratio: float, method: str, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `ratio` of the examples, randomly or stratified by label (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    if len(examples) < 2:
        raise SftlabError(f"data.val_ratio: {len(examples)} example(s) cannot be split into train and validation")
    stratify = None
    if method == "stratified":
        if any("label" not in ex for ex in examples):
            raise SftlabError("data.split=stratified needs labelled examples (stage cls, format label)")
        stratify = [ex["label"] for ex in examples]
    try:
        train, val = train_test_split(examples, test_size=ratio, random_state=seed, shuffle=True, stratify=stratify)
    except ValueError as exc:
        raise SftlabError(f"data.val_ratio={ratio}: cannot split {len(examples)} examples ({exc})") from None
    return list(train), list(val)


def config_registry(data_cfg: DataConfig, base: Path | None) -> tuple[dict | None, Path | None]:
    """The registry named by data.registry (relative to `base`) and its directory, or (None, None)."""
    if not data_cfg.registry:
        return None, None
    registry_path = Path(data_cfg.registry).expanduser()
    if base is not None and not registry_path.is_absolute():
        registry_path = base / registry_path
    registry_path = registry_file(registry_path)
    return load_registry(registry_path), registry_path.parent


def train_items(data_cfg: DataConfig) -> list:
    """data.train as a non-empty list of names, paths or DatasetSpecs."""
    items = data_cfg.train if isinstance(data_cfg.train, list) else [data_cfg.train]
    if not items:
        raise SftlabError("data.train: empty list; name at least one dataset")
    return items


def load_examples(data_cfg: DataConfig, stage: str, base_dir: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """Train and validation canonical examples for `stage` (validation may be empty)."""
    base = Path(base_dir) if base_dir is not None else None
    registry, registry_dir = config_registry(data_cfg, base)
    items = train_items(data_cfg)
    parts = []
    for item in items:
        weight = item.weight if isinstance(item, DatasetSpec) else 1.0
        parts.append((resolve_dataset(item, data_cfg, stage, base, registry, registry_dir), weight))
    train = mix_datasets(parts, data_cfg.seed)
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    validation: list[dict] = []
    if data_cfg.validation:
        validation = resolve_dataset(data_cfg.validation, data_cfg, stage, base, registry, registry_dir)
    elif data_cfg.val_ratio > 0:
        train, validation = split_validation(train, data_cfg.val_ratio, data_cfg.split, data_cfg.seed)
    return train, validation
