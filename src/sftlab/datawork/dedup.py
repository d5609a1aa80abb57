"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash LSH over character n-grams,
so Chinese without spaces works), within one set and between a training set and evaluation sets (leakage).

    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=0.8))
    leaks = find_leaks(train, {"validation": val, "test": test}, DedupOptions())

The first occurrence is kept; every removed example names the one it duplicates and the similarity
(Jaccard similarity of the character n-gram sets, computed exactly after the LSH proposes candidates).

Examples are compared by `records.identity`: contents and tool results are the text (hashed, and n-grammed as
above, per message with its role, so two conversations whose joined texts happen to normalise alike are neither
exact nor near duplicates), and the tools list and tool calls form a key that must be equal, as canonical JSON, for an exact or a
near duplicate; so examples that differ only in tool-call arguments or in the tools they offer are never
duplicates, while a different key order or spacing of the same JSON is no difference. Image+text examples add
their images' contents to that key (`images.image_key`: SHA-256 of each image's bytes, in order), so exact and near
duplicates must show the same images, whatever their paths.

System prompts: an exact duplicate has the same whole text, system messages included. The near-duplicate
comparison leaves system messages out of the n-grammed text and instead puts examples into groups by their
system prompts (`near_identity`): two examples can only be near duplicates when their system messages are the
same after `dedup_key` (and their tool keys are equal). A long system prompt shared by many examples (a
300-word policy) therefore does not make short, different conversations near duplicates, and the same
conversation under two different system prompts is not one either.

Labels (cls): copies of one text (as the exact-duplicate hash compares it) with different labels are label
conflicts, not duplicates (`label_conflicts`): the label most copies have wins, the copies with other labels are
removed; when two or more labels tie for the most copies, every copy of the text is removed. The remaining copies
are exact duplicates as usual. Near duplicates must have the same label: texts alike with different labels may
be a minimal pair (a negation) and are both kept. Leakage compares texts only: a text in an evaluation set leaks
whatever its label.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import numpy as np

from sftlab.datawork.bands import BandTable
from sftlab.datawork.nearsets import Grams, MinHasher, similarity
from sftlab.datawork.records import identity, identity_parts, src, stage_of, system_text
from sftlab.errors import SftlabError
from sftlab.progress import example_bar

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass
class DedupOptions:
    """exact: drop identical normalised texts; near_threshold: Jaccard threshold for MinHash LSH (None = off)."""

    exact: bool = True
    near_threshold: float | None = 0.8
    ngram: int = 3
    num_perm: int = 128
    seed: int = 1

    def __post_init__(self):
        if self.near_threshold is not None and not 0.0 < self.near_threshold <= 1.0:
            raise SftlabError(f"near-duplicate threshold must be in (0, 1], got {self.near_threshold}")
        if self.ngram < 1:
            raise SftlabError(f"n-gram size must be at least 1, got {self.ngram}")


def dedup_key(text: str) -> str:
    """Text reduced for comparison: NFKC, case-folded, punctuation and whitespace removed."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).casefold())


def example_hash(example: dict) -> str:
    """Exact-duplicate identity of an example: the SHA-1 of each message's role and normalised text
    (`records.identity_parts`, each part through `dedup_key` on its own, so a message boundary cannot blur:
    user "ab" + assistant "cd" is not user "a" + assistant "bcd"), and of the tool key when there is one. pt and
    cls examples are one part, their text."""
    parts, key = identity_parts(example)
    body = "\x1e".join(f"{role}\x1f{dedup_key(text)}" for role, text in parts)
    return hashlib.sha1((body + ("\0" + key if key else "")).encode("utf-8")).hexdigest()


def near_identity(example: dict) -> tuple[str, str]:
    """(text, group) that near-duplicate detection compares: `records.identity`'s text without system messages,
    and a group of its tool key and, when the example has a system prompt, the SHA-1 of the normalised system
    messages (`records.system_text` after `dedup_key`); only examples of the same group can be near duplicates."""
    text, key = identity(example, system=False)
    system = dedup_key(system_text(example))
    if not system:
        return text, key
    return text, key + "\0system:" + hashlib.sha1(system.encode("utf-8")).hexdigest()


def near_grams(example: dict, n: int) -> tuple[Grams, str]:
    """(n-grams, group) that near-duplicate detection compares: the `shingles` of each message of
    `near_identity`'s text taken on its own and tagged with the message's role (`records.identity_parts` without
    system messages), so no n-gram crosses a message boundary, as compact codes (`nearsets.Grams`), and
    `near_identity`'s group."""
    parts, _ = identity_parts(example, system=False)
    return Grams.of([(role, dedup_key(text)) for role, text in parts], n), near_identity(example)[1]


