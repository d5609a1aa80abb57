"""Policy application: the importer and the API agree on timestamps and on event dates; build-data and evaluate
replace their output files as a set."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sftlab.errors import SftlabError
from sftlab.policy import evaluate, examples, fileset
from sftlab.policy.api import create_app
from sftlab.policy.db import Event, Push, open_db
from sftlab.policy.evaluate import run_evaluation
from sftlab.policy.examples import build_data
from sftlab.policy.importer import import_csv
from sftlab.policy.simulate import WorldSpec, simulate, write_world

ENTERPRISES = ("id,name,industry,region,size_band,founded_year,tags,registered_on\n"
               "E1,甲公司,制造业,广东省,小型,2010,,2020-01-01\nE2,乙公司,农业,浙江省,中型,2015,,2025-07-10\n")
POLICIES = ("id,title,issuer,category,region_scope,industry_scope,size_scope,publish_date,expiry_date,summary\n"
            "P1,关于开展高新技术企业认定工作的通知,科学技术局,科技创新,全国,,,2025-07-01,2025-12-31,摘要\n")
EVENT_HEADER = "enterprise_id,policy_id,type,ts,position\n"


def _database(tmp_path: Path, name: str):
    engine = open_db(f"sqlite:///{tmp_path / name}.sqlite")
    (tmp_path / "enterprises.csv").write_text(ENTERPRISES, encoding="utf-8")
    (tmp_path / "policies.csv").write_text(POLICIES, encoding="utf-8")
    for table in ("enterprises", "policies"):
        assert import_csv(engine, table, tmp_path / f"{table}.csv", tmp_path / "rejects")["rejected"] == 0
    return engine


def _client(engine, now: datetime = datetime(2025, 8, 1, 12, 0)) -> TestClient:
    return TestClient(create_app(engine, lambda rows: [0.0] * len(rows), "test", clock=lambda: now))


def _stored(engine) -> list[datetime]:
    with engine.connect() as conn:
        return list(conn.execute(select(Event.ts).order_by(Event.id)).scalars())


def _rejects(path: Path) -> dict[int, str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return {int(row["line"]): row["reason"] for row in csv.DictReader(handle)}


ACCEPTED = {"2025-07-02T10:00:00": datetime(2025, 7, 2, 10), "2025-07-02 10:00:00": datetime(2025, 7, 2, 10),
            "2025-07-02T10:00:00+08:00": datetime(2025, 7, 2, 2), "2025-07-02T10:00:00Z": datetime(2025, 7, 2, 10)}
REFUSED = [1751450400, 1751450400.5, "1751450400", "2025/07/02 10:00", "02.07.2025", "yesterday", True]


@pytest.mark.parametrize("ts", [*ACCEPTED, *REFUSED])
def test_the_importer_and_the_api_accept_the_same_timestamps(tmp_path, ts):
    """The API took Unix seconds (pydantic's lax mode) where the importer refused them."""
    imported = _database(tmp_path, "imported")
    (tmp_path / "events.csv").write_text(f"{EVENT_HEADER}E1,P1,click,{ts},\n", encoding="utf-8")
    summary = import_csv(imported, "events", tmp_path / "events.csv", tmp_path / "rejects")
    posted = _client(_database(tmp_path, "posted"))
    reply = posted.post("/events", json={"enterprise_id": "E1", "policy_id": "P1", "type": "click", "ts": ts})
    if ts in ACCEPTED:
        assert summary["imported"] == 1 and reply.status_code == 201
        assert _stored(imported) == [ACCEPTED[ts]] and reply.json()["ts"] == ACCEPTED[ts].isoformat()
    else:
        assert summary["rejected"] == 1 and reply.status_code == 422
        reason = _rejects(tmp_path / "rejects" / "events.rejects.csv")[2]
        assert reason == f"ts: {str(ts)!r} is not an ISO 8601 timestamp (YYYY-MM-DDTHH:MM:SS, optional offset)"
        detail = reply.json()["detail"][0]
        assert detail["loc"] == ["body", "ts"] and "is not an ISO 8601 timestamp" in detail["msg"]


DATED = [  # (enterprise, ts, the reason it cannot have happened or None)
    ("E1", "2025-06-30T23:59:00", "ts: 2025-06-30 is before policy 'P1' was published (2025-07-01)"),
    ("E1", "2025-07-01T00:00:00", None),  # the publish day itself
    ("E1", "2025-07-01T07:00:00+08:00", None),  # 1 July where it was written, 30 June 23:00 in UTC
    ("E1", "2025-07-01T07:00:00-08:00", None),
    ("E1", "2025-07-01T23:00:00-08:00", None),  # 2 July in UTC
    ("E1", "2025-06-30T23:00:00-08:00", "ts: 2025-06-30 is before policy 'P1' was published (2025-07-01)"),
    ("E2", "2025-07-09T10:00:00", "ts: 2025-07-09 is before enterprise 'E2' registered (2025-07-10)"),
    ("E2", "2025-07-10T10:00:00", None),
]


def test_events_before_the_publish_date_or_the_registration_are_rejected_rows_in_import(tmp_path):
    engine = _database(tmp_path, "db")
    rows = "".join(f"{ent},P1,click,{ts},\n" for ent, ts, _ in DATED)
    (tmp_path / "events.csv").write_text(EVENT_HEADER + rows, encoding="utf-8")
    summary = import_csv(engine, "events", tmp_path / "events.csv", tmp_path / "rejects")
    expected = {line: reason for line, (_, _, reason) in enumerate(DATED, 2) if reason}
    assert (summary["imported"], summary["rejected"]) == (len(DATED) - len(expected), len(expected))
    assert _rejects(tmp_path / "rejects" / "events.rejects.csv") == expected


def test_pushes_created_before_the_publish_date_or_the_registration_are_rejected_rows_in_import(tmp_path):
    """An imported push's created_at was not checked: a push of a policy not yet published was imported."""
    engine = _database(tmp_path, "db")
    header = "enterprise_id,policy_id,score,rank,reason,model_version,window_key,created_at,status\n"
    rows = "".join(f"{ent},P1,0.5,1,,m,w,{ts},pending\n" for ent, ts, _ in DATED)
    (tmp_path / "pushes.csv").write_text(header + rows, encoding="utf-8")
    summary = import_csv(engine, "pushes", tmp_path / "pushes.csv", tmp_path / "rejects")
    duplicate = "policy_id: duplicate push of 'P1' to 'E1'"  # one push per (enterprise, policy): line 3 is kept
    expected = {line: reason.replace("ts:", "created_at:", 1) for line, (_, _, reason) in enumerate(DATED, 2) if reason}
    expected |= {4: duplicate, 5: duplicate, 6: duplicate}
    with (tmp_path / "rejects" / "pushes.rejects.csv").open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle))  # the push's own `reason` column is kept beside the rejection's
    assert table[0] == ["reject_line", "reject_reason", *header.strip().split(",")]
    assert {int(row[0]): row[1] for row in table[1:]} == expected and all(row[6] == "" for row in table[1:])
    assert expected[2] == "created_at: 2025-06-30 is before policy 'P1' was published (2025-07-01)"
    assert expected[8] == "created_at: 2025-07-09 is before enterprise 'E2' registered (2025-07-10)"
    assert (summary["imported"], summary["rejected"]) == (2, 6)
    with engine.connect() as conn:
        assert sorted(conn.execute(select(Push.enterprise_id, Push.created_at)).tuples()) == [
            ("E1", datetime(2025, 7, 1)), ("E2", datetime(2025, 7, 10, 10))]


