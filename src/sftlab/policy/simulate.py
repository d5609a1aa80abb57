"""A seeded simulator of the policy platform: enterprises, policy notices, behaviour and true interest.

The world (all randomness from one `numpy.random.default_rng(seed)`, so a seed gives the same world):

- Enterprises have an industry, a region, a size band, a founding year and tags. A share of them
  (`cold_start_share`) registers late, in the last 35% of the period, so they have little history.
- Policies are Chinese notices from `catalog` (title, issuer, category), published uniformly over the
  period and valid for 30-180 days. 40% are national, the rest for one region; 30% target the
  1-3 industries most related to their category; 30% are only for SMEs (微型/小型/中型).
- Taste: each enterprise has a logit per category = 1.5 x industry affinity + size and region shifts
  + an individual N(0, 0.8) part, plus a monthly random walk (std `drift`): taste drifts over time.
- True interest of an enterprise in a policy (the probability it acts on it when shown first, while
  fresh) = sigmoid(-2.5 + 1.3 x taste[category at that month] + 0.6 if the policy targets its industry
  + pair noise N(0, 0.4)), and exactly 0 when it is not eligible (region, industry, size). The
  interest at the policy's publish month is stored for every eligible pair (`true_interest`).
- Behaviour: each enterprise has sessions (Poisson, mean `sessions_per_month` x a log-normal
  activity factor per month of membership). A session shows up to `feed_size` policies of the
  enterprise's region or national ones, published in the last 45 days and not expired, not yet
  acted on or dismissed, in random order. Each is an `impression`; it is acted on (`click`, then
  `favorite` with p=0.35 and `apply` with p=0.3) with probability interest x position bias
  1/(1+0.25(pos-1)) x freshness exp(-age/60); otherwise `dismiss`ed with probability
  `dismiss_rate` x (1 - interest). Enterprises therefore click their favoured categories more.

`WorldSpec.for_events(n)` sizes a world for roughly n events (a few hundred to a million).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np

from sftlab.policy import catalog

FEED_WINDOW_DAYS = 45
BASE_LOGIT, TASTE_WEIGHT, TARGET_BONUS, PAIR_NOISE = -2.5, 1.3, 0.6, 0.4


@dataclass
class WorldSpec:
    """Size and knobs of a simulated world."""

    n_enterprises: int = 300
    n_policies: int = 400
    start: date = date(2025, 1, 1)
    days: int = 365
    sessions_per_month: float = 3.0
    feed_size: int = 6
    cold_start_share: float = 0.15
    drift: float = 0.25
    dismiss_rate: float = 0.12
    seed: int = 0
    reference_dir: str | None = None

    @classmethod
    def for_events(cls, n_events: int, seed: int = 0, **kw) -> "WorldSpec":
        """A world expected to produce about `n_events` events (an enterprise yields ~290 a year at
        3 sessions a month; below 20 enterprises the session rate is lowered instead)."""
        n_enterprises = max(20, n_events // 290)
        sessions = 3.0 * min(1.0, n_events / (20 * 290))
        n_policies = max(60, min(3000, int(40 * math.sqrt(n_enterprises))))
        return cls(n_enterprises=n_enterprises, n_policies=n_policies, sessions_per_month=sessions, seed=seed, **kw)


@dataclass
class World:
    """A generated world as plain rows, ready for `write_world`."""

    spec: WorldSpec
    enterprises: list[dict] = field(default_factory=list)
    policies: list[dict] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)  # (enterprise_id, policy_id, type, ts, position)
    interest: list[tuple] = field(default_factory=list)  # (enterprise_id, policy_id, interest)


def _pick(rng, items, weights=None):
    return items[int(rng.choice(len(items), p=weights))]


def _make_enterprises(spec: WorldSpec, rng) -> list[dict]:
    syllables = list("华信瑞恒鑫泰达博创联盛安嘉宏远")
    suffix = dict(zip(catalog.INDUSTRIES, ["制造", "科技", "贸易", "建设", "生物", "能源", "农业", "文化", "物流", "餐饮"]))
    end = spec.start + timedelta(days=spec.days)
    late_start = spec.start + timedelta(days=int(spec.days * 0.65))
    rows = []
    for i in range(spec.n_enterprises):
        industry = _pick(rng, catalog.INDUSTRIES, catalog.INDUSTRY_WEIGHTS)
        size = _pick(rng, catalog.SIZE_BANDS, catalog.SIZE_WEIGHTS)
        cold = rng.random() < spec.cold_start_share
        registered = (late_start + timedelta(days=int(rng.integers(0, max(1, (end - late_start).days - 20))))
                      if cold else spec.start - timedelta(days=int(rng.integers(0, 1500))))
        tags = [tag for tag, p in zip(catalog.TAGS, [0.15, 0.1, 0.2, 0.15, 0.05, 0.0]) if rng.random() < p]
        if size in ("微型", "小型"):
            tags.append("小微企业")
        name = "".join(rng.choice(syllables, 2)) + suffix[industry] + "有限公司"
        rows.append({"id": f"E{i + 1:06d}", "name": name, "industry": industry, "region": _pick(rng, catalog.REGIONS),
                     "size_band": size, "founded_year": int(rng.integers(1995, 2025)), "tags": tags,
                     "registered_on": registered})
    return rows


def _make_policies(spec: WorldSpec, rng, references: dict[str, list[str]]) -> list[dict]:
    rows = []
    for i in range(spec.n_policies):
        category = _pick(rng, catalog.CATEGORIES)
        published = spec.start + timedelta(days=int(rng.integers(0, spec.days)))
        national = rng.random() < 0.4
        region = catalog.NATIONAL if national else _pick(rng, catalog.REGIONS)
        issuer = ("国家" if national else region) + _pick(rng, catalog.ISSUERS[category])
        ranked = sorted(catalog.INDUSTRIES, key=lambda ind: -catalog.INDUSTRY_AFFINITY[ind].get(category, 0.0))
        industries = ranked[: int(rng.integers(1, 4))] if rng.random() < 0.3 else []
        sizes = list(catalog.SME_BANDS) if rng.random() < 0.3 else []
        title = _pick(rng, catalog.TITLE_PATTERNS[category]).format(year=published.year, region=region)
        expiry = published + timedelta(days=int(rng.integers(30, 181)))
        scope = "、".join(industries) + "行业" if industries else "各行业"
        size_text = "中小微企业" if sizes else "各类企业"
        summary = (f"{issuer}发布《{title}》。适用范围：{region}{scope}{size_text}。依据《{_pick(rng, references[category])}》"
                   f"等规定，符合条件的企业可于{expiry:%Y年%m月%d日}前通过政务服务平台提交申请。")
        rows.append({"id": f"P{i + 1:06d}", "title": title, "issuer": issuer, "category": category,
                     "region_scope": [region], "industry_scope": industries, "size_scope": sizes,
                     "publish_date": published, "expiry_date": expiry, "summary": summary})
    return rows


def _taste(spec: WorldSpec, enterprises: list[dict], rng) -> np.ndarray:
    """Taste logits [enterprise, month, category], drifting month by month."""
    n_months = spec.days // 30 + 2
    cats = catalog.CATEGORIES
    shared = np.array([[1.5 * catalog.INDUSTRY_AFFINITY[e["industry"]].get(c, 0.0)
                        + catalog.SIZE_AFFINITY[e["size_band"]].get(c, 0.0)
                        + catalog.REGION_AFFINITY.get(e["region"], {}).get(c, 0.0) for c in cats] for e in enterprises])
    individual = rng.normal(0.0, 0.8, shared.shape)
    walk = np.cumsum(rng.normal(0.0, spec.drift, (len(enterprises), n_months, len(cats))), axis=1)
    return (shared + individual)[:, None, :] + walk


def _scope_masks(enterprises: list[dict], policies: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(visible, eligible, targeted) boolean matrices [enterprise, policy].

    visible = the policy is national or for the enterprise's region; eligible adds industry and
    size scope; targeted = the policy names the enterprise's industry in its scope.
    """
    def codes(values, vocab):
        return np.array([vocab.index(v) for v in values])

    region = codes([e["region"] for e in enterprises], catalog.REGIONS)
    industry = codes([e["industry"] for e in enterprises], catalog.INDUSTRIES)
    size = codes([e["size_band"] for e in enterprises], catalog.SIZE_BANDS)
    region_ok = np.array([[catalog.NATIONAL in p["region_scope"] or r in p["region_scope"] for r in catalog.REGIONS]
                          for p in policies])  # [policy, region]
    industry_in = np.array([[i in p["industry_scope"] for i in catalog.INDUSTRIES] for p in policies])
    industry_ok = industry_in | np.array([not p["industry_scope"] for p in policies])[:, None]
    size_ok = np.array([[not p["size_scope"] or s in p["size_scope"] for s in catalog.SIZE_BANDS] for p in policies])
    visible = region_ok[:, region].T
    eligible = visible & industry_ok[:, industry].T & size_ok[:, size].T
    return visible, eligible, industry_in[:, industry].T