def shingles(text: str, n: int) -> set[str]:
    """Character n-grams of the normalised text (the whole text when shorter than n)."""
    key = dedup_key(text)
    if len(key) <= n:
        return {key} if key else set()
    return {key[i : i + n] for i in range(len(key) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def lsh_params(threshold: float, num_perm: int, miss: float = 1e-4) -> tuple[int, int]:
    """(bands, rows) of the LSH: the most rows per band (fewest false candidates) for which a pair whose Jaccard
    equals `threshold` is missed as a candidate with probability at most `miss`, (1 - t^r)^b with b = num_perm // r
    (a pair above the threshold is missed less often); one row per band when no band size reaches that.
    datasketch's own choice for a threshold balances misses and false candidates and missed 13-20% of the pairs
    just above 0.5-0.95."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if (1.0 - threshold**rows) ** bands <= miss:
            return bands, rows
    return num_perm, 1


class NearIndex:
    """A MinHash LSH index of examples' n-grams (`nearsets.Grams`) that answers 'which indexed item is this close
    to'; only items added with the same `group` (`near_identity`: the tool key and the system prompt) can match.

    Per indexed item it holds its signature (`values`: `num_perm` uint32 in one growing array), its band keys
    (`bands.BandTable`, 12 bytes a band), its key, its group, and its normalised texts (`Grams.texts`: one string,
    about a byte per character, and a shared tuple of roles) rather than its n-gram codes (8 bytes an n-gram):
    the codes of the few candidates that reach the exact Jaccard are made again from the texts."""

    def __init__(self, options: DedupOptions):
        self.options = options
        # Candidates are verified with the exact Jaccard, so the bands are chosen to miss almost no true pairs.
        self.bands, self.rows = lsh_params(options.near_threshold, options.num_perm)
        self.table = BandTable(self.bands, self.rows)
        self.hasher = MinHasher(options.num_perm, options.seed)
        self.keys: list[str] = []
        self.groups: list[str] = []
        self.roles: list[tuple[str, ...]] = []
        self.texts: list[str | tuple[str, ...]] = []
        self.shared: dict = {}  # one object for equal groups and for equal role tuples
        self.values = np.empty((1024, options.num_perm), dtype=np.uint32)
        self.agree = agreement_floor(options.near_threshold, options.num_perm)

    def signature(self, grams: Grams) -> np.ndarray:
        """The MinHash signature (`nearsets.MinHasher`, uint32) of `grams`."""
        return self.hasher.signature(grams)

    def add(self, key: str, grams: Grams, signature=None, group: str = "") -> None:
        signature = signature if signature is not None else self.signature(grams)
        slot = len(self.keys)
        if slot == len(self.values):
            grown = np.empty((2 * slot, self.values.shape[1]), dtype=self.values.dtype)
            grown[:slot] = self.values
            self.values = grown
        self.values[slot] = signature
        self.table.add(slot, signature)
        self.keys.append(key)
        self.groups.append(self.shared.setdefault(group, group))
        roles = tuple(role for role, _ in grams.texts)
        self.roles.append(self.shared.setdefault(roles, roles))
        texts = tuple(text for _, text in grams.texts)
        joined = "\0".join(texts)  # one string; `dedup_key` leaves no \0 in a text, else the tuple is kept
        self.texts.append(joined if joined.count("\0") == len(texts) - 1 else texts)

    def grams(self, slot: int) -> Grams:
        """The n-grams of the item in `slot`, made again from its texts."""
        texts = self.texts[slot]
        return Grams.of(list(zip(self.roles[slot], texts.split("\0") if isinstance(texts, str) else texts)),
                        self.options.ngram)

    def candidate_slots(self, signature: np.ndarray) -> np.ndarray:
        """The slots of the indexed items that equal `signature` in all values of some band (the LSH's candidates)
        and agree with it in at least `agreement_floor` places (one numpy comparison for all of them): false
        candidates grow with the number of indexed examples (about 7 in 10,000 pairs of English alpaca rows share
        a band at --near 0.8), and checking each exactly was quadratic."""
        slots = self.table.query(signature)
        if not len(slots):
            return slots
        equal = self.values[slots] == signature
        banded = equal[:, : self.bands * self.rows].reshape(len(slots), self.bands, self.rows).all(axis=2)
        return slots[banded.any(axis=1) & (equal.sum(axis=1) >= self.agree)]

    def candidates(self, signature: np.ndarray) -> list[str]:
        """The keys of `candidate_slots`."""
        return [self.keys[slot] for slot in self.candidate_slots(signature).tolist()]

    def best_match(self, grams: Grams, signature=None, group: str = "") -> tuple[str, float] | None:
        """The most similar indexed key of the same group with exact Jaccard >= threshold, or None (of equal
        scores, the first key in sorted order)."""
        if not grams:
            return None
        signature = signature if signature is not None else self.signature(grams)
        best = None
        for key, slot in sorted((self.keys[slot], slot) for slot in self.candidate_slots(signature).tolist()):
            if self.groups[slot] != group:
                continue
            score = similarity(grams, self.grams(slot))
            if score >= self.options.near_threshold and (best is None or score > best[1]):
                best = (key, score)
        return best


def agreement_floor(threshold: float, num_perm: int, miss: float = 1e-6) -> int:
    """How many of `num_perm` MinHash values a candidate must share with the query: the count that a pair whose
    Jaccard equals `threshold` falls below with probability at most `miss` (binomial, each value agreeing with
    probability equal to the Jaccard; a pair above the threshold falls below it less often)."""
    from scipy.stats import binom

    return int(binom.ppf(miss, num_perm, threshold))


def dedup_examples(examples: list[dict], options: DedupOptions) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Drop cls examples whose label loses a label conflict (`label_conflicts`, always), then exact
    (`example_hash`, unless `options.exact` is off) and near (`near_identity`; cls: of the same label) duplicates
    within `examples`; returns (kept, [(removed, reason)])."""
    conflicts = label_conflicts(examples)
    seen_hash: dict[str, dict] = {}
    index = NearIndex(options) if options.near_threshold is not None else None
    kept, removed = [], []
    for position, example in enumerate(example_bar(examples, "deduplicating")):
        if position in conflicts:
            removed.append((example, conflicts[position]))
            continue
        digest = example_hash(example)
        if options.exact and digest in seen_hash:
            removed.append((example, f"exact duplicate of {src(seen_hash[digest])}"))
            continue
        if index is not None:
            grams, group = near_grams(example, options.ngram)
            group += f"\0label:{example['label']}" if stage_of(example) == "cls" else ""
            signature = index.signature(grams) if grams else None
            match = index.best_match(grams, signature, group)
            if match is not None:
                original = kept[int(match[0])]
                removed.append((example, f"near duplicate of {src(original)} (jaccard {match[1]:.2f})"))
                continue
            if grams:
                index.add(str(len(kept)), grams, signature, group)
        seen_hash.setdefault(digest, example)
        kept.append(example)
    return kept, removed


def label_conflicts(examples: list[dict]) -> dict[int, str]:
    """{position: why} of the cls examples to remove because copies of their text (`example_hash`) carry other
    labels: the label with the most copies wins and only the copies with another label are listed; when labels
    tie for the most copies, every copy is. Each reason starts with "label conflict:"."""
    groups: dict[str, list[int]] = {}
    for position, example in enumerate(examples):
        if stage_of(example) == "cls":
            groups.setdefault(example_hash(example), []).append(position)
    out = {}
    for positions in groups.values():
        counts = Counter(examples[p]["label"] for p in positions)
        if len(counts) < 2:
            continue
        ranked = counts.most_common()
        labels = ", ".join(f"{label!r} {count}x" for label, count in ranked)
        if ranked[0][1] == ranked[1][1]:
            for p in positions:
                out[p] = f"label conflict: the same text has labels {labels}; a tie, so every copy is removed"
            continue
        winner = ranked[0][0]
        kept_at = src(examples[next(p for p in positions if examples[p]["label"] == winner)])
        for p in positions:
            if examples[p]["label"] != winner:
                out[p] = (f"label conflict: label {examples[p]['label']!r}, but the same text has labels {labels}; "
                          f"kept the majority {winner!r} ({kept_at})")
    return out


def find_leaks(train: list[dict], eval_sets: dict[str, list[dict]], options: DedupOptions) -> list[dict]:
    """Training examples that equal or nearly equal an example of an evaluation set (exact: `example_hash`; near:
    `near_identity`, as in `dedup_examples`).

    Returns one record per leaking training example: its index, src, the eval set name, the eval src,
    the kind (exact/near) and the similarity.
    """
    hashes: dict[str, tuple[str, dict]] = {}
    index = NearIndex(options) if options.near_threshold is not None else None
    owners: dict[str, tuple[str, dict]] = {}
    for name, examples in eval_sets.items():
        for position, example in enumerate(examples):
            hashes.setdefault(example_hash(example), (name, example))
            if index is None:
                continue
            grams, group = near_grams(example, options.ngram)
            if grams:
                key = f"{name}#{position}"
                index.add(key, grams, group=group)
                owners[key] = (name, example)
    leaks = []
    for position, example in enumerate(example_bar(train, "checking leakage")):
        hit = hashes.get(example_hash(example))
        if hit is not None:
            leaks.append(_leak(position, example, hit, "exact", 1.0))
        elif index is not None:
            grams, group = near_grams(example, options.ngram)
            match = index.best_match(grams, group=group)
            if match is not None:
                leaks.append(_leak(position, example, owners[match[0]], "near", match[1]))
    return leaks


def _leak(position: int, example: dict, hit: tuple[str, dict], kind: str, score: float) -> dict:
    return {"train_index": position, "train_src": src(example), "eval_set": hit[0], "eval_src": src(hit[1]),
            "kind": kind, "jaccard": round(score, 4)}