def test_events_before_the_publish_date_or_the_registration_are_a_422_in_the_api(tmp_path):
    engine = _database(tmp_path, "db")
    client = _client(engine)
    for ent, ts, reason in DATED:
        before = len(_stored(engine))
        reply = client.post("/events", json={"enterprise_id": ent, "policy_id": "P1", "type": "click", "ts": ts})
        if reason is None:
            assert reply.status_code == 201, (ts, reply.json())
        else:
            assert reply.status_code == 422 and len(_stored(engine)) == before
            assert reply.json()["detail"][0]["loc"] == ["body", "ts"] and reply.json()["detail"][0]["msg"] == reason
    # without ts the server's clock is the event's time: before the registration of E2 it is refused
    early = _client(engine, now=datetime(2025, 7, 5, 9, 0))
    reply = early.post("/events", json={"enterprise_id": "E2", "policy_id": "P1", "type": "click"})
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["msg"] == "ts: 2025-07-05 is before enterprise 'E2' registered (2025-07-10)"
    assert early.post("/events", json={"enterprise_id": "E1", "policy_id": "P1", "type": "click"}).status_code == 201


# ---- output sets -------------------------------------------------------------------------------------------------

BUILD_FILES = ("yesno_train.jsonl", "yesno_valid.jsonl", "category_train.jsonl", "train_features.jsonl",
               "eval_candidates.jsonl", "manifest.json")
