"""Atomic file and directory writes (outputs appear complete or not at all), and the one reader of YAML settings files.

Write to a temporary sibling, then `os.replace` it into place, so an interrupted run never leaves a
half-written file where a finished one is expected. `read_yaml_mapping` reads a run config, a serve config,
planner thresholds and the like, and `read_json` the JSON records beside a model (config.json, adapter_config.json,
sftlab's own records); both report a broken file in one line naming it (and the line).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from sftlab.errors import SftlabError


def _umask() -> int:
    """The process's umask, read without changing it (Linux's /proc), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_parent(path: str | Path) -> None:
    """Fail before any work when a directory that `path` would be written in is an existing file (`out.jsonl/x.jsonl`):
    the directories are created on writing, and a file in their place is an error naming it, not a traceback."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise SftlabError(f"{path}: cannot write there, {parent} is a file, not a directory")
            return


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """An open temporary sibling of `path` (text modes in UTF-8) that replaces `path` when the block ends without an
    error, and is removed when it raises. The file gets the permissions a plain `open` would give it (mkstemp's
    are 0600: outputs others in the group could not read)."""
    path = Path(path)
    if path.is_dir():
        raise SftlabError(f"{path} is a directory; expected the path of a file to write")
    check_output_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory."""
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented UTF-8 JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically: each line as `rows` gives it (a generator is never held whole),
    into a temporary file renamed once all are written."""
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return Path(path)


def check_output_dir(path: str | Path, overwrite: bool, inputs: tuple = ()) -> Path:
    """Fail before any work if `path` is a file; if it exists, is not empty and `overwrite` is off; or if it is (or
    holds) one of the `inputs` (files or directories the command reads), which replacing it would destroy."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SftlabError(f"output directory {path} is a file; expected a directory")
    check_output_parent(path)
    for given in inputs:
        if given is not None and path.resolve() in (Path(given).resolve(), *Path(given).resolve().parents):
            raise SftlabError(f"output directory {path} is or holds the input {given}; inputs are never replaced: "
                              "choose another output directory")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise SftlabError(f"output directory {path} already exists and is not empty; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final` in one rename.

    On error the temporary directory is removed and `final` is left untouched.
    """
    final = Path(final)
    check_output_dir(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would stay on `final`
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        trash = final.with_name(f".{final.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def read_text(path: str | Path) -> str:
    """The UTF-8 text of `path`; a one-line SftlabError naming it when it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SftlabError(f"{path}: not UTF-8 text") from None


def read_json(path: str | Path) -> Any:
    """The parsed JSON file `path`; a one-line SftlabError naming it (and the line) when it is not valid JSON or not
    UTF-8."""
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise SftlabError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def yaml_error_line(name: str | Path, exc: Exception) -> str:
    """PyYAML's multi-line error as one line: `name:LINE: not valid YAML (problem)`."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{name}{where}: not valid YAML ({problem})"


def read_yaml_mapping(path: str | Path, expected: str) -> dict:
    """The mapping in the YAML file `path` ({} for an empty file).

    A file that is not UTF-8, not valid YAML or not a mapping, or one that gives a key twice in a mapping (YAML
    would keep the last silently), is a one-line SftlabError naming it (and the line of a YAML error or of the
    repeated key); `expected` says what the file should hold ("a mapping of serve settings")."""
    import yaml

    path = Path(path)
    text = read_text(path)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SftlabError(yaml_error_line(path, exc)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SftlabError(f"{path}: expected {expected}, got {type(loaded).__name__}")
    reject_duplicate_keys(path, text)
    return loaded


def reject_duplicate_keys(path: Path, text: str) -> None:
    """Raise a one-line SftlabError for the first key a mapping of the (valid) YAML `text` of `path` repeats."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    stack, seen = [(root, "")], set()
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen:  # an alias of a node already walked
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{prefix}{index}.") for index, item in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            continue
        first_line: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                continue
            line = key.start_mark.line + 1
            if key.value in first_line:
                raise SftlabError(f"{path}:{line}: duplicate key {prefix + key.value!r} (first given on line "
                                  f"{first_line[key.value]}); give each key once")
            first_line[key.value] = line
            stack.append((value, f"{prefix}{key.value}."))

