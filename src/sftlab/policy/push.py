"""Pushing: score each enterprise's new candidate policies and write its top K to `pushes`.

Only enterprises registered by `now` have candidates (`CandidateBuilder.registered`: push skips the others and
the HTTP API recommends them nothing). Candidates of an enterprise at time `now`: policies published between
`since` and `now`, not expired,
eligible (region, industry, size), not already pushed to it (in any window), not dismissed and not
already acted on by it. Scoring goes through one `score_fn(rows) -> scores` call per batch of
enterprises (rows carry the 是/否 prompt and the hand-made features, so a fine-tuned model or a
baseline can score them).

Idempotent and resumable: pushes are unique per (enterprise, policy) in the database, every batch
is committed in its own transaction, and enterprises that already have pushes in the same window
(`since` date) are skipped. Re-running a finished window adds nothing; re-running an interrupted
one finishes the remaining enterprises.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Collection, Sequence

import pandas as pd
from sqlalchemy import insert, select

from sftlab.errors import SftlabError
from sftlab.policy.db import Push
from sftlab.policy.examples import yes_no_prompt
from sftlab.policy.features import BehaviourIndex, Popularity, eligibility_mask, load_frames, pair_features
from sftlab.policy.reasons import reason_text

ScoreFn = Callable[[Sequence[dict]], list[float]]


class CandidateBuilder:
    """Candidate rows (prompt, features, reason) for enterprises at one moment, from one snapshot of the database."""

    def __init__(self, engine, now: datetime, since: datetime | None = None):
        self.now = now
        self.ents, self.pols, events = load_frames(engine)
        self.history = events[events["ts"] <= pd.Timestamp(now)]  # a decision "now" sees events up to now
        published = pd.to_datetime(self.pols["publish_date"]) if len(self.pols) else pd.Series(dtype="datetime64[ns]")
        live = (published <= pd.Timestamp(now)) & (pd.to_datetime(self.pols["expiry_date"]) >= pd.Timestamp(now.date()))
        if since is not None:
            live &= published >= pd.Timestamp(since)
        self.live = self.pols[live] if len(self.pols) else self.pols
        self.registered = registered_by(self.ents, now)
        self.index = BehaviourIndex(self.history, self.pols)
        self.popularity = Popularity(self.history, self.ents, now)
        with engine.connect() as conn:
            self.pushed = set(conn.execute(select(Push.enterprise_id, Push.policy_id)).tuples())
        self._live_rows = [(pid, policy, policy.to_dict()) for pid, policy in self.live.iterrows()]
        self._eligible = {pid: set(self.ents.index[eligibility_mask(self.ents, policy)]) for pid, policy, _ in self._live_rows}

    def rows(self, enterprise_id: str, exclude_pushed: bool = True) -> list[dict]:
        """Scorable candidate rows of one enterprise (see the module docstring for what is excluded;
        `exclude_pushed=False` keeps policies pushed before, for on-demand recommendations); none for an
        enterprise not registered by `now`."""
        if enterprise_id not in self.registered:
            return []
        enterprise = self.ents.loc[enterprise_id]
        ent = enterprise.to_dict()
        summary = self.index.summary(enterprise_id, self.now, inclusive=True)
        out = []
        for pid, policy, pol in self._live_rows:
            if enterprise_id not in self._eligible[pid] or (exclude_pushed and (enterprise_id, pid) in self.pushed):
                continue
            if pid in summary["dismissed"] or pid in summary["seen"]:
                continue
            out.append({"enterprise_id": enterprise_id, "policy_id": pid, "cold": summary["actions_total"] < 3,
                        "prompt": yes_no_prompt(ent, summary, pol, self.popularity),
                        "features": pair_features(summary, enterprise, policy, self.popularity),
                        "reason": reason_text(summary, ent, pol), "title": pol["title"], "category": pol["category"]})
        return out


def registered_by(ents: pd.DataFrame, now: datetime) -> set[str]:
    """Ids of the enterprises registered on or before `now` (the others do not exist yet at `now`)."""
    if not len(ents):
        return set()
    return set(ents.index[(pd.to_datetime(ents["registered_on"]) <= pd.Timestamp(now)).to_numpy()])


def top_k(rows: list[dict], scores: Sequence[float], k: int) -> list[tuple[dict, float]]:
    """The k best (row, score) pairs, highest score first (ties: policy id)."""
    ranked = sorted(zip(rows, scores), key=lambda pair: (-pair[1], pair[0]["policy_id"]))
    return ranked[:k]


@dataclass
class PushSummary:
    window: str
    enterprises: int = 0
    skipped_done: int = 0
    pushed_enterprises: int = 0
    pushes_written: int = 0
    candidates_scored: int = 0
    batches: int = 0


def _insert_ignoring_duplicates(conn, rows: list[dict]) -> int:
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
        statement = module.insert(Push).values(rows).on_conflict_do_nothing(index_elements=["enterprise_id", "policy_id"])
        return len(conn.execute(statement.returning(Push.id)).all())  # rowcount is -1 on some drivers
    conn.execute(insert(Push), rows)
    return len(rows)


def push(engine, score_fn: ScoreFn, since: datetime, top_k_count: int = 5, model_version: str = "unknown",
         now: datetime | None = None, batch_enterprises: int = 64, progress: Callable[[PushSummary], None] | None = None,
         enterprise_ids: Collection[str] | None = None) -> PushSummary:
    """Write the top `top_k_count` new policies of every enterprise (or of `enterprise_ids`) to `pushes`;
    see the module docstring."""
    if top_k_count < 1:
        raise SftlabError(f"--top-k must be at least 1, got {top_k_count}")
    if batch_enterprises < 1:
        raise SftlabError(f"--batch-enterprises must be at least 1, got {batch_enterprises}")
    if now is not None and now < since:
        raise SftlabError(f"--now {now:%Y-%m-%d} is before --since {since:%Y-%m-%d}: the window holds no policy")
    now = now or datetime.now().replace(microsecond=0)
    if now < since:
        raise SftlabError(f"--since {since:%Y-%m-%d} is in the future (now is {now:%Y-%m-%d}): the window holds no policy")
    window = f"{since:%Y-%m-%d}"
    builder = CandidateBuilder(engine, now, since)
    for table, frame in (("enterprises", builder.ents), ("policies", builder.pols)):
        if frame.empty:  # e.g. --db left out, so the default SQLite file was created empty
            raise SftlabError(f"database {engine.url.render_as_string(hide_password=True)} has no {table}; give --db, or run "
                              "`sftlab policy simulate` or `sftlab policy import` first")
    with engine.connect() as conn:
        done = set(conn.execute(select(Push.enterprise_id).where(Push.window_key == window).distinct()).scalars())
    registered = builder.registered if enterprise_ids is None else builder.registered & set(enterprise_ids)
    todo = sorted(eid for eid in registered if eid not in done)
    summary = PushSummary(window, enterprises=len(registered), skipped_done=len(registered) - len(todo))
    for start in range(0, len(todo), batch_enterprises):
        batch = [(eid, builder.rows(eid)) for eid in todo[start:start + batch_enterprises]]
        flat = [row for _, rows in batch for row in rows]
        scores = iter(score_fn(flat) if flat else [])
        records = []
        for eid, rows in batch:
            picked = top_k(rows, [next(scores) for _ in rows], top_k_count)
            records += [{"enterprise_id": eid, "policy_id": row["policy_id"], "score": float(score), "rank": rank,
                         "reason": row["reason"], "model_version": model_version, "window_key": window,
                         "created_at": now, "status": "pending"} for rank, (row, score) in enumerate(picked, 1)]
        with engine.begin() as conn:  # one batch = one transaction
            written = _insert_ignoring_duplicates(conn, records) if records else 0
        summary.batches += 1
        summary.candidates_scored += len(flat)
        summary.pushes_written += written
        summary.pushed_enterprises += len({r["enterprise_id"] for r in records})
        if progress:
            progress(summary)
    return summary
