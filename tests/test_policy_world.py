"""Policy application: schema on SQLite/PostgreSQL and the seeded world simulator's documented properties."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from sqlalchemy import func, inspect, select

from sftlab.errors import SftlabError
from sftlab.policy.db import Enterprise, Event, TrueInterest, make_engine, open_db, resolve_db_url
from sftlab.policy.simulate import WorldSpec, simulate, write_world
from sftlab.policy.testing import database_kinds, temporary_database

SMALL = WorldSpec(n_enterprises=60, n_policies=80, days=240, seed=3)


@pytest.fixture(scope="module")
def world():
    return simulate(SMALL)


def test_same_seed_same_world_other_seed_other_world(world):
    again = simulate(SMALL)
    assert again.events == world.events and again.interest == world.interest and again.policies == world.policies
    other = simulate(WorldSpec(n_enterprises=60, n_policies=80, days=240, seed=4))
    assert other.events != world.events


def test_policies_are_chinese_notices_with_scopes(world):
    titles = [p["title"] for p in world.policies]
    assert all(t.startswith("关于") or "措施" in t for t in titles)
    assert any("通知" in t for t in titles) and any(p["region_scope"] == ["全国"] for p in world.policies)
    assert all(p["expiry_date"] > p["publish_date"] for p in world.policies)


def test_clicks_follow_true_interest_and_favoured_categories(world):
    interest = {(e, p): v for e, p, v in world.interest}
    clicked = {(e, p) for e, p, kind, _, _ in world.events if kind == "click"}
    shown = {(e, p) for e, p, kind, _, _ in world.events if kind == "impression"}
    assert clicked and clicked <= set(interest)  # only eligible pairs are ever acted on
    mean = lambda pairs: sum(interest.get(pair, 0.0) for pair in pairs) / len(pairs)
    assert mean(clicked) > 2 * mean(shown - clicked)
    category = {p["id"]: p["category"] for p in world.policies}
    by_ent = defaultdict(lambda: defaultdict(list))
    for (e, p), v in interest.items():
        by_ent[e][category[p]].append(v)
    favourite = {e: max(cats, key=lambda c: sum(cats[c]) / len(cats[c])) for e, cats in by_ent.items()}
    click_share = sum(category[p] == favourite.get(e) for e, p in clicked) / len(clicked)
    shown_share = sum(category[p] == favourite.get(e) for e, p in shown) / len(shown)
    assert click_share > 1.5 * shown_share


def test_dismissed_never_shown_again_and_no_events_before_registration(world):
    dismissed_at, registered = {}, {e["id"]: e["registered_on"] for e in world.enterprises}
    for e, p, kind, ts, _ in world.events:
        assert ts.date() >= registered[e]
        if kind == "dismiss":
            dismissed_at[(e, p)] = ts
        elif kind == "impression" and (e, p) in dismissed_at:
            assert ts < dismissed_at[(e, p)]
    assert dismissed_at
    late = [e for e in world.enterprises if e["registered_on"] > SMALL.start]
    assert late, "the world has cold-start enterprises"
    counts = Counter(e for e, *_ in world.events)
    assert sum(counts[e["id"]] for e in late) / len(late) < sum(counts.values()) / len(world.enterprises)


def test_for_events_sizes_the_world():
    world = simulate(WorldSpec.for_events(6000, seed=1))
    assert 3000 < len(world.events) < 12000


def test_db_url_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("SFTLAB_DB_URL", raising=False)
    assert resolve_db_url() == "sqlite:///sftlab_policy.db"
    monkeypatch.setenv("SFTLAB_DB_URL", f"sqlite:///{tmp_path}/x.db")
    assert resolve_db_url() == f"sqlite:///{tmp_path}/x.db" and resolve_db_url("sqlite://") == "sqlite://"
    with pytest.raises(SftlabError, match="--db"):
        make_engine("nosuchdialect://x")


@pytest.mark.parametrize("kind", database_kinds())
def test_schema_idempotent_and_world_round_trip(kind, tmp_path, world):
    with temporary_database(kind, tmp_path) as url:
        engine = open_db(url)
        open_db(url)  # second creation is a no-op
        assert {"enterprises", "policies", "events", "pushes", "true_interest"} <= set(inspect(engine).get_table_names())
        counts = write_world(engine, world)
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Event)).scalar() == counts["events"] == len(world.events)
            assert conn.execute(select(func.count()).select_from(TrueInterest)).scalar() == len(world.interest)
            tags = conn.execute(select(Enterprise.tags).order_by(Enterprise.id)).scalars().first()
            assert tags == world.enterprises[0]["tags"]
        engine.dispose()


def test_reference_titles_seed_the_summaries(tmp_path):
    from sftlab.policy.catalog import FALLBACK_REFERENCES, load_reference_titles

    (tmp_path / "regs.jsonl").write_text('{"title": "印花税暂行条例"}\n{"title": "专利代理条例"}\n', encoding="utf-8")
    titles = load_reference_titles(tmp_path)
    assert titles["税收优惠"] == ["印花税暂行条例"] and titles["知识产权"] == ["专利代理条例"]
    assert titles["人才引进"] == FALLBACK_REFERENCES["人才引进"] and load_reference_titles(None) == FALLBACK_REFERENCES
    world = simulate(WorldSpec(n_enterprises=5, n_policies=30, days=60, seed=1, reference_dir=str(tmp_path)))
    cited = [p["summary"] for p in world.policies if p["category"] == "知识产权"]
    assert cited and all("依据《专利代理条例》" in summary for summary in cited)


@pytest.mark.parametrize("options, message", [
    (["--events", "0"], "--events must be at least 1, got 0"),
    (["--enterprises", "0"], "--enterprises must be at least 1, got 0"),
    (["--policies", "-2"], "--policies must be at least 1, got -2"),
    (["--days", "0"], "--days must be at least 1, got 0"),
    (["--reference-dir", "no-such-dir"], "--reference-dir no-such-dir: no such directory, or no .jsonl files in it"),
])
def test_bad_world_sizes_are_one_line_errors_and_create_no_database(tmp_path, capsys, options, message):
    from sftlab.cli import main

    assert main(["policy", "simulate", "--db", f"sqlite:///{tmp_path}/sub/w.db", *options]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "sub").exists()


def test_a_broken_reference_file_names_its_line(tmp_path):
    from sftlab.errors import SftlabError
    from sftlab.policy.catalog import load_reference_titles

    (tmp_path / "regs.jsonl").write_text('{"title": "印花税暂行条例"}\n{"title": \n', encoding="utf-8")
    with pytest.raises(SftlabError, match=r"regs.jsonl:2: malformed JSON line"):
        load_reference_titles(tmp_path)
