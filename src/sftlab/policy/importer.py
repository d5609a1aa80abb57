"""CSV import (validated, with a rejects file) and CSV export of the four application tables.

One CSV per table, UTF-8 (a BOM is accepted), header row required, naming only the table's columns, each once (a
misspelt optional column would otherwise be dropped silently); list columns (tags, region_scope, industry_scope,
size_scope) separate items with "|". Every row is validated (types, dates, size bands (catalog.SIZE_BANDS), event
types, references to known enterprises and policies, events and pushes dated (`ts`, `created_at`) before their
policy's publish date or their enterprise's registration (`timeline.date_problem`), duplicates: of an id, of a push,
of an event already recorded with the same enterprise, policy, type and time); a bad row goes to `<rejects_dir>/<input
name>.rejects.csv` (`events_jan.csv` -> `events_jan.rejects.csv`) with its (first) line number and reason (columns
`line` and `reason`; `reject_line` and `reject_reason` for pushes, whose own `reason` column follows) and is
counted in the summary, never silently dropped. The rejects file belongs to the import of that input: an import
without rejected rows removes the one an earlier import of the same file name left. Dates are ISO 8601
(`YYYY-MM-DD`), timestamps ISO 8601 too: one with an offset (`2025-01-02T10:00:00+08:00`) is stored as naive UTC,
as the HTTP API stores it; other spellings (`2025/01/02`, Unix seconds) are rejected, here and in the API (one
reader, `timeline.iso_timestamp`). The valid rows of a file are
inserted in one transaction: a file is imported completely or not at all. Input files are only read.
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
from sftlab.policy import catalog, timeline
from sftlab.policy.db import EVENT_TYPES, PUSH_STATUSES, Enterprise, Event, Policy, Push, naive_utc

IMPORT_ORDER = ("enterprises", "policies", "events", "pushes")
LIST_SEP = "|"


def _split_list(value):
    if isinstance(value, str):
        return [item.strip() for item in value.split(LIST_SEP) if item.strip()]
    return value


def _iso_date(value):
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date (YYYY-MM-DD)") from None
    return value


def _iso_datetime(value):
    """The API's reading of a timestamp (`timeline.iso_timestamp`), stored as naive UTC."""
    return naive_utc(timeline.iso_timestamp(value))


ListOfText = Annotated[list[str], BeforeValidator(_split_list)]
IsoDate = Annotated[date, BeforeValidator(_iso_date)]
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]


INT_MAX = 2**31 - 1  # INTEGER columns (PostgreSQL's int4)


def _size_band(value: str) -> str:
    """A size band the features and eligibility know (catalog.SIZE_BANDS), else ValueError."""
    if value not in catalog.SIZE_BANDS:
        raise ValueError(f"{value!r} is not a size band; expected one of {', '.join(catalog.SIZE_BANDS)}")
    return value


