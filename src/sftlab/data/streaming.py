"""pt on corpora larger than memory: data.train read as a `datasets` stream, shuffled in a buffer, resumable.

    prepared = prepare_streaming(cfg, tokenizer, base_dir)    # with data.streaming=true (stage pt)
    for rows, groups, position in prepared.train.steps(global_batch, grad_accum, StreamPosition(seed=0)): ...

Documents come from `datasets.load_dataset(<json|text|csv|parquet>, data_files=..., streaming=True)`, one
file type per run, the text in column `data.columns.text` (default "text"; .txt files: one document per
line; a .csv header's names count without their surrounding spaces and its text cells are read as written, "123"
and "NA" included, as the in-memory reader reads them); `data.max_samples` keeps the first documents of the files.
Epoch `e` reads them through
`IterableDataset.shuffle(seed=train.seed, buffer_size=data.shuffle_buffer)` with `set_epoch(e)`. Each
document is tokenized like the in-memory pt path (`sftlab.data.tokenize`: special tokens, EOS appended):
`concat` joins them and cuts
`train.max_length` blocks (a shorter tail block at the end of an epoch is kept unless it has one token),
`document` keeps one truncated document per row. Every label is supervised.

In `document` mode each position also carries `StreamCounts`: the documents turned into trained rows so far and
those cut to `train.max_length`, with the tokens cut (a document trained in two epochs counts twice). The
counts of the position after a step are those of the rows trained up to it; a checkpoint stores them beside the
position (`stream_counts` in its sidecar) and a resumed run goes on from them, so its totals equal an
uninterrupted run's. The run reports them at its end (`StreamCounts.metrics` in metrics.json, `StreamCounts.line`
in the run log), as the in-memory path reports the documents it truncated in data_stats.json.

The documents are those the in-memory reader would read: blank .txt lines are skipped, and an empty or blank file,
bytes that are not UTF-8, a malformed JSON line and a record whose text is missing, null, not a string or blank fail
with the in-memory path's one-line error naming the `file:line` (`sftlab.data.stream_checks`). The stream is read
up to its first row while the run is set up, so a corpus that fails there leaves no output behind; a bad record
further on stops the run when a step reaches it.

A `StreamPosition` (epoch, document, offset, seed) says where the next block starts: `offset` tokens into
the token stream that begins at document `document` of the epoch's shuffled order. A checkpoint stores it;
resuming reads the shuffled order again, skips `document` documents without tokenizing them and drops
`offset` tokens, so the continuation is exactly the uninterrupted one. Micro-batches may span an epoch
boundary. The validation file (data.validation) is small and is tokenized in memory as usual.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sftlab.data.preview import drop_line
from sftlab.data.stream_checks import csv_header_problem, empty_file, find_problem, quiet_reader_logs, text_problem
from sftlab.errors import SftlabError

BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class StreamCounts:
    """`document` mode: documents turned into trained rows so far, those cut to train.max_length, the tokens cut."""

    documents: int = 0
    truncated: int = 0
    truncated_tokens: int = 0

    def add(self, cut: int) -> "StreamCounts":
        """These counts and one more trained document, `cut` tokens cut from its end."""
        return StreamCounts(self.documents + 1, self.truncated + (cut > 0), self.truncated_tokens + cut)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "truncated": self.truncated, "truncated_tokens": self.truncated_tokens}

    @classmethod
    def from_dict(cls, saved: dict) -> "StreamCounts":
        return cls(**{key: int(saved.get(key, 0)) for key in ("documents", "truncated", "truncated_tokens")})

    def metrics(self) -> dict:
        """metrics.json's entries: streamed_documents, truncated, truncated_tokens."""
        return {"streamed_documents": self.documents, "truncated": self.truncated,
                "truncated_tokens": self.truncated_tokens}

    def line(self, max_length: int) -> str | None:
        """The run log's 'data: truncated 3 of 40 streamed train documents to train.max_length=512 (1,204 tokens
        cut); metrics.json counts them', None when none was cut (`sftlab.data.preview.drop_line`'s wording)."""
        stats = {"examples": self.documents, "truncated": self.truncated, "truncated_tokens": self.truncated_tokens}
        return drop_line("streamed train", stats, max_length, "", noun="documents", ledger="metrics.json")


@dataclass
class StreamPosition:
    """Where the next row starts: epoch, documents fully before it in that epoch's order, tokens into the rest;
    with the counts of the rows before it (stored beside the position, not in it: `to_dict` locates the row)."""

    epoch: int = 0
    document: int = 0
    offset: int = 0
    seed: int = 0
    counts: StreamCounts = field(default_factory=StreamCounts, compare=False)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "document": self.document, "offset": self.offset, "seed": self.seed}


