"""Normalisation of numbers written with full-width characters: digits become ASCII, a full-width comma between
digits stays (a thousands separator cannot be told from a list), a full-width point and per cent sign become ASCII."""

from __future__ import annotations

import pytest

from sftlab.datawork.normalize import NormalizeOptions, Normalizer


@pytest.mark.parametrize("text, expected", [
    ("共１，０００人", "共1，000人"),                  # digits ASCII, the Chinese comma kept
    ("共1，000人，资金12，345，678元", "共1，000人，资金12，345，678元"),
    ("分为100，200，300三档", "分为100，200，300三档"),  # a list: never read as one number
    ("第1，第2，1，2，3", "第1，第2，1，2，3"),
    ("１,０００元", "1,000元"),                        # an ASCII separator stays ASCII
    ("增长１．５％", "增长1.5%"),                      # full-width point and per cent sign are not CJK punctuation
    ("（１）１０：３０", "（1）10：30"),
])
def test_full_width_numbers(text, expected):
    assert Normalizer()(text) == expected


def test_without_kept_cjk_punctuation_nfkc_turns_every_comma_ascii():
    assert Normalizer(NormalizeOptions(keep_cjk_punct=False))("共１，０００人，好") == "共1,000人,好"
    assert Normalizer(NormalizeOptions(nfkc=False))("共１，０００人") == "共１，０００人"
