"""Canonical examples -> token rows, with length policies, honest counts and an on-disk cache.

    rows, stats = tokenize_examples(examples, tokenizer, cfg.data, cfg.train, label_names=None)
    done = tokenize(examples, tokenizer, cfg.data, cfg.train)   # .rows, .stats, .origins (the example of each row)

Token rows (DEVELOPERS.md): lm `{"input_ids", "labels"}` (labels unshifted, -100 where unsupervised),
cls `{"input_ids", "label": int}`.

- sft: each conversation is rendered and masked as `sftlab.data.templates.encode_conversation` does it, a chunk of
  them at a time (`render_conversation`, then `encode_rendered_batch`: one tokenizer call per chunk). Longer than
  `train.max_length`: `data.truncation=drop` drops it; `left` cuts tokens from the left (keeping a leading
  BOS) so the last answer stays whole, and drops the sample when the answer alone does not fit (with
  `data.mask=all` every token is supervised, so `left` simply keeps the last max_length tokens). A sample
  left with no supervised token is dropped. Every drop and cut is counted in `TokenizeStats`. With
  `data.mask=each_assistant` a conversation becomes one sample per assistant turn (the conversation up to
  it, that turn supervised), and the counts are of those samples.
- pt: `concat` tokenizes each document (tokenizer's special tokens, EOS appended), joins them and cuts
  `max_length` blocks; the shorter tail block is kept and its size reported. `document` keeps one
  document per row, truncated to max_length (the documents and the tokens cut from their ends counted).
- cls: text with the tokenizer's special tokens (truncated to max_length, the texts and tokens cut counted),
  label -> index in the label set (`data.labels`, else the labels seen in train sorted, numerically when all
  are integers).

`tokenize` also gives each row's origin: the index of its example and, for sft, the number of messages of its
sample (each_assistant: the conversation up to the supervised turn), so rows can be traced back to `file:line`
and resampled by label (`sftlab.data.pipeline`); `retotal` recounts the statistics of a resampled set of rows.
pt concat blocks have no origin.

Rows go through the on-disk cache of `sftlab.data.token_cache` (the entry named by the examples, the tokenizer,
the settings above and this code; pruned to `data.cache_max_gb`).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.config.schema import DataConfig, TrainConfig
from sftlab.data.rows import TokenRows
from sftlab.data.token_cache import cache_key, cache_root, mark_used, prune_cache
from sftlab.data.unknown_tokens import UnknownTokens
from sftlab.errors import SftlabError
from sftlab.io import atomic_dir, atomic_write_json

IGNORE_INDEX = -100


@dataclasses.dataclass
class TokenizeStats:
    """What tokenisation did: counts of rows, drops and cuts, tokens, labels, and whether the cache served it."""

    examples: int = 0
    rows: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    dropped_too_long: int = 0
    dropped_answer_too_long: int = 0
    dropped_no_supervised: int = 0
    cut_left: int = 0
    truncated: int = 0
    truncated_tokens: int = 0  # tokens cut from the ends of the truncated samples (pt documents, cls texts)
    unknown_tokens: int = 0  # the tokenizer's unknown token ([UNK], <unk>) in the kept rows: text it cannot represent
    unknown_first: str = ""  # file:line of the first example holding one
    tail_tokens: int = 0
    label_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    cache_hit: bool = False
    cache_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def label_set(examples: list[dict], data_cfg: DataConfig) -> list[str]:
    """The cls label names: `data.labels` when given, else the labels seen, sorted (numerically if all integers)."""
    if data_cfg.labels:
        return list(data_cfg.labels)
    seen = {ex["label"] for ex in examples}
    if all(label.lstrip("-").isdecimal() for label in seen):  # isdigit would pass "²", which int() refuses
        return sorted(seen, key=int)
    return sorted(seen)


@dataclasses.dataclass
class Tokenized:
    """Token rows, their statistics, and per row its origin: (example index, messages in its sample; -1 for cls/pt)."""

    rows: TokenRows
    stats: TokenizeStats
    origins: list[tuple[int, int]]


def tokenize_examples(examples: list[dict], tokenizer, data_cfg: DataConfig, train_cfg: TrainConfig,
                      label_names: list[str] | None = None) -> tuple[TokenRows, TokenizeStats]:
    """Token rows (`sftlab.data.rows.TokenRows`) and `TokenizeStats` for canonical `examples`, through the cache."""
    done = tokenize(examples, tokenizer, data_cfg, train_cfg, label_names)
    return done.rows, done.stats


def tokenize(examples: list[dict], tokenizer, data_cfg: DataConfig, train_cfg: TrainConfig,
             label_names: list[str] | None = None) -> Tokenized:
    """`tokenize_examples` with the origin of every row (`Tokenized`), through the cache."""
    stage = train_cfg.stage
    if stage == "cls":
        label_names = label_names or label_set(examples, data_cfg)
        _check_labels(examples, label_names)
    settings = _settings(data_cfg, train_cfg, label_names)
    folder = cache_root(data_cfg) / cache_key(examples, tokenizer, settings)
    if (folder / "stats.json").is_file() and (folder / "origins.npy").is_file():
        mark_used(folder)
        try:
            stats = TokenizeStats(**json.loads((folder / "stats.json").read_text(encoding="utf-8")))
            stats.cache_hit, stats.cache_path = True, str(folder)
            return Tokenized(TokenRows.load(folder / "rows"), stats, _load_origins(folder / "origins.npy"))
        except (OSError, SftlabError):
            if folder.is_dir():  # a broken entry; one that another run's pruning just removed is tokenised anew
                raise
    rows, stats, origins = _tokenize(examples, tokenizer, settings, data_cfg.num_workers)
    stats.cache_path = str(folder)
    if stats.rows == 0:
        raise SftlabError(f"data: no example is left after tokenisation ({_drop_summary(stats)}); "
                          "check train.max_length / data.truncation")
    with atomic_dir(folder, overwrite=True) as tmp:
        TokenRows.from_dict(rows).save(tmp / "rows")
        np.save(tmp / "origins.npy", np.asarray(origins, dtype=np.int64).reshape(-1, 2))
        atomic_write_json(tmp / "stats.json", stats.to_dict())
    mark_used(folder)
    prune_cache(folder.parent, data_cfg.cache_max_gb)
    return Tokenized(TokenRows.load(folder / "rows"), stats, origins)


def _load_origins(path: Path) -> list[tuple[int, int]]:
    return [(int(index), int(end)) for index, end in np.load(path).tolist()]


def retotal(stats: TokenizeStats, rows: TokenRows, label_names: list[str] | None = None) -> TokenizeStats:
    """`stats` with the totals (rows, tokens, supervised tokens, cls label counts) of `rows`, a resampled selection
    of the rows `stats` counted; what tokenisation dropped or cut stays as counted."""
    lengths = rows.lengths()
    new = dataclasses.replace(stats, rows=len(rows), tokens=int(sum(lengths)), label_counts={})
    if "label" in rows.column_names:
        names = label_names or []
        new.label_counts = {name: 0 for name in names}
        for index in rows["label"]:
            new.label_counts[names[index]] += 1
    else:
        new.supervised_tokens = sum(sum(1 for t in row[1:] if t != IGNORE_INDEX) for row in rows["labels"])
    return new


def _drop_summary(stats: TokenizeStats) -> str:
    return (f"{stats.examples} examples: {stats.dropped_too_long} too long, {stats.dropped_answer_too_long} with an answer "
            f"longer than max_length, {stats.dropped_no_supervised} without supervised tokens")


def _check_labels(examples: list[dict], label_names: list[str]) -> None:
    known = set(label_names)
    for ex in examples:
        if ex["label"] not in known:
            shown = ", ".join(label_names[:10]) + (", ..." if len(label_names) > 10 else "")
            raise SftlabError(f"{ex.get('_src', 'example')}: label {ex['label']!r} is not in the label set ({shown}); see data.labels")


def _settings(data_cfg: DataConfig, train_cfg: TrainConfig, label_names: list[str] | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"stage": train_cfg.stage, "max_length": train_cfg.max_length}
    if train_cfg.stage == "sft":
        settings.update(template=data_cfg.template, mask=data_cfg.mask, truncation=data_cfg.truncation)
    elif train_cfg.stage == "pt":
        settings["pt_mode"] = data_cfg.pt_mode
    else:
        settings["label_names"] = list(label_names or [])
    return settings


# ----------------------------------------------------------------------------------------------- tokenising


def _tokenize(examples: list[dict], tokenizer, settings: dict,
              num_workers: int) -> tuple[dict[str, list], TokenizeStats, list[tuple[int, int]]]:
    stage = settings["stage"]
    public = [{k: v for k, v in ex.items() if not k.startswith("_")} | {"_src": ex.get("_src", "")} for ex in examples]
    mapper = {"sft": _encode_sft_batch, "pt": _each(_encode_pt_document), "cls": _each(_encode_cls)}[stage]
    encoded, origins = [], []
    for index, rows in enumerate(_encode_all(mapper, public, tokenizer, settings, num_workers)):
        for row in rows if isinstance(rows, list) else [rows]:  # each_assistant: a list per conversation
            encoded.append(row)
            origins.append((index, row.get("end", -1)))
    key = "label" if stage == "cls" else "labels"
    columns = {name: [row[name] for row in encoded] for name in ("input_ids", key, "status")}
    stats = TokenizeStats(examples=len(encoded))
    status = columns["status"]
    for name in ("dropped_too_long", "dropped_answer_too_long", "dropped_no_supervised", "cut_left", "truncated"):
        setattr(stats, name, status.count(name))
    stats.truncated_tokens = sum(row.get("cut", 0) for row in encoded)
    keep = [i for i, s in enumerate(status) if not s.startswith("dropped")]
    input_ids = [columns["input_ids"][i] for i in keep]
    targets = [columns[key][i] for i in keep]
    origins = [origins[i] for i in keep]
    unknown = UnknownTokens(getattr(tokenizer, "unk_token_id", None))
    for ids, (index, _) in zip(input_ids, origins):
        unknown.add(ids, public[index]["_src"])
    stats.unknown_tokens, stats.unknown_first = unknown.count, unknown.first or ""
    if stage == "pt" and settings["pt_mode"] == "concat":
        stats.truncated = 0  # concat cuts blocks; nothing is truncated
        input_ids, stats.tail_tokens = _concat_blocks(input_ids, settings["max_length"])
        targets, origins = [list(ids) for ids in input_ids], []
    stats.rows = len(input_ids)
    stats.tokens = sum(len(ids) for ids in input_ids)
    if stage == "cls":
        names = settings["label_names"]
        stats.label_counts = {name: 0 for name in names}
        for index in targets:
            stats.label_counts[names[index]] += 1
        stats.supervised_tokens = 0
    else:
        # counted as the loss counts them: a row's first token is never predicted
        stats.supervised_tokens = sum(sum(1 for t in row[1:] if t != IGNORE_INDEX) for row in targets)
    return {"input_ids": input_ids, key: targets}, stats, origins


_WORK: tuple = ()  # (mapper, examples, tokenizer, settings) for forked tokenising workers
_CHUNK = 256  # examples per batch mapper call: the fast tokenizer encodes their texts in one call


def _each(mapper):
    """A batch mapper (a list of examples -> their rows) from a one-example mapper."""
    return lambda examples, tokenizer, settings: [mapper(ex, tokenizer, settings) for ex in examples]


def _encode_range(bounds: tuple[int, int]) -> list[dict]:
    mapper, examples, tokenizer, settings = _WORK
    return [row for at in range(bounds[0], bounds[1], _CHUNK)
            for row in mapper(examples[at:min(at + _CHUNK, bounds[1])], tokenizer, settings)]


def _encode_all(mapper, examples: list[dict], tokenizer, settings: dict, num_workers: int) -> list[dict]:
    """Batch `mapper` over every example, in order, with a progress bar; with num_workers > 1 in that many forked
    processes."""
    from tqdm.auto import tqdm

    from sftlab.progress import bars_shown

    global _WORK
    workers = num_workers if "fork" in multiprocessing.get_all_start_methods() else 1
    step = max(1, min(1000, -(-len(examples) // (workers * 4))))
    bounds = [(start, min(start + step, len(examples))) for start in range(0, len(examples), step)]
    bar = tqdm(total=len(examples), desc=f"tokenizing ({settings['stage']})", unit="examples", dynamic_ncols=True,
               disable=not bars_shown())
    _WORK = (mapper, examples, tokenizer, settings)
    try:
        with multiprocessing.get_context("fork").Pool(workers) if workers > 1 else _NoPool() as pool:
            rows = []
            for part in pool.imap(_encode_range, bounds):
                rows += part
                bar.update(len(part))
            return rows
    finally:
        _WORK = ()
        bar.close()


class _NoPool:
    """The in-process stand-in for `multiprocessing.Pool` when one worker is asked for."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    imap = staticmethod(map)


