"""Visiting order of training rows: data.group_by_length groups padded micro-batches by length, resumably."""

from pathlib import Path

import numpy as np
import pytest

from sftlab.config import load_config
from sftlab.errors import SftlabError
from sftlab.train.batches import DataPosition, epoch_micro_batches, iterate_steps
from test_train_loop import tiny_run

LENGTHS = np.random.default_rng(0).integers(1, 200, size=203).tolist()


def padding(batches: list[list[int]]) -> int:
    """Pad tokens when every micro-batch is padded to its longest row."""
    return sum(len(batch) * max(LENGTHS[i] for i in batch) - sum(LENGTHS[i] for i in batch) for batch in batches)


def test_grouped_epochs_visit_every_row_once_with_far_less_padding():
    for epoch in (0, 1):
        grouped = epoch_micro_batches(203, 8, seed=5, epoch=epoch, lengths=LENGTHS)
        shuffled = epoch_micro_batches(203, 8, seed=5, epoch=epoch)
        assert sorted(i for batch in grouped for i in batch) == list(range(203))
        assert [len(batch) for batch in grouped] == [len(batch) for batch in shuffled]
        assert padding(grouped) < 0.2 * padding(shuffled)
        assert max(LENGTHS[i] for i in grouped[0]) == max(LENGTHS)  # the longest batch first: OOM shows at once
    assert epoch_micro_batches(203, 8, 5, 0, LENGTHS) == epoch_micro_batches(203, 8, 5, 0, LENGTHS)
    assert epoch_micro_batches(203, 8, 5, 0, LENGTHS) != epoch_micro_batches(203, 8, 5, 1, LENGTHS)


def test_resumed_grouped_order_continues_with_the_same_batches():
    steps = iterate_steps(203, 8, 2, DataPosition(seed=3), LENGTHS)
    straight = [next(steps) for _ in range(20)]  # crosses into epoch 1 (13 steps per epoch)
    position = straight[6][1]
    resumed = iterate_steps(203, 8, 2, position, LENGTHS)
    assert [next(resumed)[0] for _ in range(13)] == [group for group, _ in straight[7:]]


def test_group_by_length_with_packing_is_refused(tmp_path):
    raw = tiny_run(tmp_path, data={"group_by_length": True, "packing": True})
    with pytest.raises(SftlabError, match="data.group_by_length .*data.packing=true"):
        load_config(None, [], base=raw)


def test_training_visits_the_grouped_batches(tmp_path):
    from sftlab.train.loop import cleanup, step_groups
    from sftlab.train.rundir import prepare_output_dir
    from sftlab.train.setup import build_session

    cfg = load_config(None, [], base=tiny_run(tmp_path, data={"group_by_length": True}, train={"batch_size": 2}))
    prepare_output_dir(Path(cfg.output.dir), resume=False, overwrite=False)
    session, _ = build_session(cfg, Path(cfg.output.dir), None, None)
    try:
        rows, group, _ = next(step_groups(session))
        lengths = [len(ids) for ids in rows["input_ids"]]
        assert group == epoch_micro_batches(len(rows), 2, cfg.train.seed, 0, lengths)[:1]
        assert group != epoch_micro_batches(len(rows), 2, cfg.train.seed, 0)[:1]
        assert max(lengths[i] for i in group[0]) == max(lengths)
    finally:
        cleanup(session)
