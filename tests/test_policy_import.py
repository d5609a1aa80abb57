"""Policy application: CSV import validates every row, writes rejects with reasons, one transaction per file."""

from __future__ import annotations

import csv
import hashlib

import pytest
from sqlalchemy import func, select

from sftlab.errors import SftlabError
from sftlab.policy import importer
from sftlab.policy.db import Enterprise, Event, Policy, open_db
from sftlab.policy.importer import export_csv, import_csv, import_directory
from sftlab.policy.simulate import WorldSpec, simulate, write_world
from sftlab.policy.testing import database_kinds, temporary_database

ENTERPRISES = """id,name,industry,region,size_band,founded_year,tags,registered_on
E1,甲公司,制造业,广东省,小型,2010,高新技术企业|小微企业,2020-01-01
E2,乙公司,农业,浙江省,中型,not-a-year,,2020-01-01
E1,重复公司,制造业,广东省,小型,2011,,2020-01-01
E3,丙公司,建筑业,江苏省,大型,2001,,2020-13-01
E4,丁公司,建筑业,江苏省,大型,2001,,2021-05-05
"""
POLICIES = """id,title,issuer,category,region_scope,industry_scope,size_scope,publish_date,expiry_date,summary
P1,关于开展2026年度高新技术企业认定工作的通知,科学技术局,科技创新,全国,,,2026-01-05,2026-03-01,摘要
P2,关于申报专项资金的通知,财政局,资金补贴,广东省|浙江省,制造业,微型|小型,2026-02-01,2026-01-01,过期早于发布
P3,,财政局,资金补贴,全国,,,2026-02-01,2026-04-01,没有标题
"""
EVENTS = """enterprise_id,policy_id,type,ts,position
E1,P1,impression,2026-01-06T09:00:00,1
E1,P1,click,2026-01-06T09:00:30,
E1,P1,like,2026-01-06T09:01:00,
E9,P1,click,2026-01-06T09:01:00,
E4,P2,click,2026-01-06T09:01:00,
E4,P1,dismiss,yesterday,
E4,P1,dismiss,2026-01-07T10:00:00,,extra
"""


def _write(directory, name, text):
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def _rejects(path) -> dict[int, str]:
    with open(path, encoding="utf-8", newline="") as handle:
        return {int(row["line"]): row["reason"] for row in csv.DictReader(handle)}


def _count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


