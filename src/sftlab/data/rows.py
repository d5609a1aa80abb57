"""Token rows held as flat numpy arrays, saved and memory-mapped as `.npy` files.

    rows = TokenRows.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[-100, 2, 3], [-100, 5]]})
    len(rows), rows.column_names, rows[0], rows["input_ids"], rows.lengths(), rows.select([1])
    rows.save(folder); TokenRows.load(folder)          # np.load(mmap_mode="r"): rows stay on disk until read

The training process reads its token rows through this class instead of `datasets.Dataset`: importing
`datasets` (with pyarrow and pandas) costs about 80 MiB of resident memory in every training process,
for nothing the loop needs. A column is either ragged (one list of ints per row: `values` flat,
`offsets` of length rows + 1) or scalar (one int per row, cls labels). Values are int32 (token ids,
labels with -100, position ids), except scalar columns, which keep int64. Reading a row gives plain
Python lists and ints, as `datasets` does, so collators and tests see the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from sftlab.errors import SftlabError

FORMAT = "sftlab-token-rows/1"


class TokenRows:
    """An immutable table of token rows: ragged int32 columns (values + offsets) and scalar int64 columns."""

    def __init__(self, columns: dict[str, tuple[np.ndarray, np.ndarray | None]]):
        sizes = {name: len(values) if offsets is None else len(offsets) - 1 for name, (values, offsets) in columns.items()}
        if len(set(sizes.values())) > 1:
            raise SftlabError(f"token rows: columns have different row counts {sizes}")
        self._columns = columns
        self._size = next(iter(sizes.values()), 0)

    @classmethod
    def from_dict(cls, data: dict[str, Sequence]) -> "TokenRows":
        """Columns from Python lists: a list of int lists makes a ragged column, a list of ints a scalar one."""
        columns: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for name, column in data.items():
            column = list(column)
            if column and isinstance(column[0], (list, tuple, np.ndarray)):
                lengths = np.fromiter((len(row) for row in column), dtype=np.int64, count=len(column))
                offsets = np.zeros(len(column) + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                flat = np.fromiter((t for row in column for t in row), dtype=np.int32, count=int(offsets[-1]))
                columns[name] = (flat, offsets)
            else:
                columns[name] = (np.asarray(column, dtype=np.int64), None)
        return cls(columns)

    @classmethod
    def from_list(cls, rows: Sequence[dict]) -> "TokenRows":
        """Rows given as dicts (all with the same keys)."""
        names = list(rows[0]) if rows else []
        return cls.from_dict({name: [row[name] for row in rows] for name in names})

    @property
    def column_names(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(self._size))

    def __getitem__(self, key: int | str):
        """`rows[i]`: row i as a dict of lists/ints; `rows["name"]`: the column as a list (of lists)."""
        if isinstance(key, str):
            if key not in self._columns:
                raise KeyError(f"token rows have no column {key!r} (columns: {', '.join(self._columns)})")
            values, offsets = self._columns[key]
            if offsets is None:
                return values.tolist()
            return [values[offsets[i]:offsets[i + 1]].tolist() for i in range(self._size)]
        index = int(key)
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(f"row {key} is out of range for {self._size} token rows")
        return {name: values[index].item() if offsets is None else values[offsets[index]:offsets[index + 1]].tolist()
                for name, (values, offsets) in self._columns.items()}

    def lengths(self, column: str = "input_ids") -> list[int]:
        """The number of values in each row of a ragged column (read from the offsets, no row is decoded)."""
        values, offsets = self._columns[column]
        if offsets is None:
            raise SftlabError(f"token rows: column {column!r} holds one value per row, not a list")
        return np.diff(offsets).tolist()

    def select(self, indices: Sequence[int]) -> "TokenRows":
        """A new table with the given rows, in the given order."""
        return TokenRows.from_list([self[int(i)] for i in indices])

    def to_dict(self) -> dict[str, list]:
        return {name: self[name] for name in self._columns}

    def save(self, folder: str | Path) -> None:
        """Write one `.npy` per array and `rows.json` naming the columns into `folder` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        layout = {}
        for name, (values, offsets) in self._columns.items():
            np.save(folder / f"{name}.values.npy", np.ascontiguousarray(values))
            if offsets is not None:
                np.save(folder / f"{name}.offsets.npy", np.ascontiguousarray(offsets))
            layout[name] = "ragged" if offsets is not None else "scalar"
        (folder / "rows.json").write_text(json.dumps({"format": FORMAT, "rows": self._size, "columns": layout}),
                                          encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "TokenRows":
        """Open a saved table; the arrays are memory-mapped, so rows are read from disk as they are used."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "rows.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SftlabError(f"{folder / 'rows.json'}: cannot read the token rows ({exc}); delete the folder to rebuild it") from exc
        if meta.get("format") != FORMAT:
            raise SftlabError(f"{folder / 'rows.json'}: format {meta.get('format')!r} is not {FORMAT!r}; delete the folder to rebuild it")
        columns = {}
        for name, kind in meta["columns"].items():
            values = np.load(folder / f"{name}.values.npy", mmap_mode="r")
            offsets = np.load(folder / f"{name}.offsets.npy", mmap_mode="r") if kind == "ragged" else None
            columns[name] = (values, offsets)
        return cls(columns)
