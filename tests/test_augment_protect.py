"""Protection of tool-call argument words in `data augment`: a word is recognised with its case, the punctuation
at either end and a possessive 's ignored; plurals and other inflections are not undone."""

from __future__ import annotations

import pytest

from sftlab.datawork.augment import RULE_METHODS, RuleAugmenter, protected_words, word_key

SYNONYMS = {"paris": ["London"], "museum": ["gallery"], "open": ["available"], "today": ["now"]}


def with_call(user: str, arguments: dict) -> dict:
    call = {"type": "function", "function": {"name": "find", "arguments": arguments}}
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": None, "tool_calls": [call]}]}


@pytest.mark.parametrize("token, key", [
    ("Paris", "paris"), ("Paris?", "paris"), ("Paris's", "paris"), ("PARIS’S", "paris"), ("(Paris's)", "paris"),
    ("Paris's?", "paris"), ("Paris'", "paris"), ("“Paris”,", "paris"), ("O'Brien", "o'brien"), ("'s", "s"),
    ("tickets", "tickets"), ("巴黎", "巴黎"),
])
def test_word_key(token, key):
    assert word_key(token) == key


def test_a_possessive_in_the_arguments_protects_the_plain_word():
    assert protected_words(with_call("x", {"q": "Paris's museums"})) == {"paris", "museums"}


@pytest.mark.parametrize("method", RULE_METHODS)
def test_possessive_forms_of_argument_words_stay(method):
    text = "Is Paris's museum open today? Or PARIS’S park?"
    protected = protected_words(with_call(text, {"city": "Paris"}))
    for seed in range(5):
        augmenter = RuleAugmenter(SYNONYMS, rate=1.0, seed=seed)
        out = augmenter.apply(method, text, augmenter.rng(seed), protected)
        assert out != text and "London" not in out
        if method in ("synonym", "swap"):  # one word for one word: the protected ones stay in their places
            assert out.split()[1] == "Paris's" and out.split()[6] == "PARIS’S"
        else:
            assert "Paris's" in out and "PARIS’S" in out


@pytest.mark.parametrize("method", ["swap", "delete"])
def test_without_protection_the_same_augmenter_moves_or_deletes_them(method):
    text = "Is Paris's museum open today? Or PARIS’S park?"
    augmenter = RuleAugmenter(SYNONYMS, rate=1.0, seed=0)
    outs = [augmenter.apply(method, text, augmenter.rng(seed)) for seed in range(5)]
    assert any(out.split()[1:2] != ["Paris's"] or "PARIS’S" not in out.split()[6:7] for out in outs)


def test_plurals_are_not_recognised():
    protected = protected_words(with_call("two tickets please", {"item": "ticket"}))
    assert "tickets" not in protected and word_key("tickets") != "ticket"