class TokenStream:
    """Token rows of a pt corpus read lazily from files (see the module docstring)."""

    def __init__(self, files: list[str], builder: str, text_column: str, tokenizer, max_length: int, pt_mode: str,
                 shuffle_buffer: int, max_samples: int | None = None):
        self.files, self.builder, self.text_column = files, builder, text_column
        self.tokenizer, self.max_length, self.pt_mode = tokenizer, max_length, pt_mode
        self.shuffle_buffer, self.max_samples = shuffle_buffer, max_samples

    def documents(self, epoch: int, seed: int) -> Iterator[str]:
        """The epoch's document texts in shuffled order: blank .txt lines are skipped, as the in-memory reader skips
        them, and a record whose text is missing, not a string or blank fails naming its `file:line`
        (`sftlab.data.stream_checks`), as does a file `datasets` cannot read (bytes that are not UTF-8, bad JSON)."""
        column = "text" if self.builder == "text" else self.text_column
        records = iter(self._read(lambda: self._open(epoch, seed)))
        while True:
            record = self._read(lambda: next(records, None))
            if record is None:
                return
            if self.builder == "csv":  # header names without their spaces, as the in-memory reader's (`header_names`)
                record = {name.strip(): value for name, value in record.items()}
                if all(isinstance(value, str) and not value.strip() for value in record.values()):
                    continue  # a row of blank fields: the in-memory reader skips it too
            if column not in record:
                raise SftlabError(f"data.train {self.files[0]}: no column {column!r} (columns: {', '.join(record)}); "
                                  "set data.columns.text")
            text = record[column]
            if self.builder == "text" and isinstance(text, str) and not text.strip():
                continue
            problem = text_problem(text, column)
            if problem:  # the first bad record in file order, with its file:line (this one's is not known)
                raise SftlabError(self._problem() or f"data.train {self.files[0]}: a document has a {problem}")
            yield text

    def _open(self, epoch: int, seed: int):
        from datasets import load_dataset

        quiet_reader_logs()
        options = csv_options(self.files, self.text_column) if self.builder == "csv" else {}
        stream = load_dataset(self.builder, data_files=self.files, split="train", streaming=True, **options)
        names = [name.strip() for name in stream.column_names or [self.text_column]]
        if self.builder != "text" and self.text_column not in names:
            raise SftlabError(f"data.train {self.files[0]}: no column {self.text_column!r} "
                              f"(columns: {', '.join(names)}); set data.columns.text")
        if self.max_samples is not None:  # the first documents of the files, the same ones every epoch
            stream = stream.take(self.max_samples)
        stream = stream.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
        stream.set_epoch(epoch)
        return stream

    def _read(self, call):
        """`call()`, with a failure of `datasets` or pyarrow reading the files turned into the one-line error of the
        first problem `find_problem` finds in them (re-raised as it is when it finds none)."""
        try:
            return call()
        except SftlabError:
            raise
        except Exception:  # noqa: BLE001 - UnicodeDecodeError, ArrowInvalid, ...: name the file and line if we can
            problem = self._problem()
            if problem is None:
                raise
            raise SftlabError(problem) from None

    def _problem(self) -> str | None:
        return find_problem(self.files, self.builder, self.text_column)

    def check_start(self, seed: int) -> None:
        """Read the stream up to its first row, as the first step will (a shuffle buffer of documents), so that an
        empty or unreadable corpus fails while the run is set up, not at its first step."""
        next(self.rows(StreamPosition(seed=seed)))

    def encode(self, text: str) -> list[int]:
        """A document's token ids with the tokenizer's special tokens and a final EOS (as the in-memory pt path),
        cut to max_length in `document` mode."""
        ids = self._ids(text)
        return ids[:self.max_length] if self.pt_mode == "document" else ids

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        return ids

    def rows(self, start: StreamPosition) -> Iterator[tuple[dict, StreamPosition]]:
        """Endless token rows from `start`, each with the position after it (and the counts up to it)."""
        epoch, document, offset, counts = start.epoch, start.document, start.offset, start.counts
        while True:
            produced = False
            for row, position in self._epoch_rows(epoch, document, offset, start.seed, counts):
                produced, counts = True, position.counts
                yield row, position
            if not produced and document == 0 and offset == 0:
                raise SftlabError(f"data.train {self.files[0]}: the stream has no document with tokens to train on")
            epoch, document, offset = epoch + 1, 0, 0

    def _epoch_rows(self, epoch: int, document: int, offset: int, seed: int,
                    counts: StreamCounts) -> Iterator[tuple[dict, StreamPosition]]:
        texts = itertools.islice(self.documents(epoch, seed), document, None)  # skipped documents are not tokenized
        if self.pt_mode == "document":
            for index, text in enumerate(texts, start=document + 1):
                full = self._ids(text)
                ids = full[:self.max_length]
                if len(ids) > 1:  # a trained row: counted
                    counts = counts.add(len(full) - len(ids))
                    yield _row(ids), StreamPosition(epoch, index, 0, seed, counts)
            return
        buffer: list[int] = []
        pending: deque[list[int]] = deque()  # [document index, its token count, tokens emitted] of buffered documents
        for index, text in enumerate(texts, start=document):
            ids = self.encode(text)
            skip = offset if index == document else 0
            buffer += ids[skip:]
            pending.append([index, len(ids), skip])
            while len(buffer) >= self.max_length:
                block, buffer = buffer[:self.max_length], buffer[self.max_length:]
                yield _row(block), _consume(pending, self.max_length, index + 1, epoch, seed)
        if len(buffer) > 1:
            yield _row(buffer), StreamPosition(epoch + 1, 0, 0, seed)

    def steps(self, global_batch: int, grad_accum: int,
              start: StreamPosition) -> Iterator[tuple[list[dict], list[list[int]], StreamPosition]]:
        """Endless optimizer steps: (rows, grad_accum micro-batch index groups into rows, position after the step)."""
        rows = self.rows(start)
        while True:
            taken = list(itertools.islice(rows, global_batch * grad_accum))
            step_rows = [row for row, _ in taken]
            groups = [list(range(i, min(i + global_batch, len(taken)))) for i in range(0, len(taken), global_batch)]
            yield step_rows, groups, taken[-1][1]


