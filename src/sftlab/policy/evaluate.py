"""Held-out evaluation of scorers: the 是/否 decision and the per-enterprise ranking, overall and by group.

For each scorer: precision, recall, F1 (its decision rule, see `baselines.Scorer`) and ROC AUC of the
是/否 decision over all candidates; HitRate@K, Recall@K and NDCG@K of each enterprise's ranking of its
eligible new policies (`sftlab.eval.metrics.ranking_metrics`); each for all enterprises, cold-start
ones (fewer than 3 clicks before the cut-off) and active ones. For the fine-tuned model, a paired
bootstrap over enterprises gives a 95% interval of its NDCG@K difference to each baseline. `write_report`
writes metrics.json and a Markdown report that states where the fine-tuned model wins and loses against
each baseline; `run_evaluation` also writes every candidate's scores (scores.jsonl). The files of one run replace
an earlier run's together (`sftlab.policy.fileset`): a failure while writing them leaves the old set as it was.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from sftlab.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from sftlab.policy.fileset import file_set

GROUPS = ("overall", "cold", "active")
MIN_RANKED = 30  # fewer ranked enterprises than this: a comparison is flagged as within noise
BOOTSTRAP_SAMPLES = 2000


def decision_threshold(scores: Sequence[float], threshold: float | None, positive_share: float) -> float:
    """The score cut: `threshold` itself, else the score above which `positive_share` of candidates lie."""
    if threshold is not None:
        return threshold
    if not len(scores):
        return 0.0
    return float(np.quantile(np.asarray(scores, dtype=float), 1.0 - positive_share))


def group_metrics(rows: Sequence[dict], scores: Sequence[float], cut: float, ks: Sequence[int]) -> dict:
    """Decision and ranking metrics for one group of candidate rows."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    from sftlab.eval.metrics import ranking_metrics

    labels = np.array([int(r["label"]) for r in rows])
    values = np.asarray(scores, dtype=float)
    result: dict = {"candidates": len(rows), "positives": int(labels.sum()),
                    "enterprises": len({r["enterprise_id"] for r in rows})}
    if not len(rows):
        return result
    predicted = (values >= cut).astype(int)
    p, r, f, _ = precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
    result.update({"precision": float(p), "recall": float(r), "f1": float(f)})
    result["auc"] = float(roc_auc_score(labels, values)) if 0 < labels.sum() < len(labels) else None
    queries = defaultdict(lambda: ([], []))
    for row, score in zip(rows, values):
        queries[row["enterprise_id"]][0].append(float(score))
        queries[row["enterprise_id"]][1].append(int(row["label"]))
    ranking = ranking_metrics(list(queries.values()), ks=ks)
    result["ranked_enterprises"] = ranking.get("queries", 0)
    for k in ks:
        for name in ("hit_rate", "recall", "ndcg"):
            result[f"{name}@{k}"] = ranking.get(f"{name}@{k}")
    return result


def evaluate_scorer(rows: Sequence[dict], scores: Sequence[float], threshold: float | None, positive_share: float,
                    ks: Sequence[int] = (5,)) -> dict:
    """Metrics of one scorer for every group in `GROUPS` (the cut is chosen once, on all candidates)."""
    cut = decision_threshold(scores, threshold, positive_share)
    result = {"threshold": cut}
    for group in GROUPS:
        picked = [i for i, row in enumerate(rows) if group == "overall" or bool(row["cold"]) == (group == "cold")]
        result[group] = group_metrics([rows[i] for i in picked], [scores[i] for i in picked], cut, ks)
    return result


def enterprise_ndcg(rows: Sequence[dict], scores: Sequence[float], k: int, group: str = "overall") -> dict[str, float]:
    """NDCG@k of each enterprise of `group` that has a positive candidate."""
    from sftlab.eval.metrics import ranking_metrics

    queries = defaultdict(lambda: ([], []))
    for row, score in zip(rows, scores):
        if group == "overall" or bool(row["cold"]) == (group == "cold"):
            queries[row["enterprise_id"]][0].append(float(score))
            queries[row["enterprise_id"]][1].append(int(row["label"]))
    return {eid: ranking_metrics([query], ks=(k,))[f"ndcg@{k}"] for eid, query in queries.items() if any(query[1])}


