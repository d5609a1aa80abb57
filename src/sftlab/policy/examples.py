"""Behaviour -> training and evaluation examples, in Chinese, in the trainer's `messages` format.

Two forms:
- 是/否: enterprise profile + a compact summary of its recent behaviour (clicks per category, last
  clicked titles, dismissals) + one candidate policy; the answer is 是 when the enterprise acted on it.
  Training rows come from impressions before the cut-off (history as of the impression time);
  negatives are impressions without action, balanced by `sftlab.datawork.balance` (undersampling).
- next category: the same profile and summary as of a click, answering the clicked policy's category.

Evaluation rows are every eligible new policy (published >= cut-off) for every enterprise active
after the cut-off, with history as of the cut-off and the label taken from the future.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from sftlab.datawork.balance import balance_examples, stratified_split
from sftlab.errors import SftlabError
from sftlab.io import atomic_write_json, atomic_write_jsonl
from sftlab.policy import catalog
from sftlab.policy.fileset import file_set
from sftlab.policy.features import (FEATURE_NAMES, BehaviourIndex, Popularity, TimeSplit, default_cutoff, eligibility_mask,
                                    load_frames, pair_features, parse_cutoff)

YES, NO = "是", "否"
YES_NO_QUESTION = "会采取行动吗？答是或否。"
CATEGORY_QUESTION = "问题：该企业下一条会采取行动的政策最可能属于哪个类别？只回答类别名称，可选：" + "、".join(catalog.CATEGORIES) + "。"


@dataclass
class CandidateRow:
    """One (enterprise, policy) decision: its prompt, hand-made features and label."""

    enterprise_id: str
    policy_id: str
    as_of: str
    label: int
    cold: bool
    prompt: str
    features: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def messages(self) -> dict:
        answer = YES if self.label else NO
        return {"messages": [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": answer}]}


def profile_text(enterprise: dict) -> str:
    tags = "、".join(enterprise.get("tags") or []) or "无"
    return f"企业：{enterprise['industry']}，{enterprise['region']}，{enterprise['size_band']}，标签 {tags}。"


def behaviour_text(summary: dict) -> str:
    """The enterprise's last 90 days in one line: views, clicks, top clicked and dismissed categories.
    (The title of the last click was tried and left out: it lowered cold-start NDCG@5, docs/policy.md.)"""
    if summary["actions_total"] == 0 and summary["impressions"] == 0:
        return "近90天：暂无记录。"
    by_cat = "、".join(f"{c}{n}" for c, n in list(summary["by_category"].items())[:3]) or "无"
    dismissed = "、".join(f"{c}{n}" for c, n in list(summary["dismissed_by_category"].items())[:2]) or "无"
    return f"近90天：浏览{summary['impressions']}，点击{summary['actions']}；常点：{by_cat}；忽略：{dismissed}。"


def policy_text(policy: dict, enterprise: dict | None = None) -> str:
    """Title, category and scope; with `enterprise`, the scope is said relative to it (本行业 / 全国)."""
    regions = "、".join(policy["region_scope"] or [catalog.NATIONAL])
    industries = policy["industry_scope"] or []
    if enterprise is not None:
        industry = "点名本行业" if enterprise["industry"] in industries else ("限定行业" if industries else "不限行业")
    else:
        industry = "、".join(industries) or "不限行业"
    size = "限中小微" if policy["size_scope"] else "不限规模"
    return f"候选：《{policy['title']}》，{policy['category']}类，{regions}，{industry}，{size}。"


def _own_level(own: int, actions: int) -> str:
    """The enterprise's clicks of one category in words, relative to its own clicks."""
    if actions == 0:
        return "无点击记录"
    share = own / actions
    return "主要偏好" if share >= 0.3 else ("有兴趣" if share >= 0.12 else ("偶尔" if own else "未点击"))


def _peer_level(rate: float, mean_rate: float) -> str:
    """The industry's click rate on one category in words, relative to its mean over categories."""
    ratio = rate / mean_rate if mean_rate > 0 else 1.0
    return "高" if ratio >= 1.3 else ("低" if ratio <= 0.75 else "中")


def match_text(enterprise: dict, summary: dict, policy: dict, popularity: Popularity) -> str:
    """The pair's key signals in words: own clicks and dismissals of the policy's category (count and
    level), and the click rate of enterprises of the same industry on that category (history only) as a
    level against that industry's mean over categories."""
    category = policy["category"]
    own = summary["by_category"].get(category, 0)
    dismissed = summary["dismissed_by_category"].get(category, 0)
    rates = [popularity.industry(enterprise["industry"], c) for c in catalog.CATEGORIES]
    peers = popularity.industry(enterprise["industry"], category)
    return (f"匹配：本企业点击该类{own}次（{_own_level(own, summary['actions'])}），忽略{dismissed}次；"
            f"同行业对该类兴趣{_peer_level(peers, sum(rates) / len(rates))}（{peers:.0%}）。")


