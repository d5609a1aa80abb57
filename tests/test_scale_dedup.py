"""Near-duplicate detection at scale (`sftlab.datawork.nearsets`, `dedup.NearIndex`): the compact n-gram codes
give exactly the Jaccard of the role-tagged n-gram string sets, the index keeps one text string per item (the
codes it checks are made again from it) rather than Python string sets or codes, and the MinHash work per example
is numpy work (no per-example permutation draw, no per-n-gram Python hash call). Checked structurally (what is
stored, what is called), never by timing. The banded index itself: tests/test_dedup_bands.py."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sftlab.datawork import dedup
from sftlab.datawork.dedup import DedupOptions, NearIndex, dedup_examples, dedup_key, jaccard, near_grams, shingles
from sftlab.datawork.nearsets import Grams, gram_codes, similarity

ALPHABET = "abcde é中文字𠀀𠀁Z ,.!"  # Latin, accented, Han, supplementary-plane Han, punctuation that dedup_key drops


def _tagged(parts: list[tuple[str, str]], n: int) -> set[str]:
    """The role-tagged n-gram string set that near-duplicate detection compared before the codes."""
    return {f"{role}\x1f{gram}" for role, text in parts for gram in shingles(text, n)}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_code_similarity_equals_the_jaccard_of_the_tagged_string_sets(n):
    rng = random.Random(n)

    def parts():
        return [(rng.choice(["user", "assistant", "tool"]), "".join(rng.choice(ALPHABET)
                 for _ in range(rng.randint(0, 14)))) for _ in range(rng.randint(1, 3))]

    for _ in range(1500):
        a, b = parts(), parts()
        grams_a = Grams.of([(role, dedup_key(text)) for role, text in a], n)
        grams_b = Grams.of([(role, dedup_key(text)) for role, text in b], n)
        assert grams_a.size == len(_tagged(a, n))
        assert similarity(grams_a, grams_b) == pytest.approx(jaccard(_tagged(a, n), _tagged(b, n)), abs=1e-12)


def test_short_texts_and_whole_text_grams_never_share_a_code_with_longer_grams():
    # a text of n characters or fewer is one gram (as `shingles` takes it); "ab" must not equal any 3-gram
    texts = ("ab", "a", "b", "xab", "abx", "𠀀b", "b𠀀", "xab𠀀")
    codes = [set(gram_codes(text, 3).tolist()) for text in texts]
    assert [len(c) for c in codes] == [1, 1, 1, 1, 1, 1, 1, 2]
    assert len(set().union(*codes[:-1])) == 7  # no two of the one-gram texts alike
    assert codes[-1] == codes[3] | {next(iter(gram_codes("ab𠀀", 3).tolist()))}
    assert list(gram_codes("", 3)) == []


def _examples(count: int) -> list[dict]:
    rng = random.Random(0)
    words = "alpha beta gamma delta 数据 模型 训练 epsilon zeta eta theta".split()
    return [{"messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(12))},
                          {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(30))}],
             "_src": f"d.jsonl:{i + 1}"} for i in range(count)]


def test_the_index_keeps_one_text_string_per_item_not_its_ngram_codes():
    """Per item the index holds its uint32 signature, one string of its normalised texts and shared role and
    group objects; the codes it checks are made again from that string and equal the codes it was given."""
    examples = _examples(50)
    index = NearIndex(DedupOptions())
    for position, example in enumerate(examples):
        grams, group = near_grams(example, 3)
        index.add(str(position), grams, group=group)
        again = index.grams(position)
        assert again.size == grams.size and again.parts.keys() == grams.parts.keys()
        assert all((again.parts[role] == codes).all() for role, codes in grams.parts.items())
    assert index.values.dtype == np.uint32 and index.values.shape[1] == 128
    assert all(isinstance(text, str) for text in index.texts)
    assert len({id(roles) for roles in index.roles}) == 1 and len({id(group) for group in index.groups}) == 1
    assert not any(isinstance(value, Grams) for value in vars(index).values())


def test_texts_with_the_separator_are_kept_as_a_tuple():
    index = NearIndex(DedupOptions())
    grams = Grams.of([("user", "ab\0cd"), ("assistant", "efgh")], 3)
    index.add("0", grams)
    assert index.texts == [("ab\0cd", "efgh")]
    assert index.grams(0).size == grams.size and index.best_match(grams) == ("0", 1.0)


def test_minhash_signatures_are_numpy_work(monkeypatch):
    """No per-example permutation draw and no per-n-gram Python hash call: one `MinHasher` draws its
    permutations once (numpy's RandomState) and each signature is a few numpy operations."""
    draws = []
    original = np.random.RandomState
    monkeypatch.setattr(np.random, "RandomState", lambda *a: draws.append(a) or original(*a))
    kept, removed = dedup_examples(_examples(300), DedupOptions(near_threshold=0.8))
    assert len(kept) + len(removed) == 300
    assert len(draws) == 1
    index = NearIndex(DedupOptions())
    assert isinstance(index.signature(near_grams(_examples(1)[0], 3)[0]), np.ndarray)


def test_dedup_results_are_unchanged_by_the_codes():
    """The same kept/removed lists and reasons as comparing the string sets would give (reference computed here
    with `jaccard` over `shingles`, pairwise, on a small set)."""
    examples = _examples(120)
    examples += [dict(e, _src=f"copy.jsonl:{i}") for i, e in enumerate(examples[:10])]
    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=0.8, exact=False))
    sets = [_tagged([(m["role"], m["content"]) for m in e["messages"]], 3) for e in examples]
    expected_kept: list[int] = []
    for i in range(len(examples)):
        if not any(jaccard(sets[i], sets[j]) >= 0.8 for j in expected_kept):
            expected_kept.append(i)
    assert [e["_src"] for e in kept] == [examples[i]["_src"] for i in expected_kept]
    assert all("near duplicate of" in why for _, why in removed)


