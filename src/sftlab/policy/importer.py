"""CSV import (validated, with a rejects file) and CSV export of the four application tables.

One CSV per table, UTF-8 (a BOM is accepted), header row required; list columns (tags, region_scope,
industry_scope, size_scope) separate items with "|". Every row is validated (types, dates, event
types, references to known enterprises and policies, duplicates); a bad row goes to
`<rejects_dir>/<table>.rejects.csv` with its line number and reason and is counted in the summary,
never silently dropped. The valid rows of a file are inserted in one transaction: a file is
imported completely or not at all. Input files are only read.
"""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError

from sftlab.errors import SftlabError
from sftlab.io import atomic_write_text
from sftlab.policy.db import EVENT_TYPES, PUSH_STATUSES, Enterprise, Event, Policy, Push

IMPORT_ORDER = ("enterprises", "policies", "events", "pushes")
LIST_SEP = "|"


def _split_list(value):
    if isinstance(value, str):
        return [item.strip() for item in value.split(LIST_SEP) if item.strip()]
    return value


ListOfText = Annotated[list[str], BeforeValidator(_split_list)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class EnterpriseRow(_Row):
    id: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=200)
    industry: str = Field(min_length=1)
    region: str = Field(min_length=1)
    size_band: str = Field(min_length=1)
    founded_year: int = Field(ge=1800, le=2100)
    tags: ListOfText = []
    registered_on: date


class PolicyRow(_Row):
    id: str = Field(min_length=1, max_length=32)
    title: str = Field(min_length=1, max_length=300)
    issuer: str = Field(min_length=1)
    category: str = Field(min_length=1)
    region_scope: ListOfText = []
    industry_scope: ListOfText = []
    size_scope: ListOfText = []
    publish_date: date
    expiry_date: date
    summary: str = ""

    @model_validator(mode="after")
    def _dates(self):
        if self.expiry_date < self.publish_date:
            raise ValueError("expiry_date is before publish_date")
        return self


class EventRow(_Row):
    enterprise_id: str = Field(min_length=1)
    policy_id: str = Field(min_length=1)
    type: str
    ts: datetime
    position: int | None = Field(None, ge=1)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"type must be one of {', '.join(EVENT_TYPES)}")
        return value

    @field_validator("position", mode="before")
    @classmethod
    def _empty_position(cls, value):
        return None if value == "" else value


class PushRow(_Row):
    enterprise_id: str = Field(min_length=1)
    policy_id: str = Field(min_length=1)
    score: float
    rank: int = Field(ge=1)
    reason: str = ""
    model_version: str = Field(min_length=1)
    window_key: str = Field(min_length=1)
    created_at: datetime
    status: str = "pending"

    @field_validator("status")
    @classmethod
    def _known_status(cls, value: str) -> str:
        if value not in PUSH_STATUSES:
            raise ValueError(f"status must be one of {', '.join(PUSH_STATUSES)}")
        return value


SPECS = {"enterprises": (EnterpriseRow, Enterprise), "policies": (PolicyRow, Policy), "events": (EventRow, Event),
         "pushes": (PushRow, Push)}


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "row"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


def _known_ids(conn, table) -> set[str]:
    return set(conn.execute(select(table.id)).scalars())


def _check_row(table: str, row: BaseModel, seen: set, known: dict) -> str | None:
    """The reason a validated row cannot be inserted (duplicate, unknown reference), or None."""
    if table in ("enterprises", "policies"):
        key = row.id
        if key in known[table] or key in seen:
            return f"id: duplicate id {key!r}"
    else:
        if row.enterprise_id not in known["enterprises"]:
            return f"enterprise_id: unknown enterprise {row.enterprise_id!r}"
        if row.policy_id not in known["policies"]:
            return f"policy_id: unknown policy {row.policy_id!r}"
        key = (row.enterprise_id, row.policy_id) if table == "pushes" else None
        if key is not None and (key in seen or key in known["pushed"]):
            return f"policy_id: duplicate push of {row.policy_id!r} to {row.enterprise_id!r}"
    if key is not None:
        seen.add(key)
    return None


