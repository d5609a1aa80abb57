"""From the database to what models see: frames, the time split, behaviour summaries and features.

The time split is the only door to the future: `TimeSplit.history` holds events strictly before the
cut-off (everything training examples and evaluation prompts may use); `TimeSplit.future` holds the
events at or after it (used only for evaluation labels); evaluation candidates are the policies
published on or after the cut-off. `BehaviourIndex.summary(enterprise, as_of)` only reads events with
timestamp < as_of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import select

from sftlab.errors import SftlabError
from sftlab.policy import catalog
from sftlab.policy.db import ACTION_TYPES, Enterprise, Event, Policy

POPULARITY_DAYS = 90
RECENT_DAYS = 30


def load_frames(engine) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(enterprises, policies, events) as DataFrames indexed by id (events keep a RangeIndex, sorted by ts)."""
    with engine.connect() as conn:
        ents = pd.read_sql(select(Enterprise), conn).set_index("id", drop=False)
        pols = pd.read_sql(select(Policy), conn).set_index("id", drop=False)
        events = pd.read_sql(select(Event).order_by(Event.ts, Event.id), conn)
    for frame, column in ((ents, "registered_on"), (pols, "publish_date"), (pols, "expiry_date")):
        frame[column] = pd.to_datetime(frame[column]).dt.date
    events["ts"] = pd.to_datetime(events["ts"])
    events["category"] = events["policy_id"].map(pols["category"]) if len(pols) else []
    return ents, pols, events


def parse_cutoff(text: str | date | datetime, key: str = "--cutoff") -> datetime:
    """A cut-off as a datetime at midnight (accepts YYYY-MM-DD or a date)."""
    if isinstance(text, datetime):
        return text
    if isinstance(text, date):
        return datetime.combine(text, datetime.min.time())
    try:
        return datetime.combine(date.fromisoformat(str(text)), datetime.min.time())
    except ValueError:
        raise SftlabError(f"{key} {text!r} is not a date (YYYY-MM-DD)") from None


def default_cutoff(policies: pd.DataFrame, share: float = 0.8) -> datetime:
    """The publish-date quantile `share` of all policies: the last (1 - share) of notices is held out."""
    if policies.empty:
        raise SftlabError("the database has no policies; run `sftlab policy simulate` or `sftlab policy import` first")
    days = sorted(policies["publish_date"])
    return parse_cutoff(days[min(len(days) - 1, int(len(days) * share))])


@dataclass
class TimeSplit:
    """History (< cutoff), future (>= cutoff) and the new policies (published >= cutoff)."""

    cutoff: datetime
    history: pd.DataFrame
    future: pd.DataFrame
    new_policies: pd.DataFrame

    @classmethod
    def make(cls, events: pd.DataFrame, policies: pd.DataFrame, cutoff: datetime) -> "TimeSplit":
        before = events["ts"] < pd.Timestamp(cutoff)
        new = policies[pd.to_datetime(policies["publish_date"]) >= pd.Timestamp(cutoff)]
        return cls(cutoff, events[before].reset_index(drop=True), events[~before].reset_index(drop=True), new)


def eligibility_mask(ents: pd.DataFrame, policy: pd.Series) -> np.ndarray:
    """Boolean array over `ents`: eligible for `policy` by region, industry and size scope."""
    regions = policy["region_scope"] or [catalog.NATIONAL]
    ok = np.ones(len(ents), dtype=bool)
    if catalog.NATIONAL not in regions:
        ok &= ents["region"].isin(regions).to_numpy()
    if policy["industry_scope"]:
        ok &= ents["industry"].isin(policy["industry_scope"]).to_numpy()
    if policy["size_scope"]:
        ok &= ents["size_band"].isin(policy["size_scope"]).to_numpy()
    return ok


