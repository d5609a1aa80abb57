"""The banded LSH table of near-duplicate detection (`dedup.NearIndex`): which indexed MinHash signatures equal
a query's in all values of at least one band, held in numpy arrays rather than one Python object per band entry.

    table = BandTable(bands=25, rows=5)
    table.add(slot, signature)          # slot: the signature's row number in the caller's array
    table.query(signature)              # sorted distinct slots that share a band key with it

A band's `rows` values become one 64-bit key (`band_keys`). The keys live in sorted uint64 arrays with the
slots beside them (12 bytes a band entry: 300 bytes a signature at 25 bands), and the keys of the signatures added
since the last merge in a small dict, merged into the arrays every `pending_rows` signatures. Two different band
value tuples can share a key (a 64-bit hash), so the slots `query` returns are those whose keys match; the caller
compares the values themselves (`dedup.NearIndex.candidates` does): a candidate then is exactly a signature
that equals the query in all `rows` values of some band, as datasketch's `MinHashLSH` proposes them.
"""

from __future__ import annotations

import numpy as np

from sftlab.datawork.nearsets import mix64

_MULTIPLIERS = np.random.RandomState(0x5EED).randint(0, 1 << 62, 512, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


class BandTable:
    """Slots by band key for `bands` bands of `rows` consecutive signature values each (values 0 to
    bands * rows - 1, as `MinHashLSH` with `params=(bands, rows)` takes them)."""

    def __init__(self, bands: int, rows: int, pending_rows: int = 2048):
        self.bands, self.rows, self.pending_rows = bands, rows, pending_rows
        # One odd multiplier per value of the band and a salt per band, so equal values in two bands differ in key.
        self.multipliers = np.resize(_MULTIPLIERS, rows)
        self.band_salts = mix64(np.arange(1, bands + 1, dtype=np.uint64))
        # Two sorted runs of (key, slot): `young` takes the pending keys, `main` takes `young` when it has grown
        # to an eighth of `main`, so most keys are moved a few times rather than once per merge.
        self.runs = [_Run(), _Run()]
        self.pending: dict[int, int | list[int]] = {}
        self.pending_count = 0

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        """The `bands` 64-bit keys of a signature: each band's values (as uint64) times fixed odd multipliers,
        summed with the band's salt (mod 2^64), through `nearsets.mix64`."""
        values = signature[: self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            return mix64((values * self.multipliers).sum(axis=1, dtype=np.uint64) + self.band_salts)

    def add(self, slot: int, signature: np.ndarray) -> None:
        for key in self.band_keys(signature).tolist():
            held = self.pending.get(key)
            if held is None:
                self.pending[key] = slot
            elif isinstance(held, list):
                held.append(slot)
            else:
                self.pending[key] = [held, slot]
        self.pending_count += 1
        if self.pending_count >= self.pending_rows:
            self.merge()

    def merge(self) -> None:
        """Move the pending keys into the sorted runs."""
        if not self.pending:
            return
        keys, slots = [], []
        for key, held in self.pending.items():
            for slot in held if isinstance(held, list) else (held,):
                keys.append(key)
                slots.append(slot)
        order = np.argsort(np.array(keys, dtype=np.uint64), kind="stable")
        main, young = self.runs
        young.take(np.array(keys, dtype=np.uint64)[order], np.array(slots, dtype=np.uint32)[order])
        if len(young.keys) * 8 > len(main.keys):
            main.take(young.keys, young.slots)
            self.runs[1] = _Run()
        self.pending.clear()
        self.pending_count = 0

    def query(self, signature: np.ndarray) -> np.ndarray:
        """Sorted distinct slots with a band key equal to one of the signature's (uint32)."""
        keys = self.band_keys(signature)
        found = [run.find(keys) for run in self.runs if len(run.keys)]
        for key in keys.tolist():
            held = self.pending.get(key)
            if held is not None:
                found.append(np.array(held if isinstance(held, list) else [held], dtype=np.uint32))
        if not found:
            return np.empty(0, dtype=np.uint32)
        return np.unique(np.concatenate(found))


class _Run:
    """Keys sorted (uint64) and the slot of each (uint32)."""

    def __init__(self):
        self.keys = np.empty(0, dtype=np.uint64)
        self.slots = np.empty(0, dtype=np.uint32)

    def take(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Merge sorted keys (and their slots) in; equal keys keep their order, the taken ones last."""
        at = np.searchsorted(self.keys, keys, side="right")
        self.keys = np.insert(self.keys, at, keys)
        self.slots = np.insert(self.slots, at, slots)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The slots of all entries whose key is one of `keys`."""
        low = np.searchsorted(self.keys, keys, side="left")
        hit = np.flatnonzero(self.keys[np.minimum(low, len(self.keys) - 1)] == keys)
        if not len(hit):
            return np.empty(0, dtype=np.uint32)
        high = np.searchsorted(self.keys, keys[hit], side="right")
        return np.concatenate([self.slots[a:b] for a, b in zip(low[hit].tolist(), high.tolist())])
