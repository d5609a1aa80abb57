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
