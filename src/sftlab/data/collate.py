"""Token rows -> batches: padding, packing several samples per row, and length-grouped ordering.

    batch = pad_collate(rows, pad_id)              # input_ids/attention_mask/labels [B,T] (cls: labels [B])
    packed = pack_rows(rows, max_length, seed)     # TokenRows holding several samples per row
    batch = packed_collate(packed_rows, pad_id)    # input_ids/position_ids/labels [B,T], no attention_mask
    order = length_grouped_order(lengths, batch_size, seed)

Packed samples do not attend to each other: with `position_ids` restarting at 0 for each sample, no
attention_mask and no KV cache, transformers 5 (`masking_utils.find_packed_sequence_indices`) builds a
block-diagonal causal mask. The model must be called with `use_cache=False` (or `config.use_cache=False`):
otherwise it creates an empty cache, skips packed-sequence detection and lets samples attend to each
other. `tests/test_collate.py` checks, for Llama and Qwen2 with sdpa and eager attention, that a sample's
logits do not change when other samples are packed beside it and that the packed loss equals the padded
one. The first label of every packed sample is -100, so no loss term predicts one sample from the end of
the one before.
"""

from __future__ import annotations

import bisect
import random
from typing import Callable

from sftlab.errors import SftlabError

IGNORE_INDEX = -100


def pad_collate(rows: list[dict], pad_id: int) -> dict:
    """Right-pad a list of lm rows (`labels` list) or cls rows (`label` int) into tensors."""
    import torch

    if pad_id is None:
        raise SftlabError("the tokenizer has no pad token (and no EOS to pad with); set one in the tokenizer files")
    width = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"], dtype=torch.long)
        attention_mask[i, : len(row["input_ids"])] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "label" in rows[0]:
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
    else:
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row["labels"])] = torch.tensor(row["labels"], dtype=torch.long)
        batch["labels"] = labels
    return batch


def best_fit_bins(lengths: list[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Group indices into bins of total length <= capacity (best-fit decreasing); bins in seeded random order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)  # ties between equal lengths are broken by the seed
    order.sort(key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), kept sorted
    for index in order:
        size = lengths[index]
        if size > capacity:
            raise SftlabError(f"a sample of {size} tokens is longer than the packing length {capacity} (train.max_length)")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            remaining, bin_index = free.pop(slot)
        else:
            remaining, bin_index = capacity, len(bins)
            bins.append([])
        bins[bin_index].append(index)
        bisect.insort(free, (remaining - size, bin_index))
    rng.shuffle(bins)
    return bins


def pack_rows(rows, max_length: int, seed: int = 0):
    """Pack lm rows (`input_ids`, `labels`) into `TokenRows` of at most `max_length` tokens with per-sample position_ids."""
    from sftlab.data.rows import TokenRows

    if "labels" not in rows.column_names:
        raise SftlabError("data.packing applies to pt/sft token rows; classification rows cannot be packed")
    columns = rows.to_dict()
    lengths = [len(ids) for ids in columns["input_ids"]]
    packed: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for members in best_fit_bins(lengths, max_length, seed):
        ids, labels, positions = [], [], []
        for index in members:
            ids += columns["input_ids"][index]
            labels += [IGNORE_INDEX] + list(columns["labels"][index][1:])
            positions += list(range(lengths[index]))
        packed["input_ids"].append(ids)
        packed["labels"].append(labels)
        packed["position_ids"].append(positions)
    return TokenRows.from_dict(packed)


def packed_collate(rows: list[dict], pad_id: int = 0) -> dict:
    """Stack packed rows into [B, T] (T = the longest row); position_ids keep every sample's boundaries.

    Each packed row stays its own batch row, so attention costs B x T^2, not (B x T)^2 as one
    concatenated row would. A shorter row is filled with `pad_id` tokens whose labels are -100 and
    whose position_ids restart at 0, so the filler is a separate segment that no sample attends to.
    """
    import torch

    width = max(len(row["input_ids"]) for row in rows)
    batch = {key: torch.full((len(rows), width), fill, dtype=torch.long)
             for key, fill in (("input_ids", pad_id), ("labels", IGNORE_INDEX))}
    batch["position_ids"] = torch.arange(width).repeat(len(rows), 1)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        batch["labels"][i, :n] = torch.tensor(row["labels"], dtype=torch.long)
        batch["position_ids"][i, :n] = torch.tensor(row["position_ids"], dtype=torch.long)
        batch["position_ids"][i, n:] = torch.arange(width - n)
    return batch


def make_collator(packing: bool, pad_id: int) -> Callable[[list[dict]], dict]:
    """The collate function for a DataLoader: packed rows or padded rows."""
    if packing:
        return lambda rows: packed_collate(rows, pad_id if pad_id is not None else 0)
    return lambda rows: pad_collate(rows, pad_id)


def length_grouped_order(lengths: list[int], batch_size: int, seed: int = 0, mega_batches: int = 50) -> list[int]:
    """An epoch order where consecutive `batch_size` indices have similar lengths (less padding).

    Seeded shuffle, then within each window of `batch_size * mega_batches` indices sort by length
    (longest first), as transformers' length-grouped sampler does; the batch holding the longest sample
    comes first so an out-of-memory error shows at the first step.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = max(1, batch_size * mega_batches)
    grouped = []
    for start in range(0, len(order), window):
        grouped += sorted(order[start:start + window], key=lambda i: -lengths[i])
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
    return [index for batch in batches for index in batch]