class _Model:
    """The latent interest model, evaluated on demand for (enterprise, policies, month)."""

    def __init__(self, spec, enterprises, policies, rng):
        self.spec = spec
        self.taste = _taste(spec, enterprises, rng)
        self.visible, self.eligible, self.targeted = _scope_masks(enterprises, policies)
        self.category = np.array([catalog.CATEGORIES.index(p["category"]) for p in policies])
        self.noise = rng.normal(0.0, PAIR_NOISE, self.eligible.shape)

    def month(self, day: date) -> int:
        return min(max(0, (day - self.spec.start).days // 30), self.taste.shape[1] - 1)

    def interest(self, e: int, cols: np.ndarray, month: int | np.ndarray) -> np.ndarray:
        logit = (BASE_LOGIT + TASTE_WEIGHT * self.taste[e, month, self.category[cols]]
                 + TARGET_BONUS * self.targeted[e, cols] + self.noise[e, cols])
        return np.where(self.eligible[e, cols], 1.0 / (1.0 + np.exp(-logit)), 0.0)


def _sessions(spec: WorldSpec, model: _Model, e: int, ent: dict, pol_days: np.ndarray, expiry_days: np.ndarray,
              visible: np.ndarray, activity: float, rng, events: list) -> None:
    start_day = max(0, (ent["registered_on"] - spec.start).days)
    active_days = spec.days - start_day
    n_sessions = rng.poisson(spec.sessions_per_month * activity * active_days / 30) if active_days > 0 else 0
    done = np.zeros(len(pol_days), dtype=bool)  # acted on or dismissed: never shown again
    seconds = np.sort(rng.integers(start_day, spec.days, n_sessions) * 86400 + rng.integers(8 * 3600, 20 * 3600, n_sessions))
    gaps = np.arange(n_sessions) * 900  # sessions at least 15 minutes apart: none overlaps the next
    seconds = np.maximum.accumulate(seconds - gaps) + gaps
    for moment in seconds:
        day = int(moment // 86400)
        feed = np.flatnonzero(visible & ~done & (pol_days <= day) & (pol_days > day - FEED_WINDOW_DAYS) & (expiry_days >= day))
        if feed.size == 0:
            continue
        feed = rng.permutation(feed)[: spec.feed_size]
        when = datetime.combine(spec.start, datetime.min.time()) + timedelta(seconds=int(moment))
        interest = model.interest(e, feed, model.month(spec.start + timedelta(days=int(day))))
        positions = np.arange(1, feed.size + 1)
        act_p = interest / (1 + 0.25 * (positions - 1)) * np.exp(-(day - pol_days[feed]) / 60.0)
        draws = rng.random((feed.size, 4))
        for k, j in enumerate(feed):
            pid, ts = f"P{j + 1:06d}", when + timedelta(seconds=int(k))
            events.append((ent["id"], pid, "impression", ts, int(positions[k])))
            if draws[k, 0] < act_p[k]:
                done[j] = True
                events.append((ent["id"], pid, "click", ts + timedelta(seconds=20 + k), None))
                if draws[k, 1] < 0.35:
                    events.append((ent["id"], pid, "favorite", ts + timedelta(seconds=60 + k), None))
                if draws[k, 2] < 0.3:
                    events.append((ent["id"], pid, "apply", ts + timedelta(seconds=600 + k), None))
            elif draws[k, 3] < spec.dismiss_rate * (1.0 - interest[k]):
                done[j] = True
                events.append((ent["id"], pid, "dismiss", ts + timedelta(seconds=10 + k), None))


def simulate(spec: WorldSpec) -> World:
    """Generate a whole world from `spec` (deterministic in `spec.seed`)."""
    rng = np.random.default_rng(spec.seed)
    references = catalog.load_reference_titles(spec.reference_dir)
    world = World(spec=spec, enterprises=_make_enterprises(spec, rng))
    world.policies = _make_policies(spec, rng, references)
    model = _Model(spec, world.enterprises, world.policies, rng)
    pol_days = np.array([(p["publish_date"] - spec.start).days for p in world.policies])
    expiry_days = np.array([(p["expiry_date"] - spec.start).days for p in world.policies])
    pol_month = np.array([model.month(p["publish_date"]) for p in world.policies])
    for e, ent in enumerate(world.enterprises):
        cols = np.flatnonzero(model.eligible[e])
        values = model.interest(e, cols, pol_month[cols])
        world.interest.extend((ent["id"], f"P{j + 1:06d}", round(float(v), 6)) for j, v in zip(cols, values))
        activity = float(rng.lognormal(0.0, 0.6))
        _sessions(spec, model, e, ent, pol_days, expiry_days, model.visible[e], activity, rng, world.events)
    world.events.sort(key=lambda row: (row[3], row[0]))
    return world


def write_world(engine, world: World, chunk: int = 20000) -> dict[str, int]:
    """Insert a world into an empty database (one transaction); returns row counts per table."""
    from sqlalchemy import insert

    from sftlab.policy.db import Enterprise, Event, Policy, TrueInterest

    event_keys = ("enterprise_id", "policy_id", "type", "ts", "position")
    with engine.begin() as conn:
        conn.execute(insert(Enterprise), world.enterprises)
        conn.execute(insert(Policy), world.policies)
        for i in range(0, len(world.events), chunk):
            conn.execute(insert(Event), [dict(zip(event_keys, row)) for row in world.events[i:i + chunk]])
        for i in range(0, len(world.interest), chunk):
            conn.execute(insert(TrueInterest), [{"enterprise_id": a, "policy_id": b, "interest": v}
                                                for a, b, v in world.interest[i:i + chunk]])
    return {"enterprises": len(world.enterprises), "policies": len(world.policies), "events": len(world.events),
            "true_interest": len(world.interest)}
