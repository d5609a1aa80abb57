"""The vectorised label rule of `encode_rendered` (`supervised_tokens`) agrees with the per-token rule it replaced."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sftlab.data.templates import IGNORE_INDEX, Rendered, encode_rendered, supervised_tokens
from sftlab.models.tiny import make_tokenizer


def per_token(start: int, end: int, spans) -> bool:
    """The rule as it was written, one token at a time."""
    if end <= start:
        return any(a <= start < b for a, b in spans)
    return any(start < b and end > a for a, b in spans)


def random_case(rng: random.Random):
    length = rng.randint(0, 60)
    spans = []
    for _ in range(rng.randint(0, 5)):
        a = rng.randint(0, length)
        spans.append((a, min(length, a + rng.choice([0, 1, 2, 5, 20]))))  # empty, short, long, overlapping
    if rng.random() < 0.5:  # also the shape callers give: sorted, disjoint
        spans = sorted(spans)
    offsets = []
    for _ in range(rng.randint(0, 40)):
        a = rng.randint(0, length)
        offsets.append((a, a + rng.choice([0, 0, 1, 2, 3, 7, -1])))  # zero-width, straddling, even reversed
    return offsets, spans


def test_agrees_with_the_per_token_rule_on_random_spans_and_offsets():
    rng = random.Random(0)
    for _ in range(5000):
        offsets, spans = random_case(rng)
        got = supervised_tokens(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), spans)
        assert got.tolist() == [per_token(s, e, spans) for s, e in offsets], (offsets, spans)


@pytest.mark.parametrize("offsets, spans, expected", [
    ([(0, 2), (2, 4), (4, 6)], [(3, 4)], [False, True, False]),            # only the token holding the span
    ([(0, 3), (3, 5)], [(2, 4)], [True, True]),                             # straddling both edges
    ([(2, 2), (4, 4), (6, 6)], [(2, 4)], [True, False, False]),            # zero-width: start in [a, b)
    ([(0, 4)], [(2, 2)], [True]), ([(0, 2)], [(2, 2)], [False]),            # an empty span inside / at the edge
    ([(0, 1), (1, 2)], [], [False, False]),
])
def test_edges(offsets, spans, expected):
    assert supervised_tokens(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), spans).tolist() == expected


def test_encode_rendered_labels_match_the_per_token_rule():
    tok = make_tokenizer("chatml")
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    rng = random.Random(1)
    for _ in range(200):
        spans = sorted((a, min(len(text), a + rng.randint(1, 30))) for a in rng.sample(range(len(text)), 2))
        ids, labels = encode_rendered(tok, Rendered(text, spans))
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        assert labels == [t if per_token(s, e, spans) else IGNORE_INDEX for t, (s, e) in zip(ids, offsets)]
        assert all(type(label) is int for label in labels)
    assert encode_rendered(tok, Rendered("", [(0, 0)])) == ([], [])
