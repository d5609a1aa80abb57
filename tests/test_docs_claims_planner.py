"""docs/planner.md: the thresholds table is the packaged thresholds.yaml, its stated ranges are enforced, and the
`--budget` spellings the page shows parse as it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sftlab.errors import SftlabError
from sftlab.plan.compare import parse_budget
from sftlab.plan.recommend import load_thresholds

DOC = Path(__file__).resolve().parents[1] / "docs" / "planner.md"


def test_the_thresholds_table_is_the_packaged_defaults():
    section = DOC.read_text(encoding="utf-8").split("### The recommendation and its thresholds", 1)[1]
    table = {key: yaml.safe_load(value) for key, value in re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, re.M)}
    assert table == load_thresholds()


@pytest.mark.parametrize("key, value, ok", [
    ("memory_headroom", 1, True), ("memory_headroom", 0, False), ("memory_headroom", 1.01, False),
    ("freeze_last_fraction", 0.5, True), ("freeze_last_fraction", 0, False),
    ("partial_min_tokens_per_param", 0, True), ("partial_min_tokens_per_param", -0.1, False),
    ("full_min_tokens_per_param", float("inf"), False), ("keep_general_knowledge", True, True),
    ("no_such_threshold", 1, False),
])
def test_threshold_ranges(tmp_path, key, value, ok):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({key: value}), encoding="utf-8")
    if ok:
        assert load_thresholds(path)[key] == value
    else:
        with pytest.raises(SftlabError, match=f"^{re.escape(str(path))}: "):
            load_thresholds(path)


def test_budget_spellings():
    assert parse_budget("20steps") == parse_budget("20") == ("steps", 20)
    assert parse_budget("60s") == ("seconds", 60) and parse_budget("5m") == ("seconds", 300)
    assert parse_budget("1h") == ("seconds", 3600)