@pytest.mark.parametrize("kind", database_kinds())
def test_bad_rows_go_to_rejects_with_line_and_reason(kind, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    files = [_write(source, f"{name}.csv", text) for name, text in
             (("enterprises", ENTERPRISES), ("policies", POLICIES), ("events", EVENTS))]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    with temporary_database(kind, tmp_path) as url:
        engine = open_db(url)
        summary = {s["table"]: s for s in import_directory(engine, source, tmp_path / "rejects")}
        assert (summary["enterprises"]["imported"], summary["enterprises"]["rejected"]) == (2, 3)
        assert (summary["policies"]["imported"], summary["policies"]["rejected"]) == (1, 2)
        assert (summary["events"]["imported"], summary["events"]["rejected"]) == (2, 5)
        assert _count(engine, Enterprise) == 2 and _count(engine, Policy) == 1 and _count(engine, Event) == 2
        events = _rejects(tmp_path / "rejects" / "events.rejects.csv")
        assert events[4].startswith("type: type must be one of impression")
        assert events[5] == "enterprise_id: unknown enterprise 'E9'" and events[6] == "policy_id: unknown policy 'P2'"
        assert events[7].startswith("ts: ") and events[8] == "row: wrong number of fields"
        companies = _rejects(tmp_path / "rejects" / "enterprises.rejects.csv")
        assert companies[3].startswith("founded_year") and companies[4] == "id: duplicate id 'E1'"
        assert companies[5].startswith("registered_on")
        policies = _rejects(tmp_path / "rejects" / "policies.rejects.csv")
        assert "expiry_date is before publish_date" in policies[3] and policies[4].startswith("title")
        with engine.connect() as conn:
            assert conn.execute(select(Enterprise.tags).where(Enterprise.id == "E1")).scalar() == ["高新技术企业", "小微企业"]
        engine.dispose()
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests  # inputs untouched


def test_missing_column_is_a_one_line_error(tmp_path):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    path = _write(tmp_path, "enterprises.csv", "id,name\nE1,x\n")
    with pytest.raises(SftlabError, match=r"enterprises.csv:1: missing column\(s\) industry"):
        import_csv(engine, "enterprises", path, tmp_path / "rejects")


def test_a_file_is_imported_whole_or_not_at_all(tmp_path, monkeypatch):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    import_csv(engine, "enterprises", _write(tmp_path, "a.csv", ENTERPRISES.splitlines()[0] + "\n" + ENTERPRISES.splitlines()[1] + "\n"),
               tmp_path / "r")
    monkeypatch.setattr(importer, "_known_ids", lambda conn, table: set())  # let a duplicate reach the database
    again = _write(tmp_path, "b.csv", ENTERPRISES.splitlines()[0] + "\nE7,新公司,农业,浙江省,中型,2015,,2020-01-01\n"
                   + ENTERPRISES.splitlines()[1] + "\n")
    with pytest.raises(SftlabError, match="rolled back, nothing imported"):
        import_csv(engine, "enterprises", again, tmp_path / "r")
    assert _count(engine, Enterprise) == 1  # E7 was not half-imported


def test_export_then_import_round_trip(tmp_path):
    source = open_db(f"sqlite:///{tmp_path}/a.db")
    write_world(source, simulate(WorldSpec(n_enterprises=15, n_policies=20, days=90, seed=2)))
    counts = export_csv(source, tmp_path / "csv")
    target = open_db(f"sqlite:///{tmp_path}/b.db")
    summary = import_directory(target, tmp_path / "csv", tmp_path / "rejects")
    assert {s["table"]: s["imported"] for s in summary} == counts and all(s["rejected"] == 0 for s in summary)
    assert export_csv(target, tmp_path / "csv2") == counts
    for name in ("enterprises", "policies", "events"):
        assert (tmp_path / "csv" / f"{name}.csv").read_text() == (tmp_path / "csv2" / f"{name}.csv").read_text()


@pytest.mark.parametrize("kind", database_kinds())
def test_timestamps_are_iso_and_stored_as_naive_utc(kind, tmp_path):
    """An offset is converted to UTC (as the API does) on every database; other spellings are rejected."""
    _write(tmp_path, "enterprises.csv", ENTERPRISES.splitlines()[0] + "\n" + ENTERPRISES.splitlines()[1] + "\n"
           "E5,戊公司,农业,浙江省,中型,2015,,2020/01/05\nE6,己公司,农业,浙江省,中型,2015,,20200106\n")
    _write(tmp_path, "policies.csv", POLICIES.splitlines()[0] + "\n" + POLICIES.splitlines()[1] + "\n")
    _write(tmp_path, "events.csv", "enterprise_id,policy_id,type,ts,position\n"
           "E1,P1,click,2026-01-06T10:00:00+08:00,\nE1,P1,click,2026-01-06 09:30:00,\nE1,P1,click,1767690000,\n"
           "E1,P1,click,06/01/2026 10:00,\n")
    with temporary_database(kind, tmp_path) as url:
        engine = open_db(url)
        summary = {s["table"]: s for s in import_directory(engine, tmp_path, tmp_path / "rejects")}
        with engine.connect() as conn:
            stamps = sorted(conn.execute(select(Event.ts)).scalars())
            registered = conn.execute(select(Enterprise.registered_on).where(Enterprise.id == "E6")).scalar()
        engine.dispose()
    assert [f"{t:%Y-%m-%d %H:%M}" for t in stamps] == ["2026-01-06 02:00", "2026-01-06 09:30"]
    assert str(registered) == "2020-01-06"  # ISO 8601 basic format is ISO too
    assert summary["events"]["rejected"] == 2 and summary["enterprises"]["rejected"] == 1
    events = _rejects(tmp_path / "rejects" / "events.rejects.csv")
    assert events[4] == "ts: '1767690000' is not an ISO 8601 timestamp (YYYY-MM-DDTHH:MM:SS, optional offset)"
    assert events[5].startswith("ts: '06/01/2026 10:00' is not an ISO 8601 timestamp")
    assert _rejects(tmp_path / "rejects" / "enterprises.rejects.csv") == {
        3: "registered_on: '2020/01/05' is not an ISO 8601 date (YYYY-MM-DD)"}


def test_rejected_rows_are_named_by_their_first_line(tmp_path):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    text = (POLICIES.splitlines()[0] + "\nP1,标题,科技部,科技创新,全国,,,2026-01-01,2025-06-30,\"第一行\n第二行\n第三行\"\n\n"
            "P2,标题2,科技部,科技创新,全国,,,2026-01-01,2025-06-30,x\nP3,标题3,科技部,科技创新,全国,,,2026-01-01,2026-06-30,\n")
    summary = import_csv(engine, "policies", _write(tmp_path, "policies.csv", text), tmp_path / "rejects")
    assert (summary["imported"], summary["rejected"]) == (1, 2)
    assert list(_rejects(tmp_path / "rejects" / "policies.rejects.csv")) == [2, 6]  # where each row starts


def test_a_file_that_is_not_utf8_is_one_error_naming_the_line(tmp_path):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    path = tmp_path / "enterprises.csv"
    path.write_bytes((ENTERPRISES.splitlines()[0] + "\n" + ENTERPRISES.splitlines()[1] + "\n").encode("gbk"))
    with pytest.raises(SftlabError, match=r"enterprises.csv:2: not UTF-8 text \(byte 0x\w\w\); save the file as UTF-8$"):
        import_csv(engine, "enterprises", path, tmp_path / "rejects")


def test_a_rejects_dir_that_is_a_file_fails_before_anything_is_imported(tmp_path):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    path = _write(tmp_path, "enterprises.csv", ENTERPRISES)
    blocker = _write(tmp_path, "rejects", "a file")
    for call in (lambda: import_csv(engine, "enterprises", path, blocker),
                 lambda: import_directory(engine, tmp_path, blocker / "sub")):
        with pytest.raises(SftlabError, match=r"^--rejects-dir .*rejects is a file, not a directory$"):
            call()
    assert _count(engine, Enterprise) == 0 and blocker.read_text() == "a file"


def test_importing_the_same_events_twice_records_them_once(tmp_path):
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    _write(tmp_path, "enterprises.csv", ENTERPRISES)
    _write(tmp_path, "policies.csv", POLICIES)
    _write(tmp_path, "events.csv", EVENTS.splitlines()[0] + "\nE1,P1,impression,2026-01-06T09:00:00,1\n"
           "E1,P1,click,2026-01-06T09:00:30,\nE1,P1,click,2026-01-06T09:00:30,\nE1,P1,click,2026-01-06T09:05:00,\n")
    first = import_directory(engine, tmp_path, tmp_path / "rejects")[-1]
    assert (first["imported"], first["rejected"]) == (3, 1)
    assert _rejects(tmp_path / "rejects" / "events.rejects.csv") == {
        4: "row: duplicate event (click of 'P1' by 'E1' at 2026-01-06T09:00:30)"}
    again = import_csv(engine, "events", tmp_path / "events.csv", tmp_path / "rejects")
    assert (again["imported"], again["rejected"]) == (0, 4) and _count(engine, Event) == 3


@pytest.mark.parametrize("kind", database_kinds())
def test_cells_the_columns_cannot_hold_are_rejected_rows_not_a_rolled_back_file(kind, tmp_path):
    long_industry = "制造业" * 30  # 90 characters; the column holds 64
    _write(tmp_path, "enterprises.csv", ENTERPRISES.splitlines()[0] + "\n" + ENTERPRISES.splitlines()[1] + "\n"
           f"E5,戊公司,{long_industry},浙江省,中型,2015,,2020-01-05\nE6,己\x00公司,农业,浙江省,中型,2015,,2020-01-06\n")
    _write(tmp_path, "policies.csv", POLICIES.splitlines()[0] + "\n" + POLICIES.splitlines()[1] + "\n")
    _write(tmp_path, "events.csv", "enterprise_id,policy_id,type,ts,position\nE1,P1,impression,2026-01-06T09:00:00,1\n"
           "E1,P1,impression,2026-01-07T09:00:00,99999999999\n")
    with temporary_database(kind, tmp_path) as url:
        engine = open_db(url)
        summary = {s["table"]: (s["imported"], s["rejected"]) for s in import_directory(engine, tmp_path, tmp_path / "r")}
        assert summary == {"enterprises": (1, 2), "policies": (1, 0), "events": (1, 1)}
        assert _count(engine, Enterprise) == 1 and _count(engine, Event) == 1
        engine.dispose()
    companies = _rejects(tmp_path / "r" / "enterprises.rejects.csv")
    assert companies == {3: "industry: String should have at most 64 characters",
                         4: "name: contains a NUL character, which PostgreSQL cannot store"}
    assert _rejects(tmp_path / "r" / "events.rejects.csv")[3].startswith("position: Input should be less than or equal to")


def test_each_input_file_has_its_own_rejects_file_and_a_clean_import_removes_its_stale_one(tmp_path, capsys):
    """Every import wrote <table>.rejects.csv: February's import overwrote January's rejects, and an import
    without rejects left an old, unrelated rejects file in place."""
    from sftlab.cli import main

    db, rejects = f"sqlite:///{tmp_path}/db.sqlite", tmp_path / "rejects"
    _write(tmp_path, "enterprises.csv", ENTERPRISES)
    _write(tmp_path, "policies.csv", POLICIES)
    header = EVENTS.splitlines()[0] + "\n"
    jan = _write(tmp_path, "events_jan.csv", header + "E1,P1,click,2026-01-06T09:00:30,\nE1,P1,like,2026-01-06T09:01:00,\n")
    feb = _write(tmp_path, "events_feb.csv", header + "E1,P1,click,2026-02-06T09:00:30,\nE9,P1,click,2026-02-06T09:01:00,\n")
    import_csv(open_db(db), "enterprises", tmp_path / "enterprises.csv", rejects)
    import_csv(open_db(db), "policies", tmp_path / "policies.csv", rejects)
    for source in (jan, feb):
        assert main(["policy", "import", "--db", db, str(source), "--table", "events", "--rejects-dir", str(rejects)]) == 0
    out = capsys.readouterr().out
    assert f"(reasons in {rejects / 'events_jan.rejects.csv'})" in out and "events_feb.rejects.csv" in out
    assert _rejects(rejects / "events_jan.rejects.csv") == {3: "type: type must be one of impression, click, favorite, "
                                                                "apply, dismiss"}
    assert _rejects(rejects / "events_feb.rejects.csv") == {3: "enterprise_id: unknown enterprise 'E9'"}
    assert not (rejects / "events.rejects.csv").exists()
    fixed = header + "E1,P1,favorite,2026-02-06T09:02:00,\n"  # February again, corrected: nothing rejected
    feb.write_text(fixed, encoding="utf-8")
    summary = import_csv(open_db(db), "events", feb, rejects)
    assert (summary["imported"], summary["rejected"], summary["rejects_file"]) == (1, 0, None)
    assert not (rejects / "events_feb.rejects.csv").exists()  # not left to be read as this import's
    assert (rejects / "events_jan.rejects.csv").is_file() and feb.read_text(encoding="utf-8") == fixed
