"""HTTP API of the policy-push application (FastAPI).

    GET  /health                                   database reachable? model version
    GET  /enterprises/{id}/recommendations?k=5     the K best live policies for the enterprise now
    POST /events                                   record feedback: {"enterprise_id", "policy_id", "type", "ts"?}

Bad requests get clear 4xx answers: 422 with FastAPI's field-level messages for malformed input
(k out of 1-50, unknown event type, bad timestamp), 404 for an unknown enterprise or policy, and 422 naming `ts` for
an event dated before the policy's publish date or the enterprise's registration (`timeline.date_problem`; without
`ts`, the server's clock is the event's time). `ts` is ISO 8601, read as the CSV importer reads it
(`timeline.iso_timestamp`: Unix seconds are refused, as in the importer). Timestamps are stored naive: an aware `ts`
is converted to UTC.
Recommendations use the same candidates and scorer as `push` (without excluding earlier pushes): an enterprise
registered after now gets no items, as push skips it (`sftlab.policy.push.registered_by`);
the candidate snapshot is rebuilt after every recorded event and at most `refresh_seconds` old.
"""

from __future__ import annotations

import threading
import time
from datetime import date, datetime
from typing import Annotated, Callable, Literal

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, BeforeValidator, Field, field_validator
from sqlalchemy import insert, select, text

from sftlab.policy.db import Enterprise, Event, Policy, naive_utc
from sftlab.policy.timeline import date_problem, iso_timestamp
from sftlab.policy.push import CandidateBuilder, ScoreFn, top_k


class FeedbackEvent(BaseModel):
    """A feedback event sent by the platform."""

    enterprise_id: str = Field(min_length=1, max_length=32)
    policy_id: str = Field(min_length=1, max_length=32)
    type: Literal["impression", "click", "favorite", "apply", "dismiss"]
    ts: Annotated[datetime | None, BeforeValidator(lambda v: None if v is None else iso_timestamp(v))] = Field(
        None, description="when it happened, ISO 8601 (an offset is converted to UTC); default: the server's clock")

    @field_validator("ts")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            naive_utc(value)  # out of range in UTC: a 422 naming ts
        return value  # as written: its date is checked against the policy's and the enterprise's (record_event)


class Recommendation(BaseModel):
    policy_id: str
    title: str
    category: str
    score: float
    rank: int
    reason: str


class Recommendations(BaseModel):
    enterprise_id: str
    generated_at: datetime
    model_version: str
    items: list[Recommendation]


class _Snapshot:
    """A `CandidateBuilder` shared by requests, rebuilt when stale or invalidated."""

    def __init__(self, engine, clock: Callable[[], datetime], refresh_seconds: float):
        self.engine, self.clock, self.refresh_seconds = engine, clock, refresh_seconds
        self._builder, self._built_at, self._lock = None, 0.0, threading.Lock()

    def get(self) -> CandidateBuilder:
        with self._lock:
            if self._builder is None or time.monotonic() - self._built_at > self.refresh_seconds:
                self._builder = CandidateBuilder(self.engine, self.clock())
                self._built_at = time.monotonic()
            return self._builder

    def invalidate(self) -> None:
        with self._lock:
            self._builder = None


def create_app(engine, score_fn: ScoreFn, model_version: str = "unknown", clock: Callable[[], datetime] | None = None,
               refresh_seconds: float = 60.0) -> FastAPI:
    """The FastAPI application over `engine`, ranking with `score_fn` (see `push.ScoreFn`)."""
    clock = clock or (lambda: datetime.now().replace(microsecond=0))
    snapshot = _Snapshot(engine, clock, refresh_seconds)
    app = FastAPI(title="sftlab policy push", version="1")

    @app.get("/health")
    def health() -> dict:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "not healthy"
            raise HTTPException(503, f"database unreachable: {type(exc).__name__}") from None
        return {"status": "ok", "database": engine.dialect.name, "model_version": model_version}

    @app.get("/enterprises/{enterprise_id}/recommendations", response_model=Recommendations)
    def recommend(enterprise_id: str, k: int = Query(5, ge=1, le=50, description="how many policies")) -> Recommendations:
        builder = snapshot.get()
        if enterprise_id not in builder.ents.index:
            _require(engine, Enterprise, enterprise_id, "enterprise")  # maybe created after the snapshot
            snapshot.invalidate()
            builder = snapshot.get()
        rows = builder.rows(enterprise_id, exclude_pushed=False)
        picked = top_k(rows, score_fn(rows) if rows else [], k)
        items = [Recommendation(policy_id=row["policy_id"], title=row["title"], category=row["category"], score=float(score),
                                rank=rank, reason=row["reason"]) for rank, (row, score) in enumerate(picked, 1)]
        return Recommendations(enterprise_id=enterprise_id, generated_at=builder.now, model_version=model_version, items=items)

    @app.post("/events", status_code=201)
    def record_event(event: FeedbackEvent) -> dict:
        registered = _require(engine, Enterprise, event.enterprise_id, "enterprise", Enterprise.registered_on)
        published = _require(engine, Policy, event.policy_id, "policy", Policy.publish_date)
        moment = event.ts or clock()
        problem = date_problem(moment.date(), event.policy_id, published, event.enterprise_id, registered)
        if problem:
            raise HTTPException(422, [{"type": "value_error", "loc": ["body", "ts"], "msg": problem, "input": str(moment)}])
        values = {"enterprise_id": event.enterprise_id, "policy_id": event.policy_id, "type": event.type,
                  "ts": naive_utc(moment), "position": None}
        with engine.begin() as conn:
            new_id = conn.execute(insert(Event).values(**values).returning(Event.id)).scalar_one()
        snapshot.invalidate()
        return {"id": new_id, **values}

    return app


def _require(engine, table, key: str, what: str, column=None) -> date | None:
    """`column` of the row `key` of `table` (None without a column); 404 when there is no such row."""
    with engine.connect() as conn:
        row = conn.execute(select(table.id, *([column] if column is not None else [])).where(table.id == key)).first()
    if row is None:
        raise HTTPException(404, f"{what} {key!r} not found")
    return row[1] if column is not None else None