def test_examples_without_images_do_not_resolve_image_paths(monkeypatch):
    from sftlab.datawork import images

    monkeypatch.setattr(images, "locate_image", lambda *a: pytest.fail("an example without images was resolved"))
    assert images.locations({"messages": [], "_src": "d.jsonl:1"}) == []
    dedup_examples(_examples(5), DedupOptions())
    assert dedup.example_hash(_examples(1)[0])


def test_lsh_candidates_are_screened_by_their_minhash_values_before_the_exact_jaccard(monkeypatch):
    """False candidates grow with the index (a share of all pairs), so checking each with the exact Jaccard was
    quadratic; only candidates whose MinHash values mostly agree reach `similarity`."""
    rng = random.Random(1)
    words = [f"w{i}" for i in range(60)]
    examples = [{"text": " ".join(rng.choice(words) for _ in range(40)), "_src": f"d.jsonl:{i + 1}"}
                for i in range(400)]
    examples += [dict(e, _src=f"copy.jsonl:{i + 1}") for i, e in enumerate(examples[:20])]
    proposed, checked = [], []
    query, exact = NearIndex.candidate_slots, dedup.similarity
    monkeypatch.setattr(dedup.NearIndex, "candidate_slots",
                        lambda self, sig: proposed.append(len(self.table.query(sig))) or query(self, sig))
    monkeypatch.setattr(dedup, "similarity", lambda a, b: checked.append(1) or exact(a, b))
    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=0.8, exact=False))
    assert len(removed) == 20  # every copy found
    assert sum(proposed) > 10 * len(checked)  # most LSH candidates never reach the exact check
    assert len(checked) <= 2 * len(removed)


def test_deduplication_shows_a_progress_bar_on_a_terminal_only(monkeypatch):
    import io
    import sys

    from sftlab.progress import example_bar, progress_bars

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = example_bar([1, 2], "deduplicating")
    assert not bar.disable
    assert list(bar) == [1, 2] and "deduplicating" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", Terminal())
    dedup_examples(_examples(20), DedupOptions(near_threshold=0.8))
    assert "deduplicating" in sys.stderr.getvalue() and "20/20" in sys.stderr.getvalue()
    with progress_bars(False):  # sftlab train --no-progress
        assert example_bar([1], "deduplicating").disable
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert example_bar([1], "deduplicating").disable