class BehaviourIndex:
    """Per-enterprise, time-sorted events for fast "what happened before time t" summaries."""

    def __init__(self, events: pd.DataFrame, policies: pd.DataFrame):
        self.titles = policies["title"].to_dict() if len(policies) else {}
        self._by_enterprise: dict[str, dict[str, np.ndarray]] = {}
        for eid, group in events.groupby("enterprise_id", sort=False):
            self._by_enterprise[eid] = {"ts": group["ts"].to_numpy(dtype="datetime64[ns]"),
                                        "type": group["type"].to_numpy(), "category": group["category"].to_numpy(),
                                        "policy": group["policy_id"].to_numpy()}

    def summary(self, enterprise_id: str, as_of: datetime, window_days: int = POPULARITY_DAYS,
                inclusive: bool = False) -> dict:
        """Counts of what the enterprise did in the `window_days` before `as_of` (exclusive; `inclusive`
        also counts events at exactly `as_of`, for decisions made "now"), plus totals."""
        rows = self._by_enterprise.get(enterprise_id)
        empty = {"actions_total": 0, "impressions": 0, "actions": 0, "recent_actions": 0, "by_category": {},
                 "recent_by_category": {}, "dismissed_by_category": {}, "last_titles": [], "seen": set(), "dismissed": set()}
        if rows is None:
            return empty
        end = np.searchsorted(rows["ts"], np.datetime64(as_of, "ns"), side="right" if inclusive else "left")
        if end == 0:
            return empty
        ts, types, cats, pols = rows["ts"][:end], rows["type"][:end], rows["category"][:end], rows["policy"][:end]
        start = np.searchsorted(ts, np.datetime64(as_of - timedelta(days=window_days), "ns"))
        recent = np.searchsorted(ts, np.datetime64(as_of - timedelta(days=RECENT_DAYS), "ns"))
        clicks = types == "click"
        window_clicks = np.flatnonzero(clicks[start:]) + start
        return {
            "actions_total": int(clicks.sum()),
            "impressions": int((types[start:] == "impression").sum()),
            "actions": int(window_clicks.size),
            "recent_actions": int(clicks[recent:].sum()),
            "by_category": _counts(cats[window_clicks]),
            "recent_by_category": _counts(cats[recent:][clicks[recent:]]),
            "dismissed_by_category": _counts(cats[start:][types[start:] == "dismiss"]),
            "last_titles": [self.titles.get(p, p) for p in pols[window_clicks][::-1][:3]],
            "seen": set(pols[np.isin(types, ACTION_TYPES)].tolist()),
            "dismissed": set(pols[types == "dismiss"].tolist()),
        }


def _counts(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(values.astype(str), return_counts=True) if len(values) else ([], [])
    return {str(n): int(c) for n, c in sorted(zip(names, counts), key=lambda item: (-item[1], item[0]))}


class Popularity:
    """Action rates per category (global and per industry) over events before a time: no future leaks."""

    def __init__(self, history: pd.DataFrame, ents: pd.DataFrame, as_of: datetime, days: int = POPULARITY_DAYS):
        window = history[(history["ts"] < pd.Timestamp(as_of)) & (history["ts"] >= pd.Timestamp(as_of - timedelta(days=days)))]
        window = window.assign(industry=window["enterprise_id"].map(ents["industry"]))
        shown = window[window["type"] == "impression"]
        acted = window[window["type"] == "click"]
        self.global_rate = _rates(acted.groupby("category").size(), shown.groupby("category").size())
        self.industry_rate = _rates(acted.groupby(["industry", "category"]).size(), shown.groupby(["industry", "category"]).size())
        total_acts = max(1, len(acted))
        self.global_share = {c: float(acted["category"].eq(c).sum() / total_acts) for c in catalog.CATEGORIES}

    def rate(self, category: str) -> float:
        return self.global_rate.get(category, 0.0)

    def industry(self, industry: str, category: str) -> float:
        return self.industry_rate.get((industry, category), self.rate(category))


def _rates(acts: pd.Series, shown: pd.Series, prior: float = 5.0) -> dict:
    """Smoothed acts / impressions per key (adds `prior` impressions at the overall rate)."""
    overall = float(acts.sum()) / max(1.0, float(shown.sum()))
    return {key: (float(acts.get(key, 0)) + prior * overall) / (float(n) + prior) for key, n in shown.items()}


FEATURE_NAMES = ["own_share", "own_recent", "own_dismissed", "log_activity", "cold", "category_rate", "industry_rate",
                 "targeted", "national", "sme_only", "size_ordinal"]


def pair_features(summary: dict, enterprise: pd.Series, policy: pd.Series, popularity: Popularity) -> list[float]:
    """Hand-made features of one (enterprise, policy) pair, in `FEATURE_NAMES` order."""
    category = policy["category"]
    own = summary["by_category"].get(category, 0)
    share = (own + 2.0 * popularity.global_share.get(category, 0.1)) / (summary["actions"] + 2.0)
    return [share, math.log1p(summary["recent_by_category"].get(category, 0)),
            math.log1p(summary["dismissed_by_category"].get(category, 0)), math.log1p(summary["actions_total"]),
            float(summary["actions_total"] < 3), popularity.rate(category), popularity.industry(enterprise["industry"], category),
            float(enterprise["industry"] in (policy["industry_scope"] or [])),
            float(catalog.NATIONAL in (policy["region_scope"] or [catalog.NATIONAL])), float(bool(policy["size_scope"])),
            _size_ordinal(enterprise)]


def _size_ordinal(enterprise: pd.Series) -> float:
    """The position of the enterprise's size band in catalog.SIZE_BANDS (a band the import refuses, written to the
    database some other way, is a one-line error naming the enterprise)."""
    band = enterprise["size_band"]
    if band not in catalog.SIZE_BANDS:
        raise SftlabError(f"enterprise {enterprise['id']!r}: size_band {band!r} is not one of {', '.join(catalog.SIZE_BANDS)}; "
                          "correct it in the database (`sftlab policy import` refuses such rows)")
    return float(catalog.SIZE_BANDS.index(band))
