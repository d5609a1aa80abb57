"""Baseline scorers for the 是/否 decision and the ranking: popularity, category frequency, logistic
regression on hand-made features, and the oracle (the simulator's true interest).

A scorer maps candidate rows (dicts with enterprise_id, policy_id, features, prompt) to scores,
higher = more likely to act. Each comes with its decision rule for 是/否: `threshold` is a score cut
(0.5 for the probabilistic logistic regression) or None, meaning "say 是 for the top share of
candidates equal to the positive rate of the training history" (for scores that are not
probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sftlab.errors import SftlabError
from sftlab.policy.features import FEATURE_NAMES

Rows = Sequence[dict]


@dataclass
class Scorer:
    """A named scoring function and its 是/否 decision rule."""

    name: str
    score: Callable[[Rows], list[float]]
    threshold: float | None = None


def _feature(rows: Rows, name: str) -> list[float]:
    column = FEATURE_NAMES.index(name)
    return [float(row["features"][column]) for row in rows]


def popularity() -> Scorer:
    """Most popular: the click rate of the policy's category over the 90 days before the decision."""
    return Scorer("popularity", lambda rows: _feature(rows, "category_rate"))


def category_frequency() -> Scorer:
    """The enterprise's own click share of the policy's category (90 days, smoothed towards the global share)."""
    return Scorer("category_frequency", lambda rows: _feature(rows, "own_share"))


def logistic_regression(train_rows: Rows, seed: int = 0) -> Scorer:
    """Logistic regression (scikit-learn, standardised features, balanced class weights) fit on training pairs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = [int(row["label"]) for row in train_rows]
    if len(set(labels)) < 2:
        raise SftlabError("logistic regression baseline needs clicked and ignored training pairs")
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed))
    model.fit(np.array([row["features"] for row in train_rows], dtype=float), labels)

    def score(rows: Rows) -> list[float]:
        if not rows:
            return []
        return model.predict_proba(np.array([row["features"] for row in rows], dtype=float))[:, 1].tolist()

    return Scorer("logistic_regression", score, threshold=0.5)


def oracle(engine) -> Scorer:
    """The ceiling: the simulator's stored true interest (0 for pairs without one, i.e. ineligible)."""
    from sqlalchemy import select

    from sftlab.policy.db import TrueInterest

    def score(rows: Rows) -> list[float]:
        wanted = {row["policy_id"] for row in rows}
        table: dict[tuple[str, str], float] = {}
        with engine.connect() as conn:
            for batch in _chunks(sorted(wanted), 500):
                query = select(TrueInterest).where(TrueInterest.policy_id.in_(batch))
                table.update({(r.enterprise_id, r.policy_id): r.interest for r in conn.execute(query)})
        return [table.get((row["enterprise_id"], row["policy_id"]), 0.0) for row in rows]

    return Scorer("oracle", score)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def standard_baselines(train_rows: Rows, engine=None, seed: int = 0) -> list[Scorer]:
    """Popularity, category frequency, logistic regression and (when the database has true interest) the oracle."""
    scorers = [popularity(), category_frequency(), logistic_regression(train_rows, seed)]
    if engine is not None and has_true_interest(engine):
        scorers.append(oracle(engine))
    return scorers


def has_true_interest(engine) -> bool:
    """Whether the database holds simulator ground truth (imported real data has none)."""
    from sqlalchemy import func, select

    from sftlab.policy.db import TrueInterest

    with engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(TrueInterest)).scalar())
