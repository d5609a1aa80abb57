"""Storage of the policy-push application: SQLAlchemy 2 tables and the engine.

Tables: `enterprises`, `policies`, `events` (impression/click/favorite/apply/dismiss), `pushes`
(what was pushed to whom, unique per enterprise and policy) and `true_interest` (the simulator's
hidden ground truth, used only by the oracle baseline and for checks).

The database is any SQLAlchemy URL: `--db URL`, else `$SFTLAB_DB_URL`, else a SQLite file
`sftlab_policy.db` in the working directory. PostgreSQL works with `postgresql+psycopg://...`.
`create_schema` is idempotent (`CREATE TABLE IF NOT EXISTS` semantics).
"""

from __future__ import annotations

import os
from datetime import date, datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, CheckConstraint, Date, DateTime, Engine, Float, ForeignKey, Index, Integer, String,
                        Text, UniqueConstraint, create_engine, event)
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sftlab.errors import SftlabError
from sftlab.policy.catalog import NATIONAL

DEFAULT_DB_URL = "sqlite:///sftlab_policy.db"
EVENT_TYPES = ("impression", "click", "favorite", "apply", "dismiss")
ACTION_TYPES = ("click", "favorite", "apply")  # "acting on" a policy
PUSH_STATUSES = ("pending", "sent", "failed")


class Base(DeclarativeBase):
    pass


class Enterprise(Base):
    """A company on the platform. `tags` is a list of labels such as 高新技术企业."""

    __tablename__ = "enterprises"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64))
    size_band: Mapped[str] = mapped_column(String(16))
    founded_year: Mapped[int] = mapped_column(Integer)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    registered_on: Mapped[date] = mapped_column(Date)


class Policy(Base):
    """A policy notice. Empty scope lists mean "no restriction"; region scope ["全国"] is national."""

    __tablename__ = "policies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    issuer: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(32), index=True)
    region_scope: Mapped[list] = mapped_column(JSON, default=list)
    industry_scope: Mapped[list] = mapped_column(JSON, default=list)
    size_scope: Mapped[list] = mapped_column(JSON, default=list)
    publish_date: Mapped[date] = mapped_column(Date, index=True)
    expiry_date: Mapped[date] = mapped_column(Date)
    summary: Mapped[str] = mapped_column(Text, default="")


class Event(Base):
    """One interaction of an enterprise with a policy; `position` is the slot of an impression."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint("type IN ('impression','click','favorite','apply','dismiss')", name="ck_event_type"),
        Index("ix_events_enterprise_ts", "enterprise_id", "ts"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"))
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime] = mapped_column(DateTime)
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Push(Base):
    """A policy pushed to an enterprise. The unique key makes pushing idempotent."""

    __tablename__ = "pushes"
    __table_args__ = (UniqueConstraint("enterprise_id", "policy_id", name="uq_push_enterprise_policy"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enterprise_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), index=True)
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id"))
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(String(200))
    window_key: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="pending")


class TrueInterest(Base):
    """Simulator ground truth: probability that the enterprise acts on the policy when shown it first,
    fresh. Stored for eligible pairs; an ineligible pair's interest is 0 by construction."""

    __tablename__ = "true_interest"
    enterprise_id: Mapped[str] = mapped_column(ForeignKey("enterprises.id"), primary_key=True)
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id"), primary_key=True)
    interest: Mapped[float] = mapped_column(Float)


TABLES = {"enterprises": Enterprise, "policies": Policy, "events": Event, "pushes": Push}


def naive_utc(moment: datetime) -> datetime:
    """Timestamps are stored naive: an aware one is converted to UTC first (a naive one is kept as given).
    Out of range after the conversion (e.g. year 1 with a positive offset): ValueError."""
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is out of range in UTC") from None


def resolve_db_url(url: str | None = None) -> str:
    """The database URL: the argument, else $SFTLAB_DB_URL, else a SQLite file in the working directory."""
    return url or os.environ.get("SFTLAB_DB_URL") or DEFAULT_DB_URL


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


CONNECT_TIMEOUT_S = 10


def _connect_args(url: str) -> dict:
    """PostgreSQL through psycopg or psycopg2 gets a connect timeout (unless the URL sets `connect_timeout`): a port
    where something else listens (e.g. Redis) would otherwise leave every command waiting for ever."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except ArgumentError:
        return {}  # create_engine reports it
    libpq = parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2")
    if libpq and "connect_timeout" not in parsed.query:
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (see `resolve_db_url`); SQLite gets foreign keys on, WAL journaling and its
    file's directory created."""
    resolved = resolve_db_url(url)
    try:
        engine = create_engine(resolved, future=True, connect_args=_connect_args(resolved))
    except (ArgumentError, ImportError) as exc:  # bad URL or missing driver
        raise SftlabError(f"--db {resolved!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return engine


def create_schema(engine: Engine) -> None:
    """Create every table and index that does not exist yet; safe to call any number of times."""
    try:
        Base.metadata.create_all(engine, checkfirst=True)
    except OperationalError as exc:
        raise SftlabError(f"database {engine.url.render_as_string(hide_password=True)}: {exc.orig}") from exc


def open_db(url: str | None = None) -> Engine:
    """`make_engine` + `create_schema`: what every `sftlab policy` command starts with."""
    engine = make_engine(url)
    create_schema(engine)
    return engine


def is_eligible(enterprise: Enterprise, policy: Policy) -> bool:
    """Region, industry and size eligibility of an enterprise for a policy (empty scope = everyone)."""
    regions = policy.region_scope or [NATIONAL]
    if NATIONAL not in regions and enterprise.region not in regions:
        return False
    if policy.industry_scope and enterprise.industry not in policy.industry_scope:
        return False
    return not policy.size_scope or enterprise.size_band in policy.size_scope
