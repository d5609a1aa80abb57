"""The banded LSH index of near-duplicate detection (`sftlab.datawork.bands`, `dedup.NearIndex`) and the numpy
MinHash (`nearsets.MinHasher`): candidates are exactly the signatures that share a whole band with the query (a
brute-force comparison of every band), whether their keys are still pending or already merged into the sorted
arrays; signatures equal datasketch's; deduplication keeps and removes what the pairwise exact Jaccard says."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sftlab.datawork.bands import BandTable
from sftlab.datawork.dedup import DedupOptions, NearIndex, dedup_examples, find_leaks, jaccard, lsh_params, shingles
from sftlab.datawork.nearsets import Grams, MinHasher, minhash_values


def _banded(signatures: np.ndarray, query: np.ndarray, bands: int, rows: int) -> set[int]:
    """Brute force: the rows of `signatures` equal to `query` in all values of at least one band."""
    used = bands * rows
    equal = (signatures[:, :used] == query[:used]).reshape(len(signatures), bands, rows).all(axis=2)
    return set(np.flatnonzero(equal.any(axis=1)).tolist())


@pytest.mark.parametrize("bands,rows,pending", [(25, 5, 7), (42, 3, 1000), (1, 128, 3), (64, 2, 1)])
def test_candidates_are_the_signatures_sharing_a_band_pending_or_merged(bands, rows, pending):
    rng = np.random.default_rng(bands)
    # few distinct values, so that many pairs share some bands and some share all of them
    signatures = rng.integers(0, 3, size=(300, 128), dtype=np.uint32)
    signatures[150:200] = signatures[:50]  # whole copies
    table = BandTable(bands, rows, pending_rows=pending)
    for slot, signature in enumerate(signatures):
        expected = _banded(signatures[:slot], signature, bands, rows)
        found = table.query(signature)
        assert found.dtype == np.uint32 and list(found) == sorted(set(found.tolist()))
        assert expected <= set(found.tolist())  # a key can be shared by other band values: never fewer
        table.add(slot, signature)
    assert table.pending_count < pending and sum(len(run.keys) for run in table.runs) + sum(
        len(v) if isinstance(v, list) else 1 for v in table.pending.values()) == bands * len(signatures)


def test_near_index_candidates_equal_the_brute_force_band_comparison_screened_by_agreement():
    options = DedupOptions(near_threshold=0.8)
    index = NearIndex(options)
    index.table.pending_rows = 5  # both the merged arrays and the pending dict are searched
    bands, rows = lsh_params(0.8, 128)
    assert (index.bands, index.rows) == (bands, rows) == (25, 5)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, size=(40, 128), dtype=np.uint32)
    signatures = []
    for i in range(400):  # variants of 40 bases with 0 to 40 values replaced: every agreement count occurs
        signature = base[i % 40].copy()
        changed = rng.choice(128, size=int(rng.integers(0, 41)), replace=False)
        signature[changed] = rng.integers(0, 2**32, size=len(changed), dtype=np.uint32)
        signatures.append(signature)
    signatures = np.array(signatures)
    seen = 0
    for slot, signature in enumerate(signatures):
        previous = signatures[:slot]
        agree = (previous == signature).sum(axis=1)
        expected = {j for j in _banded(previous, signature, bands, rows) if agree[j] >= index.agree}
        assert set(index.candidate_slots(signature).tolist()) == expected
        assert sorted(index.candidates(signature)) == sorted(f"k{j}" for j in expected)
        seen += len(expected)
        index.add(f"k{slot}", Grams.of([("user", "abcd")], 3), signature)
    assert seen > 100
    assert len(index.values) >= 400 and (index.values[:400] == signatures).all()  # grown, nothing lost


def test_a_band_key_collision_is_not_a_candidate():
    index = NearIndex(DedupOptions(near_threshold=0.8))
    first = np.arange(128, dtype=np.uint32)
    other = first.copy()
    other[0:125:5] += np.uint32(1000)  # one value changed in each of the 25 bands: 103 of 128 still agree
    assert (other == first).sum() >= index.agree
    index.add("a", Grams.of([("user", "abcd")], 3), first)
    real = index.table.band_keys
    index.table.band_keys = lambda signature: real(first)  # every signature gets the keys of `first`
    index.table.merge()
    assert index.table.query(other).tolist() == [0]  # proposed by its (forced) keys ...
    assert index.candidates(other) == []  # ... but no band's values are equal
    assert index.candidates(first) == ["a"]


def test_minhash_signatures_equal_datasketch():
    import datasketch  # a test dependency (pyproject.toml), so the cross-check always runs
    rng = random.Random(3)
    for num_perm, seed in [(128, 1), (64, 7), (16, 0)]:
        hasher = MinHasher(num_perm, seed)
        template = datasketch.MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
        for _ in range(150):
            grams = Grams.of([(rng.choice(["user", "assistant"]), "".join(rng.choice("abcd中文é")
                               for _ in range(rng.randint(0, 40)))) for _ in range(rng.randint(1, 3))], 3)
            reference = template.copy()
            reference.update_batch(minhash_values(grams).tolist())
            signature = hasher.signature(grams)
            assert signature.dtype == reference.hashvalues.dtype == np.uint32
            assert (signature == reference.hashvalues).all()


def test_minhash_signature_values_are_fixed():
    """Recorded from datasketch 2.0.0's MinHash(num_perm=128, seed=1, hashfunc=int): the values, and so which
    examples are candidates, do not depend on whether or which datasketch is installed."""
    signature = MinHasher(128, 1).signature(Grams.of([("user", "abcdef"), ("assistant", "数据模型")], 3))
    assert signature[:6].tolist() == [53252716, 1163906771, 841392457, 71904882, 614763329, 280922277]
    assert MinHasher(128, 1).signature(Grams.of([], 3)).tolist() == [2**32 - 1] * 128


def _planted(count: int, seed: int) -> list[dict]:
    """Alpaca-like rows and copies of some with 1 to 30 characters changed: pairs on both sides of 0.8."""
    rng = random.Random(seed)
    words = [f"{w}{i}" for i, w in enumerate("alpha beta gamma delta epsilon zeta eta theta iota kappa".split() * 20)]
    rows = []
    for i in range(count):
        if rows and rng.random() < 0.35:
            source = rng.choice(rows)
            answer = list(source["messages"][1]["content"])
            for _ in range(rng.randint(1, 30)):
                answer[rng.randrange(len(answer))] = rng.choice("xyz中")
            rows.append({"messages": [source["messages"][0], {"role": "assistant", "content": "".join(answer)}],
                         "_src": f"d.jsonl:{i + 1}"})
            continue
        rows.append({"messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(8))},
                                  {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(25))}],
                     "_src": f"d.jsonl:{i + 1}"})
    return rows


def _tagged(example: dict) -> set[str]:
    return {f"{m['role']}\x1f{gram}" for m in example["messages"] for gram in shingles(m["content"], 3)}


def test_dedup_keeps_and_removes_what_the_pairwise_jaccard_says():
    examples = _planted(500, 0)
    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=0.8, exact=False))
    sets = [_tagged(e) for e in examples]
    expected_kept: list[int] = []
    expected_removed: list[tuple[int, int, float]] = []
    for i in range(len(examples)):
        best = None  # as `NearIndex.best_match`: keys (str of the kept position) in sorted order, the first best
        for key in sorted(str(k) for k in range(len(expected_kept))):
            score = jaccard(sets[i], sets[expected_kept[int(key)]])
            if score >= 0.8 and (best is None or score > best[2]):
                best = (i, expected_kept[int(key)], score)
        if best is None:
            expected_kept.append(i)
        else:
            expected_removed.append(best)
    scores = [jaccard(sets[i], sets[j]) for i, j, _ in expected_removed]
    assert len(expected_removed) > 50 and min(scores) < 0.85  # planted pairs near the threshold ...
    below = [(a, b) for a in expected_kept for b in expected_kept if a < b and 0.6 < jaccard(sets[a], sets[b]) < 0.8]
    assert len(below) > 5  # ... and below it, both kept
    assert [e["_src"] for e in kept] == [examples[i]["_src"] for i in expected_kept]
    assert [(e["_src"], why) for e, why in removed] == [(examples[i]["_src"], f"near duplicate of "
                                                         f"{examples[j]['_src']} (jaccard {s:.2f})")
                                                        for i, j, s in expected_removed]


def test_leaks_are_found_through_the_banded_index():
    examples = _planted(400, 1)
    leaks = find_leaks(examples[200:], {"test": examples[:200]}, DedupOptions(near_threshold=0.8))
    sets = [_tagged(e) for e in examples]
    expected = [i - 200 for i in range(200, 400) if any(jaccard(sets[i], sets[j]) >= 0.8 for j in range(200))]
    assert len(expected) > 10 and [leak["train_index"] for leak in leaks] == expected
    assert {leak["kind"] for leak in leaks} == {"near"}


def test_threshold_one_is_one_band_of_all_values():
    """--near 1.0: one band of all 128 values (datasketch's MinHashLSH refused a single band with a ValueError);
    a copy whose n-grams are all equal is removed, one with a character changed is kept."""
    assert lsh_params(1.0, 128) == (1, 128)
    text = "the quick brown fox jumps over the lazy dog"
    examples = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
                 "_src": f"d.jsonl:{i + 1}"} for i, answer in enumerate([text, text + "!", text.replace("lazy", "lazi")])]
    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=1.0, exact=False))
    assert [e["_src"] for e in kept] == ["d.jsonl:1", "d.jsonl:3"]
    assert [why for _, why in removed] == ["near duplicate of d.jsonl:1 (jaccard 1.00)"]


def test_a_signature_taken_in_chunks_equals_the_one_taken_at_once():
    from sftlab.datawork.nearsets import Grams, MinHasher

    grams = Grams.of([("user", "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3000)))], 3)
    hasher = MinHasher(64, seed=1)
    assert (hasher.signature(grams, chunk=100) == hasher.signature(grams, chunk=1 << 20)).all()