def _read_csv(path: Path, table: str) -> tuple[list[str], list[tuple[int, dict]]]:
    model_cls = SPECS[table][0]
    required = [name for name, f in model_cls.model_fields.items() if f.is_required()]
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [name for name in required if name not in header]
            if missing:
                raise SftlabError(f"{path}:1: missing column(s) {', '.join(missing)} for table {table}")
            return header, [(reader.line_num, dict(row)) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SftlabError(f"{path}: cannot read CSV: {exc}") from None


def import_csv(engine, table: str, path: str | Path, rejects_dir: str | Path) -> dict:
    """Import one CSV into `table`; returns {"table", "file", "rows", "imported", "rejected", "rejects_file"}."""
    if table not in SPECS:
        raise SftlabError(f"unknown table {table!r}; expected one of {', '.join(IMPORT_ORDER)}")
    path = Path(path)
    model_cls, orm_cls = SPECS[table]
    header, rows = _read_csv(path, table)
    with engine.connect() as conn:
        known = {"enterprises": _known_ids(conn, Enterprise), "policies": _known_ids(conn, Policy),
                 "pushed": set(conn.execute(select(Push.enterprise_id, Push.policy_id)).tuples())}
    good, rejects, seen = [], [], set()
    for line, raw in rows:
        if None in raw or any(value is None for value in raw.values()):
            rejects.append((line, raw, "row: wrong number of fields"))
            continue
        try:
            parsed = model_cls.model_validate(raw)
        except ValidationError as exc:
            rejects.append((line, raw, _reason(exc)))
            continue
        problem = _check_row(table, parsed, seen, known)
        if problem:
            rejects.append((line, raw, problem))
        else:
            good.append(parsed.model_dump())
    try:
        with engine.begin() as conn:  # the whole file or nothing
            if good:
                conn.execute(insert(orm_cls), good)
    except DBAPIError as exc:
        raise SftlabError(f"{path}: import into {table} rolled back, nothing imported: {exc.orig}") from None
    rejects_file = _write_rejects(Path(rejects_dir) / f"{table}.rejects.csv", header, rejects) if rejects else None
    return {"table": table, "file": str(path), "rows": len(rows), "imported": len(good), "rejected": len(rejects),
            "rejects_file": str(rejects_file) if rejects_file else None}


def _write_rejects(path: Path, header: list[str], rejects: list[tuple[int, dict, str]]) -> Path:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["line", "reason", *header])
    for line, raw, reason in rejects:
        writer.writerow([line, reason, *[raw.get(name) or "" for name in header]])
    return atomic_write_text(path, buffer.getvalue())


def import_directory(engine, directory: str | Path, rejects_dir: str | Path) -> list[dict]:
    """Import `<table>.csv` files found in `directory`, in dependency order (enterprises first)."""
    directory = Path(directory)
    files = [(table, directory / f"{table}.csv") for table in IMPORT_ORDER if (directory / f"{table}.csv").is_file()]
    if not files:
        raise SftlabError(f"{directory}: no enterprises.csv, policies.csv, events.csv or pushes.csv found")
    return [import_csv(engine, table, path, rejects_dir) for table, path in files]


def _cell(value) -> str:
    if isinstance(value, list):
        return LIST_SEP.join(value)
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, (date, datetime)) else str(value)


def export_csv(engine, out_dir: str | Path) -> dict[str, int]:
    """Write the four tables as CSV files `import_directory` reads back; returns rows per table."""
    import io

    counts = {}
    with engine.connect() as conn:
        for table in IMPORT_ORDER:
            model_cls, orm_cls = SPECS[table]
            columns = list(model_cls.model_fields)
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(columns)
            result = conn.execute(select(*[getattr(orm_cls, c) for c in columns]).order_by(*orm_cls.__table__.primary_key))
            counts[table] = 0
            for record in result:
                writer.writerow([_cell(v) for v in record])
                counts[table] += 1
            atomic_write_text(Path(out_dir) / f"{table}.csv", buffer.getvalue())
    return counts
