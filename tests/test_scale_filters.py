"""`data clean`'s prompt-repeat filter at scale: the length bound of difflib's ratio is checked before a
`SequenceMatcher` is built (building one indexes every character of the response), with the same answers as
the full comparison. Checked by counting what is built, never by timing."""

from __future__ import annotations

import difflib
import random

from sftlab.datawork import filters
from sftlab.datawork.filters import repeats_prompt


def _reference(prompt: str, response: str, similarity: float) -> bool:
    p, r = " ".join(prompt.split()).lower(), " ".join(response.split()).lower()
    if not p or not r:
        return False
    if r == p or (len(r) >= 8 and r in p):
        return True
    matcher = difflib.SequenceMatcher(None, p, r, autojunk=False)
    return matcher.real_quick_ratio() >= similarity and matcher.quick_ratio() >= similarity and matcher.ratio() >= similarity


def test_repeats_prompt_answers_as_the_full_comparison():
    rng = random.Random(0)
    words = "the a answer question 数据 模型 is of yes no".split()
    for _ in range(3000):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        response = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            response = prompt + rng.choice(["", " yes", "."])
        similarity = rng.choice([0.5, 0.8, 0.9, 1.0])
        assert repeats_prompt(prompt, response, similarity) == _reference(prompt, response, similarity)


def test_no_matcher_is_built_for_a_response_much_longer_than_its_prompt(monkeypatch):
    built, matcher = [], difflib.SequenceMatcher
    monkeypatch.setattr(filters.difflib, "SequenceMatcher", lambda *a, **k: built.append(a) or matcher(*a, **k))
    assert not repeats_prompt("What is two plus two?", "Two plus two is four, " * 20, 0.9)
    assert built == []
    assert repeats_prompt("What is two plus two?", "what is two plus two ?", 0.9)
    assert len(built) == 1
