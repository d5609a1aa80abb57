"""docs/policy.md, "The simulated world": the documented shares, ranges and rules of the generator."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from sftlab.policy import catalog
from sftlab.policy.db import is_eligible
from sftlab.policy.simulate import WorldSpec, simulate

SPEC = WorldSpec(n_enterprises=500, n_policies=500, days=365, seed=11)


@pytest.fixture(scope="module")
def world():
    return simulate(SPEC)


def test_policy_scopes_and_validity(world):
    policies = world.policies
    share = lambda test: sum(map(test, policies)) / len(policies)  # noqa: E731
    assert share(lambda p: p["region_scope"] == ["全国"]) == pytest.approx(0.40, abs=0.07)  # 40% national
    assert share(lambda p: bool(p["industry_scope"])) == pytest.approx(0.30, abs=0.07)  # 30% name industries
    assert all(1 <= len(p["industry_scope"]) <= 3 for p in policies if p["industry_scope"])  # ... 1-3 of them
    assert share(lambda p: bool(p["size_scope"])) == pytest.approx(0.30, abs=0.07)  # 30% for SMEs only
    assert {tuple(p["size_scope"]) for p in policies if p["size_scope"]} == {tuple(catalog.SME_BANDS)}
    days = [(p["expiry_date"] - p["publish_date"]).days for p in policies]
    assert min(days) >= 30 and max(days) <= 180  # 30-180 days of validity
    first, last = SPEC.start, SPEC.start + timedelta(days=SPEC.days)
    assert all(first <= p["publish_date"] < last for p in policies)  # publish dates over the period


def test_cold_start_enterprises_register_late(world):
    late = [e for e in world.enterprises if e["registered_on"] > SPEC.start]
    assert len(late) / len(world.enterprises) == pytest.approx(0.15, abs=0.05)  # 15% register late ...
    begin = SPEC.start + timedelta(days=int(SPEC.days * 0.65))
    assert all(begin <= e["registered_on"] < SPEC.start + timedelta(days=SPEC.days) for e in late)  # ... last 35%


def test_interest_is_stored_for_eligible_pairs_and_feeds_hold_up_to_six(world):
    enterprises = {e["id"]: SimpleNamespace(**e) for e in world.enterprises}
    policies = {p["id"]: SimpleNamespace(**p) for p in world.policies}
    assert world.interest and all(is_eligible(enterprises[e], policies[p]) and 0 <= v <= 1 for e, p, v in world.interest)
    positions = [pos for _, _, kind, _, pos in world.events if kind == "impression"]
    assert max(positions) == 6 and min(positions) == 1  # each session shows up to 6 policies
    acted, shown_after = {}, []
    for e, p, kind, ts, _ in sorted(world.events, key=lambda row: row[3]):
        if kind in ("click", "dismiss"):
            acted.setdefault((e, p), ts)
        elif kind == "impression" and (e, p) in acted:
            shown_after.append((e, p))
    assert acted and not shown_after  # acted-on or dismissed policies are not shown again


def test_the_demo_plans_are_the_documented_sizes():
    """docs/policy.md, "Demo": the quick and --full plans."""
    from sftlab.policy.demo import FULL, QUICK

    val = lambda plan: round(plan.max_train * 0.1)  # noqa: E731  build-data keeps a tenth for validation
    quick = (QUICK.world.n_enterprises, QUICK.world.n_policies, QUICK.max_train - val(QUICK), QUICK.train_layers,
             QUICK.train_steps, QUICK.batch_size, QUICK.max_validation, QUICK.max_eval_enterprises, QUICK.push_enterprises)
    assert quick == (120, 150, 432, "last:4", 48, 8, 32, 30, 10)
    full = (FULL.world.n_enterprises, FULL.world.n_policies, FULL.max_train - val(FULL), FULL.train_steps,
            FULL.max_eval_enterprises, FULL.push_enterprises, FULL.train_layers)
    assert full == (600, 500, 3600, 450, 100, 600, "last:6")
    assert len(simulate(QUICK.world).events) == pytest.approx(24_000, rel=0.1)  # "about 24 000 events"