def _concat_blocks(documents: list[list[int]], max_length: int) -> tuple[list[list[int]], int]:
    """Join documents (each already ending in EOS) and cut full blocks; the tail block is kept, its length returned."""
    stream = [token for doc in documents for token in doc]
    blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    tail = len(blocks[-1]) if blocks and len(blocks[-1]) < max_length else 0
    if tail == 1:  # a one-token block has nothing to predict
        blocks.pop()
    return blocks, tail


def _encode_pt_document(example: dict, tokenizer, settings: dict) -> dict:
    ids = tokenizer(example["text"], add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    if settings["pt_mode"] == "document" and len(ids) > settings["max_length"]:
        cut = len(ids) - settings["max_length"]
        ids = ids[: settings["max_length"]]
        return {"input_ids": ids, "labels": list(ids), "status": "truncated", "cut": cut}
    return {"input_ids": ids, "labels": list(ids), "status": "ok"}


def _encode_cls(example: dict, tokenizer, settings: dict) -> dict:
    max_length = settings["max_length"]
    ids = tokenizer(example["text"], add_special_tokens=True)["input_ids"]
    row = {"label": settings["label_names"].index(example["label"]), "status": "ok"}
    if len(ids) > max_length:
        full = len(ids)
        ids = tokenizer(example["text"], add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        row.update(status="truncated", cut=full - len(ids))
    return {"input_ids": ids, **row}


def _encode_sft_batch(examples: list[dict], tokenizer, settings: dict) -> list[dict | list[dict]]:
    """Per example one token row; with mask each_assistant a list, one row per assistant turn (the conversation up
    to it)."""
    out = []
    for samples in encode_samples(examples, tokenizer, settings["template"], settings["mask"]):
        rows = [_fit_row(ids, labels, end, tokenizer, settings) for ids, labels, end in samples]
        out.append(rows if settings["mask"] == "each_assistant" else rows[0])
    return out


def encode_samples(examples: list[dict], tokenizer, template: str, mask: str) -> list[list[tuple[list, list, int]]]:
    """Per sft example, (ids, labels, messages in the sample) of each sample `mask` makes of it (one; each_assistant:
    one per assistant turn, `sftlab.data.messages.mask_samples`), before any length policy. Every sample is rendered
    first (`render_conversation`), then all their texts are tokenized in one call (`encode_rendered_batch`); `sftlab
    data stats` counts with it too."""
    from sftlab.data.messages import mask_samples
    from sftlab.data.templates import encode_rendered_batch, render_conversation

    rendered, ends, srcs, counts = [], [], [], []
    for example in examples:
        messages, tools, src = [dict(m) for m in example["messages"]], example.get("tools"), example.get("_src") or None
        samples = mask_samples(messages, mask)
        counts.append(len(samples))
        for sample, sample_mask in samples:
            rendered.append(render_conversation(tokenizer, sample, template=template, mask=sample_mask, src=src,
                                                tools=tools))
            ends.append(len(sample))
            srcs.append(src)
    encoded = [(ids, labels, end) for (ids, labels), end in zip(encode_rendered_batch(tokenizer, rendered, srcs), ends)]
    out, at = [], 0
    for count in counts:
        out.append(encoded[at:at + count])
        at += count
    return out


def _fit_row(ids: list[int], labels: list[int], end: int, tokenizer, settings: dict) -> dict:
    ids, labels, status = fit_length(ids, labels, settings["max_length"], settings["truncation"],
                                     settings["mask"] == "all", tokenizer.bos_token_id)
    if status == "ok" or status == "cut_left":
        if all(label == IGNORE_INDEX for label in labels):
            status = "dropped_no_supervised"
    return {"input_ids": ids, "labels": labels, "status": status, "end": end}


def fit_length(ids: list[int], labels: list[int], max_length: int, policy: str, all_supervised: bool = False,
               bos_id: int | None = None) -> tuple[list[int], list[int], str]:
    """Apply `data.truncation` to one sft sample: ("ok" | "cut_left" | "dropped_too_long" | "dropped_answer_too_long")."""
    if len(ids) <= max_length:
        return ids, labels, "ok"
    if policy == "drop":
        return ids, labels, "dropped_too_long"
    head = 1 if bos_id is not None and ids and ids[0] == bos_id else 0
    if not all_supervised:
        marks = np.asarray(labels) != IGNORE_INDEX
        supervised = np.flatnonzero(marks)
        if not len(supervised):
            return ids, labels, "dropped_no_supervised"
        gaps = np.flatnonzero(~marks[:supervised[-1]])  # the last answer starts after the last gap before its end
        start = int(gaps[-1]) + 1 if len(gaps) else 0
        if len(ids) - start + head > max_length:
            return ids, labels, "dropped_answer_too_long"
    keep = max_length - head
    return ids[:head] + ids[-keep:], labels[:head] + labels[-keep:], "cut_left"