class _Row(BaseModel):
    """Lengths and ranges are the columns' (sftlab.policy.db), so that a row PostgreSQL would refuse is rejected
    here, on every database, instead of rolling back the whole file."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value):
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL character, which PostgreSQL cannot store")
        return value


class EnterpriseRow(_Row):
    id: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=200)
    industry: str = Field(min_length=1, max_length=64)
    region: str = Field(min_length=1, max_length=64)
    size_band: str = Field(min_length=1, max_length=16)
    founded_year: int = Field(ge=1800, le=2100)
    tags: ListOfText = []
    registered_on: IsoDate

    @field_validator("size_band")
    @classmethod
    def _known_size(cls, value: str) -> str:
        return _size_band(value)


class PolicyRow(_Row):
    id: str = Field(min_length=1, max_length=32)
    title: str = Field(min_length=1, max_length=300)
    issuer: str = Field(min_length=1, max_length=100)
    category: str = Field(min_length=1, max_length=32)
    region_scope: ListOfText = []
    industry_scope: ListOfText = []
    size_scope: ListOfText = []
    publish_date: IsoDate
    expiry_date: IsoDate
    summary: str = ""

    @field_validator("size_scope")
    @classmethod
    def _known_sizes(cls, value: list[str]) -> list[str]:
        return [_size_band(item) for item in value]

    @model_validator(mode="after")
    def _dates(self):
        if self.expiry_date < self.publish_date:
            raise ValueError("expiry_date is before publish_date")
        return self


class EventRow(_Row):
    enterprise_id: str = Field(min_length=1)
    policy_id: str = Field(min_length=1)
    type: str
    ts: IsoDateTime
    position: int | None = Field(None, ge=1, le=INT_MAX)

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
    rank: int = Field(ge=1, le=INT_MAX)
    reason: str = ""
    model_version: str = Field(min_length=1, max_length=200)
    window_key: str = Field(min_length=1, max_length=64)
    created_at: IsoDateTime
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


def _known_ids(conn, table) -> dict:
    """id -> the date an event or push cannot precede: an enterprise's registration, a policy's publish date."""
    since = table.registered_on if table is Enterprise else table.publish_date
    return dict(conn.execute(select(table.id, since)).all())


def _check_row(table: str, row: BaseModel, seen: set, known: dict, raw: dict) -> str | None:
    """The reason a validated row cannot be inserted (duplicate, unknown reference, an event or push dated before its
    policy's publish date or its enterprise's registration: `timeline.date_problem`), or None."""
    if table in ("enterprises", "policies"):
        key = row.id
        if key in known[table] or key in seen:
            return f"id: duplicate id {key!r}"
    else:
        if row.enterprise_id not in known["enterprises"]:
            return f"enterprise_id: unknown enterprise {row.enterprise_id!r}"
        if row.policy_id not in known["policies"]:
            return f"policy_id: unknown policy {row.policy_id!r}"
        column = "created_at" if table == "pushes" else "ts"
        day = timeline.iso_timestamp(raw[column]).date()  # the date as written (valid: the row passed)
        problem = timeline.date_problem(day, row.policy_id, known["policies"][row.policy_id], row.enterprise_id,
                                        known["enterprises"][row.enterprise_id], column)
        if problem:
            return problem
        if table == "pushes":
            key = (row.enterprise_id, row.policy_id)
            if key in seen or key in known["pushed"]:
                return f"policy_id: duplicate push of {row.policy_id!r} to {row.enterprise_id!r}"
        else:  # an event already recorded (a file imported twice) would count twice
            key = (row.enterprise_id, row.policy_id, row.type, row.ts)
            if key in seen or key in known["events"]:
                return (f"row: duplicate event ({row.type} of {row.policy_id!r} by {row.enterprise_id!r} "
                        f"at {row.ts:%Y-%m-%dT%H:%M:%S})")
    seen.add(key)
    return None


def _known(conn, table: str, parsed: list[BaseModel]) -> dict:
    """What the rows are checked against: known ids (enterprise id -> registration date, policy id -> publish date),
    pushed pairs and (for events) the recorded events in the time range of the file's events."""
    known = {"enterprises": _known_ids(conn, Enterprise), "policies": _known_ids(conn, Policy),
             "pushed": set(conn.execute(select(Push.enterprise_id, Push.policy_id)).tuples()), "events": set()}
    if table == "events" and parsed:
        stamps = [row.ts for row in parsed]
        columns = (Event.enterprise_id, Event.policy_id, Event.type, Event.ts)
        known["events"] = set(conn.execute(select(*columns).where(Event.ts.between(min(stamps), max(stamps)))).tuples())
    return known