REPORT_FILES = ("scores.jsonl", "metrics.json", "report.md")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    engine = open_db(f"sqlite:///{root}/db.sqlite")
    write_world(engine, simulate(WorldSpec(n_enterprises=20, n_policies=40, days=240, seed=3)))
    return engine


def _contents(directory: Path, names) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in names}


def _fail_at(monkeypatch, module, function: str, name: str) -> None:
    """Make `module.function` raise when it writes the file called `name`."""
    real = getattr(module, function)

    def failing(path, *args, **kwargs):
        if Path(path).name == name:
            raise OSError(28, "No space left on device (injected)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, function, failing)


def _no_staging(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(fileset.STAGE_PREFIX)]


def test_build_data_failing_at_its_last_file_leaves_every_old_file(engine, tmp_path, monkeypatch):
    out = tmp_path / "data"
    build_data(engine, out, cutoff="2025-07-01", max_train=40, seed=0)
    (out / "notes.txt").write_text("kept")
    old = _contents(out, BUILD_FILES)
    with monkeypatch.context() as patch:
        _fail_at(patch, examples, "atomic_write_json", "manifest.json")
        with pytest.raises(OSError, match="injected"):
            build_data(engine, out, cutoff="2025-06-01", max_train=60, seed=1)
    assert _contents(out, BUILD_FILES) == old and _no_staging(out)
    with monkeypatch.context() as patch:  # the swap itself fails at the last rename: the old files come back
        real = fileset.os.replace

        def replace(src, dst):  # the new manifest cannot move in (putting the old one back still works)
            if Path(dst) == out / "manifest.json" and Path(src).parent.name != ".old":
                raise OSError("injected rename")
            real(src, dst)

        patch.setattr(fileset.os, "replace", replace)
        with pytest.raises(OSError, match="injected rename"):
            build_data(engine, out, cutoff="2025-06-01", max_train=60, seed=1)
    assert _contents(out, BUILD_FILES) == old and _no_staging(out)
    build_data(engine, out, cutoff="2025-06-01", max_train=60, seed=1)  # the same build without a failure
    new = _contents(out, BUILD_FILES)
    assert all(new[name] != old[name] for name in BUILD_FILES if name != "yesno_valid.jsonl")
    assert json.loads(new["manifest.json"])["cutoff"].startswith("2025-06-01")
    assert (out / "notes.txt").read_text() == "kept" and _no_staging(out)


def test_evaluate_failing_at_its_last_file_leaves_every_old_file(engine, tmp_path, monkeypatch):
    data, out = tmp_path / "data", tmp_path / "report"
    build_data(engine, data, cutoff="2025-07-01", max_train=40, seed=0)
    run_evaluation(engine, data, out, k=5)
    old = _contents(out, REPORT_FILES)
    build_data(engine, data, cutoff="2025-06-01", max_train=60, seed=1)  # other candidates: other scores and metrics
    with monkeypatch.context() as patch:
        _fail_at(patch, evaluate, "atomic_write_text", "report.md")
        with pytest.raises(OSError, match="injected"):
            run_evaluation(engine, data, out, k=3)
    assert _contents(out, REPORT_FILES) == old and _no_staging(out)
    _, report = run_evaluation(engine, data, out, k=3)
    assert report == out / "report.md"
    new = _contents(out, REPORT_FILES)
    assert all(new[name] != old[name] for name in REPORT_FILES) and _no_staging(out)


def test_a_failed_first_run_leaves_no_output_directory(tmp_path):
    out = tmp_path / "fresh" / "report"
    with pytest.raises(SftlabError, match="boom"):
        with fileset.file_set(out) as stage:
            (stage / "a.txt").write_text("a")
            raise SftlabError("boom")
    assert not out.exists()
    with fileset.file_set(out, last=("a.txt",)) as stage:
        (stage / "a.txt").write_text("a")
        (stage / "b.txt").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
