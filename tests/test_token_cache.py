"""The tokenisation cache stays under data.cache_max_gb: least recently used entries go first, never this run's,
never one used in the last minutes, never a folder sftlab did not write as a complete entry."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from pydantic import ValidationError

from sftlab.config.schema import DataConfig, TrainConfig
from sftlab.data import token_cache as tc
from sftlab.data import tokenize as tk
from sftlab.data.token_cache import RECENT_S, cache_entries, prune_cache
from sftlab.data.tokenize import tokenize_examples
from sftlab.models.tiny import make_tokenizer

HOUR = 3600


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    monkeypatch.setattr(tc, "_USED", set())  # as if each step were another run


@pytest.fixture(scope="module")
def chatml():
    return make_tokenizer("chatml")


def entry(root, key: str, size: int, age_s: float):
    """A complete-looking entry: stats.json plus `size` bytes, last used `age_s` seconds ago."""
    folder = root / key
    (folder / "rows").mkdir(parents=True)
    (folder / "stats.json").write_text("{}")
    (folder / "rows" / "input_ids.values.npy").write_bytes(b"x" * (size - 2))
    past = time.time() - age_s
    os.utime(folder, (past, past))
    return folder


def key(n: int) -> str:
    return f"{n:024x}"


def docs(*texts):
    return [{"text": t, "_src": f"d.jsonl:{i + 1}"} for i, t in enumerate(texts)]


def test_least_recently_used_go_first_until_under_the_limit(tmp_path, capsys):
    old, older, oldest, new = (entry(tmp_path, key(i), 1000, age) for i, age in
                               enumerate((2 * HOUR, 3 * HOUR, 4 * HOUR, HOUR)))
    assert [path for _, _, path in cache_entries(tmp_path)] == [str(p) for p in (oldest, older, old, new)]
    assert prune_cache(tmp_path, 2500 / 1e9) == (2, 2000)
    assert not oldest.exists() and not older.exists() and old.exists() and new.exists()
    assert "data: cache: removed 2 old entries (0.0 GB) to stay under data.cache_max_gb=2.5e-06" in capsys.readouterr().err
    assert prune_cache(tmp_path, None) == (0, 0) and prune_cache(tmp_path, 1e-9 * 2000) == (0, 0)
    assert prune_cache(tmp_path, 0) == (2, 2000) and cache_entries(tmp_path) == []


def test_recent_and_own_entries_are_never_removed(tmp_path):
    recent = entry(tmp_path, key(1), 1000, RECENT_S / 2)
    mine = entry(tmp_path, key(2), 1000, 5 * HOUR)
    tc._USED.add(str(mine))
    stale = entry(tmp_path, key(3), 1000, HOUR)
    assert prune_cache(tmp_path, 0) == (1, 1000)
    assert recent.exists() and mine.exists() and not stale.exists()


def test_foreign_partial_and_linked_folders_are_left_alone_vision_entries_not(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    outside = entry(tmp_path, key(9), 1000, 5 * HOUR)  # an entry-like folder outside the cache, reached by a link
    (root / key(1)).symlink_to(outside, target_is_directory=True)
    no_stats = root / key(2)
    no_stats.mkdir()
    (no_stats / "data.bin").write_bytes(b"x" * 5000)
    partial = entry(root, f".{key(3)}.abc123.tmp", 5000, 5 * HOUR)  # a writer's temporary folder (sftlab.io.atomic_dir)
    foreign = entry(root, "my-notes", 5000, 5 * HOUR)
    vision = entry(root, f"vision-{key(4)}", 900, 6 * HOUR)  # image+text rows: an entry like the others
    linked_stats = root / key(5)
    linked_stats.mkdir()
    (linked_stats / "stats.json").symlink_to(outside / "stats.json")
    real = entry(root, key(6), 1000, 5 * HOUR)
    (real / "rows" / "link").symlink_to(outside, target_is_directory=True)  # inside an entry: removed, not followed
    assert [path for _, _, path in cache_entries(root)] == [str(vision), str(real)]
    link_size = os.lstat(real / "rows" / "link").st_size  # the link itself, not what it points to
    assert prune_cache(root, 0) == (2, 900 + 1000 + link_size)
    assert not real.exists() and not vision.exists()
    for kept in (no_stats, partial, foreign, linked_stats, root / key(1)):
        assert kept.exists()
    assert (outside / "stats.json").is_file() and (outside / "rows" / "input_ids.values.npy").is_file()


def test_tokenize_prunes_after_writing_and_keeps_its_entry(chatml, tmp_path, capsys):
    root = tmp_path / "cache"
    stale = entry(root, key(1), 1000, 5 * HOUR)
    data = DataConfig(train="x", cache_dir=str(root), cache_max_gb=0)
    rows, stats = tokenize_examples(docs("hello world"), chatml, data, TrainConfig(stage="pt", max_length=8))
    assert not stale.exists() and os.path.isdir(stats.cache_path) and len(rows) > 0
    assert "data: cache: removed 1 old entries" in capsys.readouterr().err
    never = DataConfig(train="x", cache_dir=str(root), cache_max_gb=None)
    keep = entry(root, key(2), 1000, 5 * HOUR)
    tokenize_examples(docs("another"), chatml, never, TrainConfig(stage="pt", max_length=8))
    assert keep.exists()


def test_a_reused_entry_counts_as_recently_used(chatml, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    data = DataConfig(train="x", cache_dir=str(root), cache_max_gb=None)
    train = TrainConfig(stage="pt", max_length=8)
    _, first = tokenize_examples(docs("first document"), chatml, data, train)
    _, second = tokenize_examples(docs("second document"), chatml, data, train)
    for path, age in ((first.cache_path, 3 * HOUR), (second.cache_path, 2 * HOUR)):
        os.utime(path, (time.time() - age,) * 2)
    tc._USED.clear()
    _, again = tokenize_examples(docs("first document"), chatml, data, train)  # reuse the older one
    assert again.cache_hit and again.cache_path == first.cache_path
    assert time.time() - os.stat(first.cache_path).st_mtime < 60
    tc._USED.clear()
    monkeypatch.setattr(tc, "RECENT_S", 0)  # the order alone decides, not the recent-use grace
    largest = max(size for _, size, _ in cache_entries(root))
    assert prune_cache(root, largest / 1e9)[0] == 1
    assert os.path.isdir(first.cache_path) and not os.path.exists(second.cache_path)


def test_an_entry_removed_by_another_run_is_tokenised_again(chatml, tmp_path, monkeypatch):
    data = DataConfig(train="x", cache_dir=str(tmp_path / "cache"), cache_max_gb=None)
    train = TrainConfig(stage="pt", max_length=8)
    rows, stats = tokenize_examples(docs("hello there"), chatml, data, train)
    mark = tk.mark_used

    def pruned_meanwhile(folder):  # another run removes the entry between the check and the read
        monkeypatch.setattr(tk, "mark_used", mark)
        shutil.rmtree(folder)

    monkeypatch.setattr(tk, "mark_used", pruned_meanwhile)
    again, second = tokenize_examples(docs("hello there"), chatml, data, train)
    assert not second.cache_hit and again.to_dict() == rows.to_dict() and os.path.isdir(second.cache_path)


def test_cache_max_gb_is_checked():
    assert DataConfig(train="x").cache_max_gb == 20
    assert DataConfig(train="x", cache_max_gb=None).cache_max_gb is None
    with pytest.raises(ValidationError, match="cache_max_gb"):
        DataConfig(train="x", cache_max_gb=-1)


def test_leftover_temporary_folders_older_than_a_day_are_removed_younger_ones_kept(tmp_path, capsys):
    root = tmp_path / "cache"
    root.mkdir()
    day = tc.LEFTOVER_S
    killed = entry(root, f".{key(1)}.k1ll3d.tmp", 5000, day + HOUR)  # sftlab.io.atomic_dir's folder of a killed writer
    pruned = entry(root, f".vision-{key(2)}.pruned-123.tmp", 5000, 2 * day)  # pruning's trash, killed mid-rmtree
    trash = entry(root, f".{key(3)}.old", 5000, 2 * day)  # atomic_dir's replaced entry
    writing = entry(root, f".{key(4)}.wr1t3.tmp", 5000, day - HOUR)  # a writer may still be at work
    foreign = entry(root, ".notes.tmp", 5000, 2 * day)  # not named by a cache key
    outside = entry(tmp_path, key(9), 1000, 2 * day)
    linked = root / f".{key(5)}.l1nk.tmp"
    linked.symlink_to(outside, target_is_directory=True)
    os.utime(linked, (time.time() - 2 * day,) * 2, follow_symlinks=False)
    kept = entry(root, key(6), 1000, 2 * day)
    assert prune_cache(root, None) == (0, 0) and killed.exists()  # data.cache_max_gb null: nothing is removed
    assert prune_cache(root, 1) == (0, 0)  # the entries fit: only the leftovers go
    assert not killed.exists() and not pruned.exists() and not trash.exists()
    assert writing.exists() and foreign.exists() and linked.is_symlink() and kept.exists()
    assert (outside / "stats.json").is_file()
    assert "removed 3 temporary folders that interrupted runs left" in capsys.readouterr().err
    assert tc.remove_leftovers(root) == 0