def _decode(path: Path) -> str:
    """The file's text (UTF-8, a BOM accepted); not UTF-8 -> a one-line error naming the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SftlabError(f"{path}: cannot read CSV: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SftlabError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the file as UTF-8") from None


def _read_csv(path: Path, table: str) -> tuple[list[str], list[tuple[int, dict | None, list[str]]]]:
    """(header, [(first line of the row, {column: cell} or None when it has the wrong number of fields, cells)])."""
    import io

    model_cls = SPECS[table][0]
    required = [name for name, f in model_cls.model_fields.items() if f.is_required()]
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    try:
        header = next(reader, [])
        _check_header(path, table, header, list(model_cls.model_fields), required)
        rows, previous = [], reader.line_num
        for cells in reader:  # a quoted cell may span lines: a row is named by its first line
            start, previous = previous + 1, reader.line_num
            if cells:  # blank lines are skipped
                rows.append((start, dict(zip(header, cells)) if len(cells) == len(header) else None, cells))
    except csv.Error as exc:
        raise SftlabError(f"{path}:{reader.line_num}: cannot read CSV: {exc}") from None
    return header, rows


def _check_header(path: Path, table: str, header: list[str], columns: list[str], required: list[str]) -> None:
    """A header naming a column twice, or one the table does not have (a misspelt optional column would be dropped
    silently), or lacking a required column, is a one-line error naming line 1."""
    import difflib

    if not header:
        raise SftlabError(f"{path}:1: empty file; expected a header row with the columns of table {table}")
    for position, name in enumerate(header):
        if name in header[:position]:
            raise SftlabError(f"{path}:1: column {name!r} is given twice")
        if name not in columns:
            close = difflib.get_close_matches(name, columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected columns: {', '.join(columns)}"
            raise SftlabError(f"{path}:1: unknown column {name!r} for table {table}{hint}")
    missing = [name for name in required if name not in header]
    if missing:
        raise SftlabError(f"{path}:1: missing column(s) {', '.join(missing)} for table {table}")


def check_directory_option(directory: str | Path, option: str = "--rejects-dir") -> None:
    """Refuse, before any work, a directory to write into that is a file or lies under one."""
    directory = Path(directory)
    for folder in (directory, *directory.parents):
        if folder.exists():
            if not folder.is_dir():
                raise SftlabError(f"{option} {directory}: {folder} is a file, not a directory")
            return


def import_csv(engine, table: str, path: str | Path, rejects_dir: str | Path) -> dict:
    """Import one CSV into `table`; returns {"table", "file", "rows", "imported", "rejected", "rejects_file"}."""
    if table not in SPECS:
        raise SftlabError(f"unknown table {table!r}; expected one of {', '.join(IMPORT_ORDER)}")
    path = Path(path)
    model_cls, orm_cls = SPECS[table]
    check_directory_option(rejects_dir)  # before anything is imported
    header, rows = _read_csv(path, table)
    valid, rejects = [], []
    for line, raw, cells in rows:
        if raw is None:
            rejects.append((line, dict(zip(header, cells)), "row: wrong number of fields"))
            continue
        try:
            valid.append((line, raw, model_cls.model_validate(raw)))
        except ValidationError as exc:
            rejects.append((line, raw, _reason(exc)))
    with engine.connect() as conn:
        known = _known(conn, table, [parsed for _, _, parsed in valid])
    good, seen = [], set()
    for line, raw, parsed in valid:
        problem = _check_row(table, parsed, seen, known, raw)
        if problem:
            rejects.append((line, raw, problem))
        else:
            good.append(parsed.model_dump())
    rejects.sort(key=lambda reject: reject[0])
    try:
        with engine.begin() as conn:  # the whole file or nothing
            if good:
                conn.execute(insert(orm_cls), good)
    except DBAPIError as exc:
        raise SftlabError(f"{path}: import into {table} rolled back, nothing imported: {exc.orig}") from None
    rejects_file = rejects_path(path, rejects_dir)
    if rejects:
        _write_rejects(rejects_file, header, rejects)
    else:  # an earlier import's rejects would read as this one's
        if rejects_file.is_file():
            rejects_file.unlink()
        rejects_file = None
    return {"table": table, "file": str(path), "rows": len(rows), "imported": len(good), "rejected": len(rejects),
            "rejects_file": str(rejects_file) if rejects_file else None}


def rejects_path(path: str | Path, rejects_dir: str | Path) -> Path:
    """Where the rejected rows of the input file `path` go: `<rejects_dir>/<its name without extension>.rejects.csv`."""
    return Path(rejects_dir) / f"{Path(path).stem}.rejects.csv"


def _write_rejects(path: Path, header: list[str], rejects: list[tuple[int, dict, str]]) -> Path:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # the input's own columns keep their names: pushes have a `reason` of their own, so theirs is reject_reason
    ours = ["reject_line", "reject_reason"] if {"line", "reason"} & set(header) else ["line", "reason"]
    writer.writerow([*ours, *header])
    for line, raw, reason in rejects:
        writer.writerow([line, reason, *[raw.get(name) or "" for name in header]])
    return atomic_write_text(path, buffer.getvalue())


def import_directory(engine, directory: str | Path, rejects_dir: str | Path) -> list[dict]:
    """Import `<table>.csv` files found in `directory`, in dependency order (enterprises first)."""
    directory = Path(directory)
    check_directory_option(rejects_dir)
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
