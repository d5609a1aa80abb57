"""The tokenisation cache: where it lives, the name of an entry, and its pruning to `data.cache_max_gb`.

    folder = cache_root(data_cfg) / cache_key(examples, tokenizer, settings)    # sftlab.data.tokenize's entries
    mark_used(folder); prune_cache(folder.parent, data_cfg.cache_max_gb)       # after writing or reading one

The cache lives in `data.cache_dir`, else `$SFTLAB_CACHE/tokenized`, else `~/.cache/sftlab/tokenized`, one
directory per key: a hash of the examples' content, the tokenizer (its full serialisation and chat template), the
settings, and the source of the code that makes token rows (`code_files`). Image+text rows (`sftlab.vision.pipeline`)
are entries named `vision-KEY`. Writing an entry prunes the cache: least recently used entries first (a folder's
modification time, set when it is written or read), never one this process used nor one used in the last 10
minutes by another run, never anything but a complete entry (symlinks and other files are left alone). The
temporary folders a killed writer left (`.KEY.*.tmp` of `sftlab.io.atomic_dir` and of pruning, `.KEY.old`) are
removed when more than a day old (LEFTOVER_S, their modification time); a younger one may be a writer's at work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from sftlab.progress import say

CACHE_FORMAT = 2  # 2: sftlab.data.rows .npy files (1 was a datasets folder)


def cache_root(data_cfg) -> Path:
    """Directory holding the tokenisation cache (see module docstring)."""
    if data_cfg.cache_dir:
        return Path(data_cfg.cache_dir).expanduser().absolute()
    if os.environ.get("SFTLAB_CACHE"):
        return Path(os.environ["SFTLAB_CACHE"]).expanduser().absolute() / "tokenized"
    return Path.home() / ".cache" / "sftlab" / "tokenized"


def cache_key(examples: list[dict], tokenizer, settings: dict) -> str:
    """The entry name of `examples` tokenised by `tokenizer` with `settings` (see the module docstring)."""
    digest = hashlib.sha256()
    for ex in examples:
        public = {k: v for k, v in ex.items() if not k.startswith("_")}
        digest.update(json.dumps(public, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    digest.update(json.dumps([type(tokenizer).__name__, vocab, getattr(tokenizer, "chat_template", None), specials,
                              getattr(tokenizer, "add_bos_token", None), settings, CACHE_FORMAT, code_version()],
                             sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()[:24]


# The modules whose code decides the token ids and labels (sftlab/data/), hashed into the cache key.
CODE_MODULES = ("tokenize.py", "token_cache.py", "templates.py", "template_spec.py", "messages.py",
                "unknown_tokens.py", "render_fast.py")


def code_files() -> list[Path]:
    """CODE_MODULES and the built-in chat template files (sftlab/templates/*.yaml)."""
    here = Path(__file__).parent
    files = [here / name for name in CODE_MODULES]
    if (here.parent / "templates").is_dir():
        files += sorted(p for p in (here.parent / "templates").rglob("*") if p.is_file())
    return files


def code_version(files: list[Path] | None = None) -> str:
    """Hash of the code that makes token rows (`code_files`), so a code change misses the cache."""
    digest = hashlib.sha256()
    for path in code_files() if files is None else files:
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


RECENT_S = 600  # an entry used this recently (seconds) is never removed: another run may be about to read it
_ENTRY_NAME = re.compile(r"(vision-)?[0-9a-f]{24}")  # `cache_key`, `vision-` + one; writers' temporary folders start "."
LEFTOVER_S = 86400  # a writer's temporary folder older than this (seconds) was left by a killed writer
_LEFTOVER_NAME = re.compile(r"\.(vision-)?[0-9a-f]{24}\.(.+\.tmp|old)")  # `sftlab.io.atomic_dir`, pruning's trash
_USED: set[str] = set()  # the entries this process has used (written or read): it never removes them


def mark_used(folder: Path) -> None:
    """Remember `folder` as in use here and set its modification time, which pruning reads as its last use."""
    _USED.add(str(folder))
    with contextlib.suppress(OSError):  # a read-only shared cache is still read
        os.utime(folder)


def _tree_size(path: str) -> int:
    """Bytes of the files under `path`, symlinks counted as themselves and never followed."""
    total = 0
    with os.scandir(path) as items:
        for item in items:
            is_dir = item.is_dir(follow_symlinks=False)
            total += _tree_size(item.path) if is_dir else item.stat(follow_symlinks=False).st_size
    return total


def cache_entries(root: Path) -> list[tuple[float, int, str]]:
    """(last use, bytes, path) of the complete token-row entries in `root`: folders (not symlinks) named by a cache
    key (`vision-KEY` for image+text rows) and holding stats.json; anything else there (temporary folders, others'
    files) is left out."""
    entries = []
    with contextlib.suppress(OSError), os.scandir(root) as items:
        for item in items:
            if (_ENTRY_NAME.fullmatch(item.name) and item.is_dir(follow_symlinks=False)
                    and os.path.isfile(os.path.join(item.path, "stats.json"))
                    and not os.path.islink(os.path.join(item.path, "stats.json"))):
                with contextlib.suppress(OSError):  # removed meanwhile by another run
                    entries.append((item.stat(follow_symlinks=False).st_mtime, _tree_size(item.path), item.path))
    return sorted(entries)


def prune_cache(root: Path, max_gb: float | None) -> tuple[int, int]:
    """Remove the least recently used entries of `root` until they total at most `max_gb` GB (`data.cache_max_gb`;
    None: never), sparing this process's entries and those used in the last RECENT_S seconds; (removed, bytes).
    Writers' temporary folders older than LEFTOVER_S go first (`remove_leftovers`)."""
    if max_gb is None:
        return 0, 0
    remove_leftovers(root)
    entries = cache_entries(root)
    total, removed, freed = sum(size for _, size, _ in entries), 0, 0
    for _, size, path in entries:
        if total <= max_gb * 1e9:
            break
        try:
            if path in _USED or time.time() - os.lstat(path).st_mtime < RECENT_S:  # read again: just reused?
                continue
            trash = os.path.join(root, f".{os.path.basename(path)}.pruned-{os.getpid()}.tmp")
            os.rename(path, trash)  # at once: a reader that then finds no entry tokenises anew
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        total, removed, freed = total - size, removed + 1, freed + size
    if removed:
        say(f"data: cache: removed {removed} old entries ({freed / 1e9:.1f} GB) to stay under "
            f"data.cache_max_gb={max_gb:g}")
    return removed, freed


def remove_leftovers(root: Path) -> int:
    """Remove the temporary folders of writers (named `.KEY.*.tmp`, `.KEY.old`; not symlinks) in `root` whose
    modification time is more than LEFTOVER_S ago: a killed writer left them. The number removed."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(root) as items:
        for item in items:
            with contextlib.suppress(OSError):  # removed meanwhile by another run
                if (_LEFTOVER_NAME.fullmatch(item.name) and item.is_dir(follow_symlinks=False)
                        and time.time() - item.stat(follow_symlinks=False).st_mtime > LEFTOVER_S):
                    shutil.rmtree(item.path)
                    removed += 1
    if removed:
        say(f"data: cache: removed {removed} temporary folders that interrupted runs left in {root}")
    return removed
