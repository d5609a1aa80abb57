"""Padding, best-fit packing, length-grouped order, and that packed samples never see each other."""

from __future__ import annotations

import pytest
import torch
from sftlab.data.rows import TokenRows

from sftlab.data.collate import best_fit_bins, length_grouped_order, pack_rows, packed_collate, pad_collate
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tiny_model, make_tokenizer

IGNORE = -100


def lm_rows():
    return [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]


def test_pad_collate_lm_and_cls():
    batch = pad_collate(lm_rows(), pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, 9, IGNORE]]
    cls = pad_collate([{"input_ids": [1, 2], "label": 1}, {"input_ids": [3], "label": 0}], pad_id=0)
    assert cls["labels"].tolist() == [1, 0] and cls["input_ids"].tolist() == [[1, 2], [3, 0]]


def test_best_fit_decreasing_fills_bins():
    bins = best_fit_bins([5, 4, 3, 3, 2, 1], capacity=8, seed=0)
    sizes = sorted(sum([5, 4, 3, 3, 2, 1][i] for i in b) for b in bins)
    assert sizes == [2, 8, 8] and sorted(i for b in bins for i in b) == list(range(6))
    with pytest.raises(SftlabError, match="longer than the packing length 4"):
        best_fit_bins([5], capacity=4)


def test_pack_rows_positions_restart_and_first_labels_are_ignored():
    samples = [{"input_ids": list(range(10 * k, 10 * k + n)), "labels": list(range(10 * k, 10 * k + n))}
               for k, n in enumerate([3, 5, 2, 4, 1])]
    packed = pack_rows(TokenRows.from_list(samples), max_length=6, seed=1)
    assert all(len(row["input_ids"]) <= 6 for row in packed)
    seen = []
    for row in packed:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        for a, b in zip(starts, starts[1:] + [len(row["input_ids"])]):
            assert row["position_ids"][a:b] == list(range(b - a))
            assert row["labels"][a] == IGNORE and row["labels"][a + 1:b] == row["input_ids"][a + 1:b]
            seen.append(row["input_ids"][a:b])
    assert sorted(seen) == sorted(s["input_ids"] for s in samples)
    assert pack_rows(TokenRows.from_list(samples), 6, seed=1).to_dict() == packed.to_dict()
    with pytest.raises(SftlabError, match="classification rows cannot be packed"):
        pack_rows(TokenRows.from_list([{"input_ids": [1], "label": 0}]), 4)


def test_length_grouped_order_reduces_padding_and_is_seeded():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    order = length_grouped_order(lengths, batch_size=4, seed=3)
    assert sorted(order) == list(range(200)) and order == length_grouped_order(lengths, 4, seed=3)
    assert order != length_grouped_order(lengths, 4, seed=4)
    assert max(lengths[i] for i in order[:4]) == max(lengths)

    def padding(indices):
        batches = [indices[i:i + 4] for i in range(0, len(indices), 4)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    import random

    shuffled = list(range(200))
    random.Random(0).shuffle(shuffled)
    assert padding(order) < padding(shuffled) / 4


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer("chatml")


def samples(tokenizer):
    texts = ["The quick brown fox jumps over the lazy dog.", "What is the capital of France?", "Fine-tuning adapts a model."]
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        rows.append({"input_ids": ids, "labels": [IGNORE] * 3 + ids[3:]})  # a "prompt" of 3 unsupervised tokens
    return rows


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
    return loss.item(), int((shift_labels != IGNORE).sum())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_are_isolated(tokenizer, arch, attn):
    model = make_tiny_model(arch, tokenizer, seed=0)
    model.set_attn_implementation(attn)
    model.eval()
    rows = samples(tokenizer)
    packed_rows = list(pack_rows(TokenRows.from_list(rows), max_length=17, seed=0))  # rows of 17 and 7 tokens
    packed = packed_collate(packed_rows, tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] == len(packed_rows) > 1 and "attention_mask" not in packed
    padded = pad_collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        padded_logits = model(**{k: padded[k] for k in ("input_ids", "attention_mask")}, use_cache=False).logits
        for r, packed_row in enumerate(packed_rows):  # filler after a shorter row is a segment of its own
            ids = packed["input_ids"][r, :len(packed_row["input_ids"])].tolist()
            starts = [i for i, p in enumerate(packed_row["position_ids"]) if p == 0] + [len(ids)]
            for a, b in zip(starts, starts[1:]):  # each sample alone gives the same logits as inside the packed row
                alone = model(input_ids=torch.tensor([ids[a:b]]), use_cache=False).logits[0]
                torch.testing.assert_close(packed_logits[r, a:b], alone, atol=1e-5, rtol=1e-4)
    packed_loss, packed_count = summed_loss(packed_logits, packed["labels"])
    padded_loss, padded_count = summed_loss(padded_logits, padded["labels"])
    assert packed_count == padded_count
    assert packed_loss / packed_count == pytest.approx(padded_loss / padded_count, rel=1e-5)
