"""Policy application: the HTTP API (TestClient, and a real uvicorn server on 127.0.0.1 with httpx)."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from sftlab.policy.api import create_app
from sftlab.policy.baselines import category_frequency
from sftlab.policy.db import Event, open_db
from sftlab.policy.simulate import WorldSpec, simulate, write_world
from sftlab.policy.testing import database_kinds, temporary_database

NOW = datetime(2025, 7, 15, 12, 0)


@pytest.fixture(scope="module")
def world():
    return simulate(WorldSpec(n_enterprises=20, n_policies=60, days=200, seed=11))


def _events(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Event)).scalar()


@pytest.mark.parametrize("kind", database_kinds())
def test_recommend_feedback_health_and_errors(kind, tmp_path, world):
    with temporary_database(kind, tmp_path) as url:
        engine = open_db(url)
        write_world(engine, world)
        client = TestClient(create_app(engine, category_frequency().score, "catfreq", clock=lambda: NOW))
        assert client.get("/health").json() == {"status": "ok", "database": engine.dialect.name, "model_version": "catfreq"}
        answer = client.get("/enterprises/E000001/recommendations", params={"k": 3})
        assert answer.status_code == 200
        items = answer.json()["items"]
        assert 1 <= len(items) <= 3 and [i["rank"] for i in items] == list(range(1, len(items) + 1))
        assert all(i["title"].startswith("关于") or "措施" in i["title"] for i in items) and all(i["reason"] for i in items)
        top = items[0]["policy_id"]
        before = _events(engine)
        posted = client.post("/events", json={"enterprise_id": "E000001", "policy_id": top, "type": "dismiss"})
        assert posted.status_code == 201 and posted.json()["type"] == "dismiss" and _events(engine) == before + 1
        again = client.get("/enterprises/E000001/recommendations", params={"k": 3}).json()["items"]
        assert top not in [i["policy_id"] for i in again]  # a dismissed policy is not recommended again
        assert client.get("/enterprises/NOPE/recommendations").status_code == 404
        assert client.get("/enterprises/E000001/recommendations", params={"k": 0}).status_code == 422
        bad_type = client.post("/events", json={"enterprise_id": "E000001", "policy_id": top, "type": "like"})
        assert bad_type.status_code == 422 and "type" in str(bad_type.json()["detail"])
        assert client.post("/events", json={"enterprise_id": "E000001", "policy_id": "P999999", "type": "click"}).status_code == 404
        assert client.post("/events", json={"enterprise_id": "E000001"}).status_code == 422
        assert client.post("/events", json={"enterprise_id": "E000001", "policy_id": top, "type": "click",
                                            "ts": "not a time"}).status_code == 422
        assert _events(engine) == before + 1
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_server_on_localhost(tmp_path, world):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    write_world(engine, world)
    port = _free_port()
    app = create_app(engine, category_frequency().score, "catfreq", clock=lambda: NOW)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/health").json()["status"] == "ok"
            items = http.get("/enterprises/E000002/recommendations", params={"k": 2}).json()["items"]
            assert len(items) <= 2
            reply = http.post("/events", json={"enterprise_id": "E000002", "policy_id": "P000001", "type": "click",
                                               "ts": "2025-07-15T03:00:00+08:00"})
            assert reply.status_code == 201 and reply.json()["ts"].startswith("2025-07-14T19:00:00")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_event_timestamps_are_stored_as_naive_utc_and_out_of_range_is_a_422(tmp_path, world):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    write_world(engine, world)
    client = TestClient(create_app(engine, category_frequency().score, "catfreq", clock=lambda: NOW),
                        raise_server_exceptions=False)
    event = {"enterprise_id": "E000001", "policy_id": "P000001", "type": "click"}
    posted = client.post("/events", json={**event, "ts": "2025-07-01T10:00:00+08:00"})
    assert posted.status_code == 201 and posted.json()["ts"] == "2025-07-01T02:00:00"
    before = _events(engine)
    early = client.post("/events", json={**event, "ts": "0001-01-01T00:00:00+08:00"})  # before year 1 in UTC
    assert early.status_code == 422 and early.json()["detail"][0]["loc"] == ["body", "ts"]
    assert "out of range in UTC" in early.json()["detail"][0]["msg"] and _events(engine) == before
    broken = client.post("/events", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
    engine.dispose()


@pytest.mark.parametrize("kind", database_kinds())
def test_an_enterprise_registered_after_now_gets_no_recommendations_as_push_skips_it(kind, tmp_path, world):
    """The API recommended policies to enterprises registered after `now`, while `sftlab policy push` skipped them."""
    from sftlab.policy.importer import import_csv
    from sftlab.policy.push import push

    (tmp_path / "new.csv").write_text("id,name,industry,region,size_band,founded_year,tags,registered_on\n"
                                      "N0,已注册公司,制造业,浙江省,小型,2024,,2025-07-01\n"
                                      "N1,未来公司,制造业,浙江省,小型,2024,,2025-07-16\n", encoding="utf-8")
    with temporary_database(kind, tmp_path) as url:
        engine = open_db(url)
        write_world(engine, world)
        assert import_csv(engine, "enterprises", tmp_path / "new.csv", tmp_path / "rejects")["imported"] == 2
        client = TestClient(create_app(engine, category_frequency().score, "catfreq", clock=lambda: NOW))
        items = {eid: client.get(f"/enterprises/{eid}/recommendations", params={"k": 3}).json()["items"]
                 for eid in ("N0", "N1")}
        summary = push(engine, category_frequency().score, datetime(2025, 1, 1), top_k_count=3, now=NOW,
                       enterprise_ids=["N0", "N1"])
        engine.dispose()
    assert len(items["N0"]) == 3 and summary.pushed_enterprises == 1  # the same profile, registered by now
    assert items["N1"] == [] and summary.enterprises == 1  # registered the day after now: neither pushes nor recommends
