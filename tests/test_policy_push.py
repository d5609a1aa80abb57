"""Policy application: pushing is idempotent, resumable after an interruption, and respects the candidate rules."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import select

from sftlab.errors import SftlabError
from sftlab.policy.baselines import category_frequency
from sftlab.policy.db import Enterprise, Event, Policy, Push, is_eligible, open_db
from sftlab.policy.push import push
from sftlab.policy.simulate import WorldSpec, simulate, write_world
from sftlab.policy.testing import database_kinds, temporary_database

SPEC = WorldSpec(n_enterprises=30, n_policies=80, days=200, seed=7)
SINCE, NOW = datetime(2025, 6, 1), datetime(2025, 7, 15)


@pytest.fixture(scope="module")
def world():
    return simulate(SPEC)


def _pushes(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(Push.enterprise_id, Push.policy_id, Push.rank, Push.score, Push.window_key)).tuples())


class Interrupt(RuntimeError):
    pass


@pytest.mark.parametrize("kind", database_kinds())
def test_push_is_idempotent_and_follows_the_rules(kind, tmp_path, world):
    with temporary_database(kind, tmp_path) as url:
        engine = open_db(url)
        write_world(engine, world)
        first = push(engine, category_frequency().score, SINCE, top_k_count=3, model_version="m1", now=NOW, batch_enterprises=7)
        rows = _pushes(engine)
        assert first.pushes_written == len(rows) > 0 and first.batches == 5
        again = push(engine, category_frequency().score, SINCE, top_k_count=3, model_version="m1", now=NOW, batch_enterprises=7)
        assert again.pushes_written == 0 and again.skipped_done == first.pushed_enterprises and _pushes(engine) == rows
        with engine.connect() as conn:
            from sqlalchemy.orm import Session
            session = Session(bind=conn)
            acted = {(e.enterprise_id, e.policy_id) for e in session.scalars(select(Event).where(Event.ts < NOW))
                     if e.type in ("click", "favorite", "apply", "dismiss")}
            for p in session.scalars(select(Push)):
                enterprise, policy = session.get(Enterprise, p.enterprise_id), session.get(Policy, p.policy_id)
                assert is_eligible(enterprise, policy) and (p.enterprise_id, p.policy_id) not in acted
                assert SINCE.date() <= policy.publish_date <= NOW.date() <= policy.expiry_date
                assert p.reason and p.model_version == "m1" and p.status == "pending" and 1 <= p.rank <= 3
        by_enterprise = {}
        for enterprise_id, _, rank, score, _ in rows:
            by_enterprise.setdefault(enterprise_id, []).append((rank, score))
        for ranked in by_enterprise.values():
            ranked.sort()
            assert [r for r, _ in ranked] == list(range(1, len(ranked) + 1))
            assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
        later = push(engine, category_frequency().score, datetime(2025, 5, 1), top_k_count=3, now=NOW, batch_enterprises=7)
        pairs = [(e, p) for e, p, *_ in _pushes(engine)]
        assert later.pushes_written > 0 and len(pairs) == len(set(pairs))  # a new window never repeats a push
        engine.dispose()


def test_interrupted_push_resumes_to_the_same_result(tmp_path, world):
    clean = open_db(f"sqlite:///{tmp_path}/clean.db")
    write_world(clean, world)
    push(clean, category_frequency().score, SINCE, top_k_count=2, now=NOW, batch_enterprises=4)
    engine = open_db(f"sqlite:///{tmp_path}/broken.db")
    write_world(engine, world)
    calls = {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt("killed in batch 3")
        return category_frequency().score(rows)

    with pytest.raises(Interrupt):
        push(engine, flaky, SINCE, top_k_count=2, now=NOW, batch_enterprises=4)
    partial = _pushes(engine)
    assert 0 < len({e for e, *_ in partial}) <= 8  # batches 1-2 committed, batch 3 rolled back
    resumed = push(engine, category_frequency().score, SINCE, top_k_count=2, now=NOW, batch_enterprises=4)
    assert resumed.skipped_done == len({e for e, *_ in partial})
    assert _pushes(engine) == _pushes(clean)


def test_scoring_is_batched_per_group_of_enterprises(tmp_path, world):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    write_world(engine, world)
    sizes = []

    def counting(rows):
        sizes.append(len(rows))
        return [0.5] * len(rows)

    summary = push(engine, counting, SINCE, top_k_count=1, now=NOW, batch_enterprises=10)
    assert len(sizes) == summary.batches == 3 and sum(sizes) == summary.candidates_scored
    with pytest.raises(SftlabError, match="top-k"):
        push(engine, counting, SINCE, top_k_count=0, now=NOW)


def test_reasons_read_like_the_platform_wants():
    from sftlab.policy.reasons import reason_text

    enterprise = {"industry": "软件和信息技术服务业", "region": "浙江省", "size_band": "小型"}
    policy = {"category": "科技创新", "industry_scope": ["软件和信息技术服务业"], "region_scope": ["浙江省"], "size_scope": []}
    busy = {"recent_by_category": {"科技创新": 5}, "by_category": {"科技创新": 7}}
    assert reason_text(busy, enterprise, policy) == "近30天查看了5条科技创新类政策；面向软件和信息技术服务业企业"
    quiet = {"recent_by_category": {}, "by_category": {}}
    national = dict(policy, industry_scope=[], region_scope=["全国"])
    assert reason_text(quiet, enterprise, national) == "新发布的科技创新类政策，贵企业符合申报条件"
    assert reason_text(quiet, enterprise, dict(national, region_scope=["浙江省"])) == "浙江省本地政策"


def test_bad_push_options_are_one_line_errors_before_anything_is_written(tmp_path, world, capsys):
    from sftlab.cli import main

    url = f"sqlite:///{tmp_path}/db.sqlite"
    write_world(open_db(url), world)
    base = ["policy", "push", "--db", url, "--baseline", "popularity", "--since", "2025-06-01", "--now", "2025-07-15"]
    for extra, message in ((["--batch-enterprises", "0"], "error: --batch-enterprises must be at least 1, got 0"),
                           (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
                           (["--now", "2025-05-01"], "error: --now 2025-05-01 is before --since 2025-06-01")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert main(["policy", "push", "--db", url, "--baseline", "popularity", "--since", "2099-01-01"]) == 2
    assert capsys.readouterr().err.startswith("error: --since 2099-01-01 is in the future (now is ")
    assert _pushes(open_db(url)) == []


def test_an_enterprise_without_history_gets_pushes_with_a_reason(tmp_path, world):
    from sftlab.policy.importer import import_csv

    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    write_world(engine, world)
    (tmp_path / "new.csv").write_text("id,name,industry,region,size_band,founded_year,tags,registered_on\n"
                                      "N1,新注册公司,制造业,浙江省,小型,2024,,2025-07-01\n", encoding="utf-8")
    assert import_csv(engine, "enterprises", tmp_path / "new.csv", tmp_path / "rejects")["imported"] == 1
    summary = push(engine, category_frequency().score, SINCE, top_k_count=3, now=NOW, enterprise_ids=["N1"])
    with engine.connect() as conn:
        reasons = conn.execute(select(Push.reason).where(Push.enterprise_id == "N1")).scalars().all()
    assert summary.pushed_enterprises == 1 and len(reasons) == 3 and all(reasons)


def test_model_errors_name_the_model_option_of_push_api_and_evaluate(tmp_path, world, capsys, monkeypatch):
    """They named `MODEL '...'` (the positional argument of generate, chat and serve), which these commands lack."""
    import uvicorn

    from sftlab.cli import main
    from sftlab.policy.examples import build_data

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the API started serving"))
    url, missing = f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "no-run"
    engine = open_db(url)
    write_world(engine, world)
    build_data(engine, tmp_path / "data", cutoff="2025-06-01", max_train=40)
    commands = {"push": ["--since", "2025-06-01", "--now", "2025-07-15"], "api": ["--now", "2025-07-15"],
                "evaluate": ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "report")]}
    for command, options in commands.items():
        for model, message in ((str(missing), f"--model '{missing}': no such directory"),
                               ("org/name", "--model 'org/name' not found locally; this machine is offline (no model "
                                            "hub): point --model at a local directory")):
            assert main(["policy", command, "--db", url, "--model", model, *options]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {message}") and err.count("\n") == 1, (command, err)
    assert _pushes(open_db(url)) == [] and not (tmp_path / "report").exists()
