"""The order in which training rows are visited: reproducible per epoch, resumable mid-epoch.

Epoch `e` visits the rows in the permutation drawn from `numpy.random.default_rng([seed, e])`, cut
into micro-batches of `batch_size` rows; `grad_accum` consecutive micro-batches make one optimizer
step (the last step of an epoch may have fewer). With `data.group_by_length` the epoch's order comes from
`length_grouped_order` instead, seeded from the same generator. A `DataPosition` (epoch, micro-batches consumed,
seed) is all a checkpoint needs to continue with exactly the same batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np


@dataclass
class DataPosition:
    """Where the next optimizer step starts: epoch, micro-batches already consumed in it, shuffling seed."""

    epoch: int = 0
    batches_done: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def epoch_micro_batches(num_rows: int, batch_size: int, seed: int, epoch: int,
                        lengths: list[int] | None = None) -> list[list[int]]:
    """Row indices of every micro-batch of `epoch`, in visiting order; grouped by length when `lengths` is given
    (`sftlab.data.collate.length_grouped_order`, seeded by seed and epoch)."""
    rng = np.random.default_rng([seed, epoch])
    if lengths is None:
        order = rng.permutation(num_rows).tolist()
    else:
        from sftlab.data.collate import length_grouped_order

        order = length_grouped_order(lengths, batch_size, int(rng.integers(2**62)))
    return [order[start:start + batch_size] for start in range(0, num_rows, batch_size)]


def steps_per_epoch(num_rows: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over `num_rows` rows."""
    return math.ceil(math.ceil(num_rows / batch_size) / grad_accum)


def total_steps(num_rows: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    """`max_steps` when set, else `epochs` passes (fractions round up to a whole step). The product is rounded to 6
    decimals first, so that a float artifact does not add a step (1.1 x 50 is 55.00000000000001 in floats: 55 steps,
    where transformers' Trainer, which takes the ceiling as is, runs 56)."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(round(epochs * steps_per_epoch(num_rows, batch_size, grad_accum), 6)))


def iterate_steps(num_rows: int, batch_size: int, grad_accum: int, start: DataPosition,
                  lengths: list[int] | None = None) -> Iterator[tuple[list[list[int]], DataPosition]]:
    """Endless (epoch after epoch) optimizer-step groups of micro-batch indices, with the position after each
    (`lengths`: group each epoch's micro-batches by row length)."""
    epoch, done = start.epoch, start.batches_done
    while True:
        batches = epoch_micro_batches(num_rows, batch_size, start.seed, epoch, lengths)
        while done < len(batches):
            group = batches[done:done + grad_accum]
            done += len(group)
            if done >= len(batches):
                yield group, DataPosition(epoch + 1, 0, start.seed)
            else:
                yield group, DataPosition(epoch, done, start.seed)
        epoch, done = epoch + 1, 0