def yes_no_prompt(enterprise: dict, summary: dict, policy: dict, popularity: Popularity) -> str:
    """The 是/否 question for one enterprise and one candidate policy (`summary` and `popularity`: history
    before the decision time)."""
    return "\n".join([profile_text(enterprise), behaviour_text(summary), policy_text(policy, enterprise),
                      match_text(enterprise, summary, policy, popularity), YES_NO_QUESTION])


def category_prompt(enterprise: dict, summary: dict) -> str:
    """The next-category question for one enterprise."""
    return "\n".join([profile_text(enterprise), behaviour_text(summary), CATEGORY_QUESTION])


class PopularityCache:
    """`Popularity` as of the Monday before a time (weekly snapshots: cheap, and still no future leak)."""

    def __init__(self, history: pd.DataFrame, ents: pd.DataFrame):
        self.history, self.ents, self._cache = history, ents, {}

    def at(self, when: datetime) -> Popularity:
        monday = datetime.combine((when - timedelta(days=when.weekday())).date(), datetime.min.time())
        if monday not in self._cache:
            self._cache[monday] = Popularity(self.history, self.ents, monday)
        return self._cache[monday]


def training_rows(ents: pd.DataFrame, pols: pd.DataFrame, split: TimeSplit, max_pool: int = 20000,
                  seed: int = 0) -> list[CandidateRow]:
    """是/否 rows from impressions before the cut-off: first impression of each pair, label = clicked before the cut-off."""
    history = split.history
    clicked = set(zip(*[history.loc[history["type"] == "click", c] for c in ("enterprise_id", "policy_id")]))
    shown = history[history["type"] == "impression"].drop_duplicates(["enterprise_id", "policy_id"])
    pairs = list(zip(shown["enterprise_id"], shown["policy_id"], shown["ts"]))
    if len(pairs) > max_pool:  # keep every positive, sample the negatives
        rng = random.Random(seed)
        positives = [p for p in pairs if (p[0], p[1]) in clicked]
        negatives = [p for p in pairs if (p[0], p[1]) not in clicked]
        pairs = positives[:max_pool // 2] + rng.sample(negatives, max(0, max_pool - min(len(positives), max_pool // 2)))
    index, popularity = BehaviourIndex(history, pols), PopularityCache(history, ents)
    ent_rows, pol_rows = ents.to_dict("index"), pols.to_dict("index")
    rows = []
    for eid, pid, ts in pairs:
        as_of = ts.to_pydatetime()
        summary = index.summary(eid, as_of)
        enterprise, policy = ent_rows[eid], pol_rows[pid]
        popular = popularity.at(as_of)
        rows.append(CandidateRow(eid, pid, as_of.isoformat(), int((eid, pid) in clicked), summary["actions_total"] < 3,
                                 yes_no_prompt(enterprise, summary, policy, popular),
                                 pair_features(summary, ents.loc[eid], pols.loc[pid], popular)))
    return rows


def category_rows(ents: pd.DataFrame, pols: pd.DataFrame, split: TimeSplit, limit: int = 2000, seed: int = 0) -> list[dict]:
    """Next-category examples: for clicks before the cut-off, the history before the click -> its category."""
    clicks = split.history[split.history["type"] == "click"]
    picks = list(zip(clicks["enterprise_id"], clicks["policy_id"], clicks["ts"]))
    picks = random.Random(seed).sample(picks, min(limit, len(picks)))
    index, ent_rows = BehaviourIndex(split.history, pols), ents.to_dict("index")
    rows = []
    for eid, pid, ts in picks:
        as_of = ts.to_pydatetime()
        prompt = category_prompt(ent_rows[eid], index.summary(eid, as_of))
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": pols.at[pid, "category"]}]})
    return rows


def evaluation_rows(ents: pd.DataFrame, pols: pd.DataFrame, split: TimeSplit, max_enterprises: int | None = None,
                    seed: int = 0, group: str = "all") -> list[CandidateRow]:
    """Every eligible new policy for every enterprise with events after the cut-off; history as of the cut-off.
    `group` "cold" / "active" keeps only cold-start (fewer than 3 clicks before the cut-off) / other enterprises
    (before `max_enterprises` samples them)."""
    future = split.future
    acted = set(zip(*[future.loc[future["type"] == "click", c] for c in ("enterprise_id", "policy_id")]))
    index = BehaviourIndex(split.history, pols)
    active = sorted(set(future["enterprise_id"]))
    if group != "all":
        active = [e for e in active if (index.summary(e, split.cutoff)["actions_total"] < 3) == (group == "cold")]
    if max_enterprises is not None and len(active) > max_enterprises:
        active = sorted(random.Random(seed).sample(active, max_enterprises))
    popularity = Popularity(split.history, ents, split.cutoff)
    subset = ents.loc[active]
    ent_rows, pol_rows = ents.to_dict("index"), pols.to_dict("index")
    summaries = {eid: index.summary(eid, split.cutoff) for eid in active}
    rows = []
    for pid, policy in split.new_policies.iterrows():
        for eid in subset.index[eligibility_mask(subset, policy)]:
            summary = summaries[eid]
            rows.append(CandidateRow(eid, pid, split.cutoff.isoformat(), int((eid, pid) in acted), summary["actions_total"] < 3,
                                     yes_no_prompt(ent_rows[eid], summary, pol_rows[pid], popularity),
                                     pair_features(summary, ents.loc[eid], policy, popularity)))
    rows.sort(key=lambda r: (r.enterprise_id, r.policy_id))
    return rows


def _cap_per_answer(examples: list[dict], limit: int, seed: int) -> list[dict]:
    """At most limit // 2 examples per answer (是/否), shuffled, so a capped set stays balanced."""
    shuffled = random.Random(seed).sample(examples, len(examples))
    kept, per_answer = [], {}
    for example in shuffled:
        answer = example["messages"][-1]["content"]
        if per_answer.get(answer, 0) < max(1, limit // 2):
            per_answer[answer] = per_answer.get(answer, 0) + 1
            kept.append(example)
    return kept


MIN_TRAIN = 12  # 6 per answer: the 10% validation split then holds both answers


def _check_sizes(max_train: int, max_eval_enterprises: int | None, category_limit: int) -> None:
    if max_train < MIN_TRAIN:
        raise SftlabError(f"--max-train must be at least {MIN_TRAIN} (6 per answer, so that the validation split "
                          f"holds both answers), got {max_train}")
    if max_eval_enterprises is not None and max_eval_enterprises < 1:
        raise SftlabError(f"--max-eval-enterprises must be at least 1, got {max_eval_enterprises}")
    if category_limit < 0:
        raise SftlabError(f"--category-limit must be at least 0, got {category_limit}")


def build_data(engine, out_dir, cutoff=None, max_train: int = 2000, max_eval_enterprises: int | None = None,
               category_limit: int = 1000, val_ratio: float = 0.1, seed: int = 0, eval_group: str = "all") -> dict:
    """Write the training and evaluation files for a time split into `out_dir`; returns the manifest.

    Files: yesno_train.jsonl / yesno_valid.jsonl (balanced 是/否, messages format), category_train.jsonl
    (next category), train_features.jsonl (every training pair with features, for baselines),
    eval_candidates.jsonl (held-out candidates with prompts, features, labels) and manifest.json.
    """
    _check_sizes(max_train, max_eval_enterprises, category_limit)
    ents, pols, events = load_frames(engine)
    cut = parse_cutoff(cutoff) if cutoff else default_cutoff(pols)
    split = TimeSplit.make(events, pols, cut)
    train = training_rows(ents, pols, split, max_pool=max(20000, 10 * max_train), seed=seed)
    if len({row.label for row in train}) < 2:
        raise SftlabError(f"--cutoff {cut:%Y-%m-%d}: the history before it needs both clicked and ignored impressions")
    balanced, balance_report = balance_examples([row.messages() for row in train], "undersample", seed)
    balanced = _cap_per_answer(balanced, max_train, seed)
    try:
        fit, valid = stratified_split(balanced, val_ratio, seed) if val_ratio > 0 else (balanced, [])
    except SftlabError as exc:
        raise SftlabError(f"--cutoff {cut:%Y-%m-%d}: the history before it gives only {len(balanced)} balanced 是/否 "
                          f"examples, too few for the validation split ({exc})") from None
    evaluation = evaluation_rows(ents, pols, split, max_eval_enterprises, seed, eval_group)
    categories = category_rows(ents, pols, split, category_limit, seed)
    manifest = {"cutoff": cut.isoformat(), "train_pairs": len(train), "train_positive_rate": sum(r.label for r in train) / len(train),
                "yesno_train": len(fit), "yesno_valid": len(valid), "balance": balance_report,
                "eval_candidates": len(evaluation), "eval_positives": sum(r.label for r in evaluation),
                "eval_enterprises": len({r.enterprise_id for r in evaluation}), "eval_group": eval_group,
                "feature_names": FEATURE_NAMES}
    # the six files replace an earlier build's together: a failure while writing them leaves all of its files
    with file_set(out_dir, last=("manifest.json",)) as stage:
        atomic_write_jsonl(stage / "yesno_train.jsonl", fit)
        atomic_write_jsonl(stage / "yesno_valid.jsonl", valid)
        atomic_write_jsonl(stage / "category_train.jsonl", categories)
        atomic_write_jsonl(stage / "train_features.jsonl", [row.to_json() for row in train])
        atomic_write_jsonl(stage / "eval_candidates.jsonl", [row.to_json() for row in evaluation])
        atomic_write_json(stage / "manifest.json", manifest)
    return manifest