def paired_bootstrap(mine: dict[str, float], theirs: dict[str, float], samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> list[float] | None:
    """[mean difference, 2.5% and 97.5% quantiles] of mine - theirs, resampling enterprises with replacement."""
    keys = sorted(set(mine) & set(theirs))
    if not keys:
        return None
    diffs = np.array([mine[key] - theirs[key] for key in keys])
    picks = np.random.default_rng(seed).integers(0, len(diffs), size=(samples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    return [float(diffs.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def evaluate_scorers(rows: Sequence[dict], scorers, positive_share: float, ks: Sequence[int] = (5,),
                     extra_scores: dict[str, tuple[list[float], float | None]] | None = None,
                     bootstrap_for: str | None = None, bootstrap_k: int = 5, all_scores: dict | None = None) -> dict[str, dict]:
    """{scorer name: metrics} for baseline `Scorer`s plus precomputed `extra_scores` (e.g. the fine-tuned model).
    `bootstrap_for` (a scorer name) adds results[name]["bootstrap"][other][group]: its NDCG@bootstrap_k difference
    to every other scorer with a 95% paired bootstrap interval; `all_scores` (a dict) receives every score list."""
    results, scored = {}, {}
    for name, (scores, threshold) in (extra_scores or {}).items():
        results[name], scored[name] = evaluate_scorer(rows, scores, threshold, positive_share, ks), scores
    for scorer in scorers:
        scored[scorer.name] = scorer.score(rows)
        results[scorer.name] = evaluate_scorer(rows, scored[scorer.name], scorer.threshold, positive_share, ks)
    if bootstrap_for in scored:
        per_group = {name: {g: enterprise_ndcg(rows, s, bootstrap_k, g) for g in ("overall", "cold")} for name, s in scored.items()}
        results[bootstrap_for]["bootstrap"] = {
            other: {g: paired_bootstrap(per_group[bootstrap_for][g], per_group[other][g]) for g in ("overall", "cold")}
            for other in scored if other != bootstrap_for}
        results[bootstrap_for]["bootstrap_k"] = bootstrap_k
    if all_scores is not None:
        all_scores.update(scored)
    return results


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(results: dict[str, dict], k: int = 5) -> str:
    """A Markdown table: one line per scorer and group ("ranked" = enterprises with a positive, which the
    ranking metrics average over)."""
    columns = ["precision", "recall", "f1", "auc", f"hit_rate@{k}", f"recall@{k}", f"ndcg@{k}"]
    lines = ["| scorer | group | candidates | ranked | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 4)]
    for name, result in results.items():
        for group in _shown_groups(result):
            metrics = result[group]
            lines.append(f"| {name} | {group} | {metrics['candidates']} | {metrics.get('ranked_enterprises', 0)} | "
                         + " | ".join(_fmt(metrics.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _shown_groups(result: dict, subgroups_only: bool = False) -> list[str]:
    """The groups worth a line: overall, and the cold/active groups that hold candidates. With
    `subgroups_only`, overall is left out when one group holds every candidate (it would repeat that group)."""
    total = result["overall"]["candidates"]
    groups = [g for g in GROUPS if g == "overall" or result[g]["candidates"]]
    if subgroups_only and any(result[g]["candidates"] == total for g in groups if g != "overall"):
        groups.remove("overall")
    return groups


def comparisons(results: dict[str, dict], model: str, k: int = 5) -> list[str]:
    """One sentence per (baseline, group): does `model` win or lose on NDCG@k, by how much, over how many
    enterprises (flagged when fewer than MIN_RANKED)."""
    lines = []
    key = f"ndcg@{k}"
    groups = [g for g in ("overall", "cold") if g in _shown_groups(results[model], subgroups_only=True)]
    for name, result in results.items():
        if name == model:
            continue
        for group in groups:
            mine, theirs = results[model][group].get(key), result[group].get(key)
            if mine is None or theirs is None:
                lines.append(f"- {group}: {key} not defined against {name} (no enterprise with a positive)")
                continue
            verdict = "wins" if mine > theirs else ("ties" if mine == theirs else "loses")
            ranked = results[model][group].get("ranked_enterprises", 0)
            caution = "; few enterprises, within noise" if ranked < MIN_RANKED else ""
            interval = (results[model].get("bootstrap") or {}).get(name, {}).get(group)
            if interval is not None and results[model].get("bootstrap_k") == k:
                caution += f"; difference {interval[0]:+.3f}, 95% bootstrap interval [{interval[1]:+.3f}, {interval[2]:+.3f}]"
            lines.append(f"- {group}: {model} {verdict} against {name} on {key} ({mine:.3f} vs {theirs:.3f}, "
                         f"{ranked} enterprises ranked{caution})")
    return lines


def write_report(out_dir, results: dict[str, dict], manifest: dict, model: str | None = None, k: int = 5) -> Path:
    """Write metrics.json and report.md into `out_dir`, together (`sftlab.policy.fileset`); returns the report path."""
    with file_set(out_dir, last=("report.md",)) as stage:
        _write_report_files(stage, results, manifest, model, k)
    return Path(out_dir) / "report.md"


def _write_report_files(out: Path, results: dict[str, dict], manifest: dict, model: str | None, k: int) -> Path:
    atomic_write_json(out / "metrics.json", {"manifest": manifest, "results": results})
    parts = ["# Policy push: held-out evaluation", "",
             f"Cut-off {manifest.get('cutoff')}: training uses events before it; candidates are the eligible policies "
             f"published after it ({manifest.get('eval_candidates')} candidates, {manifest.get('eval_enterprises')} enterprises). "
             "Cold-start = fewer than 3 clicks before the cut-off.", "", format_table(results, k), ""]
    if model and model in results:
        parts += [f"## {model} against the baselines", "", *comparisons(results, model, k), "",
                  "The oracle ranks by the simulator's hidden true interest: it is the ceiling, not a competitor.", ""]
    return atomic_write_text(out / "report.md", "\n".join(parts))


# what evaluation reads of each line: the candidates (eval_candidates.jsonl) and the training pairs (train_features.jsonl)
CANDIDATE_FIELDS = {"enterprise_id": str, "policy_id": str, "label": int, "cold": bool, "prompt": str, "features": list}
TRAIN_FIELDS = {"label": int, "features": list}


def _read_jsonl(path: Path, fields: dict[str, type]) -> list[dict]:
    """The JSON objects of a build-data file, each checked for `fields` (name -> type); a file that is missing, not
    UTF-8, or has a line that is not such an object is a one-line SftlabError naming `path:line`."""
    import json

    from sftlab.errors import SftlabError

    if not path.is_file():
        raise SftlabError(f"{path} not found; run `sftlab policy build-data` first")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SftlabError(f"{path}:{line}: not UTF-8 text; rebuild it with `sftlab policy build-data`") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SftlabError(f"{path}:{number}: not valid JSON ({exc.msg}); rebuild it with `sftlab policy build-data`") from None
        problem = _row_problem(row, fields)
        if problem:
            raise SftlabError(f"{path}:{number}: {problem}; rebuild it with `sftlab policy build-data`")
        rows.append(row)
    return rows


def _row_problem(row, fields: dict[str, type]) -> str | None:
    """Why `row` is not a usable line (a JSON object with `fields` of their types, a 0/1 label and one number per
    feature of FEATURE_NAMES), or None."""
    from sftlab.policy.features import FEATURE_NAMES

    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for name, kind in fields.items():
        if name not in row:
            return f"missing field {name!r}"
        value = row[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"field {name!r}: expected {kind.__name__}, got {type(value).__name__}"
    if row["label"] not in (0, 1):
        return f"field 'label': expected 0 or 1, got {row['label']!r}"
    features = row["features"]
    if len(features) != len(FEATURE_NAMES) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in features):
        return f"field 'features': expected {len(FEATURE_NAMES)} numbers ({', '.join(FEATURE_NAMES)})"
    return None


def run_evaluation(engine, data_dir, out_dir, model_dir=None, k: int = 5, batch_size: int = 8,
                   precision: str = "fp32", trust_remote_code: bool = False) -> tuple[dict, Path]:
    """Evaluate the baselines (and the fine-tuned model at `model_dir`, if given) on the held-out
    candidates written by `build-data` in `data_dir`; writes metrics.json and report.md to `out_dir`. Code shipped
    with the model runs only with `trust_remote_code`."""
    from sftlab.errors import SftlabError
    from sftlab.io import read_json
    from sftlab.policy.baselines import standard_baselines

    if k < 1:
        raise SftlabError(f"--k must be at least 1, got {k}")
    if batch_size < 1:
        raise SftlabError(f"--batch-size must be at least 1, got {batch_size}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise SftlabError(f"--out {out_dir} is a file; expected a report directory")
    data_dir = Path(data_dir)
    manifest = read_json(data_dir / "manifest.json") if (data_dir / "manifest.json").is_file() else {}
    if not isinstance(manifest, dict):
        raise SftlabError(f"{data_dir / 'manifest.json'}: expected a JSON object; rebuild it with `sftlab policy build-data`")
    rows = _read_jsonl(data_dir / "eval_candidates.jsonl", CANDIDATE_FIELDS)
    if not rows:
        raise SftlabError(f"{data_dir / 'eval_candidates.jsonl'}: no held-out candidates to evaluate; build the data with "
                          "an earlier --cutoff (`sftlab policy build-data`)")
    train = _read_jsonl(data_dir / "train_features.jsonl", TRAIN_FIELDS)
    extra, name = {}, None
    if model_dir is not None:
        from sftlab.policy.scoring import score_candidates

        name = "fine_tuned"
        prompts = [row["prompt"] for row in rows]
        extra[name] = (score_candidates(model_dir, prompts, batch_size, precision, trust_remote_code), 0.5)
    share = manifest.get("train_positive_rate") or (sum(int(r["label"]) for r in train) / max(1, len(train)))
    scored: dict = {}
    results = evaluate_scorers(rows, standard_baselines(train, engine), share, ks=sorted({k, 1, 10}), extra_scores=extra,
                               bootstrap_for=name, bootstrap_k=k, all_scores=scored)
    keys = ("enterprise_id", "policy_id", "label", "cold")
    with file_set(out_dir, last=("report.md",)) as stage:  # the three files replace an earlier report's together
        atomic_write_jsonl(stage / "scores.jsonl", [{key: row[key] for key in keys} | {n: float(s[i]) for n, s in scored.items()}
                                                    for i, row in enumerate(rows)])
        _write_report_files(stage, results, manifest, name, k)
    return results, Path(out_dir) / "report.md"
