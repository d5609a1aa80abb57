"""Compact n-gram sets for near-duplicate detection (`dedup`): each example's role-tagged character n-grams as
sorted numpy arrays of integer codes, their exact Jaccard similarity, the 32-bit values its MinHash takes, and
the MinHash signature itself (`MinHasher`, numpy, equal to datasketch's `MinHash`).

    grams = Grams.of([("user", "abcd"), ("assistant", "efgh")], n=3)
    similarity(grams, other)          # |a & b| / |a | b| over (role, n-gram) pairs
    minhash_values(grams)             # one 32-bit value per (role, n-gram)
    MinHasher(128, seed=1).signature(grams)   # 128 uint32 minima

A set of n-gram strings costs about 80 bytes per n-gram in Python (a string object and a set slot, ~20 KB per
example of a few hundred characters, so ~20 GB for a million examples); a code costs 8 bytes, and the codes of
one text are computed with numpy rather than one Python object per n-gram. For n <= 3 a code is the n-gram's
code points, 21 bits each, so two different n-grams never share a code and the similarity is exactly the Jaccard
of the n-gram sets (`dedup.jaccard` of `dedup.shingles`, per role); above 3 it is a 64-bit polynomial hash of
the code points, where two different n-grams share a code with a probability of about 2^-64 per pair.
A `Grams` also keeps the (role, text) pairs it was made of (`texts`): an index keeps those (about a byte per
character) rather than the codes and makes the codes again for the few candidates it checks exactly.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

_EXACT_N = 3                      # 3 x 21 bits fit in 63: every code point is below 0x110000
_BASE_EXACT = np.uint64(1 << 21)
_BASE_HASH = np.uint64(0x100000001B3)  # FNV prime, odd: a polynomial hash modulo 2^64 above `_EXACT_N`
_EMPTY = np.empty(0, dtype=np.uint64)


def gram_codes(key: str, n: int) -> np.ndarray:
    """Sorted distinct codes of the character n-grams of `key` (a `dedup.dedup_key` text, so every code point is
    at least 1); the whole key is one gram when it has n characters or fewer (as `dedup.shingles` takes it)."""
    if not key:
        return _EMPTY
    points = np.frombuffer(key.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    width = min(n, len(points))
    count = len(points) - width + 1
    base = _BASE_EXACT if n <= _EXACT_N else _BASE_HASH
    codes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(width):
            codes = codes * base + points[offset : offset + count]
    return np.unique(codes)


@dataclass(frozen=True)
class Grams:
    """An example's n-grams per role (`parts`: role -> sorted distinct codes), how many in all (`size`), and what
    they were made of (`texts`: the (role, normalised text) pairs), so that `Grams.of(grams.texts, n)` makes them
    again."""

    parts: dict[str, np.ndarray]
    size: int
    texts: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, texts: list[tuple[str, str]], n: int) -> "Grams":
        """The n-grams of each (role, normalised text), those of one role's texts merged."""
        by_role: dict[str, list[np.ndarray]] = {}
        for role, key in texts:
            codes = gram_codes(key, n)
            if len(codes):
                by_role.setdefault(role, []).append(codes)
        parts = {role: arrays[0] if len(arrays) == 1 else np.unique(np.concatenate(arrays))
                 for role, arrays in by_role.items()}
        return cls(parts, sum(len(codes) for codes in parts.values()), tuple(texts))

    def __bool__(self) -> bool:
        return self.size > 0


def similarity(a: Grams, b: Grams) -> float:
    """Jaccard similarity of two examples' (role, n-gram) sets; 1.0 for two empty ones."""
    if not a.size and not b.size:
        return 1.0
    common = sum(len(np.intersect1d(codes, b.parts[role], assume_unique=True))
                 for role, codes in a.parts.items() if role in b.parts)
    return common / (a.size + b.size - common)


def mix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads structured codes over all 64 bits (a bijection of uint64; also the
    band keys' mixer, `bands`)."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(33))
        values = values * np.uint64(0xFF51AFD7ED558CCD)
        values = values ^ (values >> np.uint64(33))
        values = values * np.uint64(0xC4CEB9FE1A85EC53)
        return values ^ (values >> np.uint64(33))


@functools.lru_cache(maxsize=64)
def _role_salt(role: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha1(role.encode("utf-8")).digest()[:8], "little"))


def minhash_values(grams: Grams) -> np.ndarray:
    """One 32-bit value per (role, n-gram), in the order of `grams.parts`, for a MinHash whose hash function is
    the identity: the MinHash only proposes candidates, which `similarity` then checks, so a rare shared value
    costs nothing."""
    if not grams.parts:
        return np.empty(0, dtype=np.uint32)
    return np.concatenate([(mix64(codes ^ _role_salt(role)) >> np.uint64(32)).astype(np.uint32)
                           for role, codes in grams.parts.items()])


class MinHasher:
    """MinHash signatures of `Grams`: for each of `num_perm` affine permutations h -> a*h + b (mod 2^32, `a` odd)
    of MurmurHash3's 32-bit finaliser of each `minhash_values` value, the minimum. The permutations are drawn as
    datasketch (2.x) draws them for `MinHash(num_perm, seed)`, so a signature equals the `hashvalues` of
    `MinHash(num_perm=num_perm, seed=seed, hashfunc=int)` after `update_batch(minhash_values(grams))`."""

    def __init__(self, num_perm: int, seed: int):
        generator = np.random.RandomState(seed)
        self.a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)

    def signature(self, grams: Grams, chunk: int = 4096) -> np.ndarray:
        """The `num_perm` minima (uint32); all 2^32 - 1 for empty grams. Values are taken `chunk` at a time, so a long
        document needs chunk x num_perm x 4 bytes (2 MB) at once rather than that per n-gram of it."""
        minima = np.full(len(self.a), 0xFFFFFFFF, dtype=np.uint32)
        values = _fmix32(minhash_values(grams))
        for start in range(0, len(values), chunk):
            with np.errstate(over="ignore"):
                hashed = values[start : start + chunk, None] * self.a + self.b
            np.minimum(minima, hashed.min(axis=0), out=minima)
        return minima


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (uint32 in, uint32 out)."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint32(16))
        values = values * np.uint32(0x85EBCA6B)
        values = values ^ (values >> np.uint32(13))
        values = values * np.uint32(0xC2B2AE35)
        return values ^ (values >> np.uint32(16))