def _row(ids: list[int]) -> dict:
    return {"input_ids": list(ids), "labels": list(ids)}


def _consume(pending: deque, count: int, next_document: int, epoch: int, seed: int) -> StreamPosition:
    """Mark `count` tokens of the pending documents emitted; the position of the first token not yet emitted."""
    while count and pending:
        used = min(count, pending[0][1] - pending[0][2])
        pending[0][2] += used
        count -= used
        if pending[0][2] == pending[0][1]:
            pending.popleft()
    if not pending:  # everything read so far is emitted: the next block starts at the next document
        return StreamPosition(epoch, next_document, 0, seed)
    index, _, emitted = pending[0]
    return StreamPosition(epoch, index, emitted, seed)


def csv_options(files: list[str], text_column: str) -> dict:
    """pandas options (through `datasets`' csv builder) that read the text column as the in-memory reader reads it:
    as written, a string ("123" stays a string, "NA" or an empty cell is not a missing value). The column's name
    may have spaces around it in a file's header."""
    import csv

    names = set()
    for path in files:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            names.update(name for name in next(csv.reader(handle), None) or [] if name.strip() == text_column)
    return {"converters": {name: str for name in names}, "keep_default_na": False, "na_filter": False}


def stream_files(data_cfg, base_dir: Path | None) -> tuple[list[str], str]:
    """data.train as existing files of one type, and the `datasets` builder that reads them."""
    items = data_cfg.train if isinstance(data_cfg.train, list) else [data_cfg.train]
    files = []
    for item in items:
        if not isinstance(item, str):
            raise SftlabError("data.streaming: list data.train as plain file paths (weights and per-dataset "
                              "settings need the in-memory pipeline)")
        path = Path(item).expanduser()
        path = path if path.is_absolute() or base_dir is None else Path(base_dir) / path
        if not path.is_file():
            raise SftlabError(f"data.train {item}: no such file (data.streaming reads local files)")
        if problem := empty_file(path) or (csv_header_problem(path) if path.suffix.lower() == ".csv" else None):
            raise SftlabError(problem)
        files.append(str(path))
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in BUILDERS:
        raise SftlabError(f"data.train: data.streaming reads one file type of {', '.join(BUILDERS)}; "
                          f"got {', '.join(sorted(suffixes))}")
    return files, BUILDERS[suffixes.pop()]


def prepare_streaming(cfg, tokenizer, base_dir: Path | None = None):
    """PreparedData whose `train` is a TokenStream; validation (data.validation) is tokenized in memory."""
    from sftlab.data.pipeline import PreparedData
    from sftlab.data.sources import load_examples
    from sftlab.data.tokenize import tokenize_examples

    data_cfg = cfg.data
    from sftlab.data.balance import check_balance_stage

    check_balance_stage(data_cfg.balance, "pt")  # as the in-memory pt path refuses it
    files, builder = stream_files(data_cfg, base_dir)
    stream = TokenStream(files, builder, data_cfg.columns.get("text", "text"), tokenizer, cfg.train.max_length,
                         data_cfg.pt_mode, data_cfg.shuffle_buffer, data_cfg.max_samples)
    stream.check_start(cfg.train.seed)
    stats: dict = {"stage": "pt", "streaming": {"files": files, "shuffle_buffer": data_cfg.shuffle_buffer}}
    validation, val_examples = None, []
    if data_cfg.validation:
        if data_cfg.cache_dir and base_dir is not None and not Path(data_cfg.cache_dir).expanduser().is_absolute():
            data_cfg = data_cfg.model_copy(update={"cache_dir": str(Path(base_dir) / data_cfg.cache_dir)})
        only_validation = data_cfg.model_copy(update={"train": data_cfg.validation, "validation": None,
                                                      "max_samples": None, "streaming": False})
        val_examples, _ = load_examples(only_validation, "pt", base_dir)
        validation, val_stats = tokenize_examples(val_examples, tokenizer, data_cfg, cfg.train)
        stats["validation"] = val_stats.to_dict()
    return PreparedData(train=stream, validation=validation, stats=stats, val_examples=val_examples)
