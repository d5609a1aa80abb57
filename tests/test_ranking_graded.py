"""Graded relevance and MAP in `sftlab.eval.metrics.ranking_metrics` and the `sftlab eval` ranking task.

Every metric is checked against brute force over all orders of tied candidates (random small queries with grades
0-3 and many ties), NDCG also against scikit-learn's `ndcg_score` (linear gain, ties averaged) and MAP against
scikit-learn's `average_precision_score` where no scores tie (scikit-learn does not average tie orders for AP).
"""

import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from pytest import approx
from sklearn.metrics import average_precision_score, ndcg_score

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.eval import tasks
from sftlab.eval.metrics import ranking_metrics
from sftlab.models.tiny import save_tiny


def _brute_force(scores: list[float], grades: list[int], k: int) -> dict:
    """Each metric's mean over every order of the candidates that sorts them by score (all orders of ties), by the
    textbook definitions: relevant = grade > 0; DCG with gain = grade and discount 1/log2(rank + 1)."""
    orders = [o for o in itertools.permutations(range(len(scores)))
              if all(scores[o[i]] >= scores[o[i + 1]] for i in range(len(o) - 1))]
    relevant = sum(g > 0 for g in grades)
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(grades, reverse=True)[:k]))
    totals = dict.fromkeys(("hit", "precision", "recall", "ndcg", "rr", "ap"), 0.0)
    for order in orders:
        ranked = [grades[i] for i in order]
        hits = [g > 0 for g in ranked]
        totals["hit"] += float(any(hits[:k]))
        totals["precision"] += sum(hits[:k]) / k
        totals["recall"] += sum(hits[:k]) / relevant
        totals["ndcg"] += sum(g / math.log2(i + 2) for i, g in enumerate(ranked[:k])) / ideal
        totals["rr"] += 1 / (hits.index(True) + 1)
        totals["ap"] += sum(sum(hits[:i + 1]) / (i + 1) for i, h in enumerate(hits) if h) / relevant
    return {key: value / len(orders) for key, value in totals.items()}


def _random_query(rng: random.Random, max_n: int = 6, levels: int = 3, top: int = 3) -> tuple[list[float], list[int]]:
    """Scores with many ties and grades 0..top (top 1: binary relevance), at least one relevant."""
    n = rng.randint(1, max_n)
    grades = [rng.choice([0, 0, *range(1, top + 1)]) for _ in range(n)]
    if not any(grades):
        grades[rng.randrange(n)] = rng.randint(1, top)
    scores = [float(rng.randint(0, levels - 1)) for _ in range(n)]  # few distinct values: many ties
    return scores, grades


@pytest.mark.parametrize("seed", range(40))
def test_every_metric_is_the_brute_force_expectation_over_tie_orders(seed):
    rng = random.Random(7000 + seed)
    scores, grades = _random_query(rng, top=1 if seed % 2 else 3)  # binary relevance in half the cases
    for k in (1, 2, 3, 8):  # 8: more than the candidates
        result = ranking_metrics([(scores, grades)], ks=[k])
        expected = _brute_force(scores, grades, k)
        assert result[f"hit_rate@{k}"] == approx(expected["hit"])
        assert result[f"precision@{k}"] == approx(expected["precision"])
        assert result[f"recall@{k}"] == approx(expected["recall"])
        assert result[f"ndcg@{k}"] == approx(expected["ndcg"])
        assert result["mrr"] == approx(expected["rr"])
        assert result["map"] == approx(expected["ap"])


@pytest.mark.parametrize("seed", range(40))
def test_graded_ndcg_is_scikit_learns_ndcg_score_with_ties(seed):
    rng = random.Random(8000 + seed)
    scores, grades = _random_query(rng, max_n=9)
    if len(scores) < 2:  # scikit-learn refuses a single document
        scores, grades = scores + [scores[0]], grades + [0]
    for k in (1, 3, 5, 20):
        ours = ranking_metrics([(scores, grades)], ks=[k])[f"ndcg@{k}"]
        assert ours == approx(float(ndcg_score(np.array([grades]), np.array([scores]), k=k)))


@pytest.mark.parametrize("seed", range(20))
def test_map_is_scikit_learns_average_precision_without_ties(seed):
    rng = random.Random(9000 + seed)
    queries, expected = [], []
    for _ in range(rng.randint(1, 4)):
        n = rng.randint(2, 12)
        grades = [rng.choice([0, 0, 1, 3]) for _ in range(n)]
        grades[0] = max(grades[0], 1)
        scores = rng.sample(range(100), n)  # distinct: one order
        queries.append((scores, grades))
        expected.append(average_precision_score([int(g > 0) for g in grades], scores))
    assert ranking_metrics(queries, ks=[1])["map"] == approx(float(np.mean(expected)))


def test_grades_count_as_relevant_above_zero_and_weigh_only_in_ndcg():
    # grade 3 ranked second, grade 1 first: binary metrics see two relevant, NDCG prefers 3 first
    graded = ranking_metrics([([0.9, 0.8, 0.1], [1, 3, 0])], ks=[1, 2])
    binary = ranking_metrics([([0.9, 0.8, 0.1], [1, 1, 0])], ks=[1, 2])
    for key in ("hit_rate@1", "precision@2", "recall@1", "mrr", "map"):
        assert graded[key] == binary[key]
    assert binary["ndcg@2"] == approx(1.0)
    assert graded["ndcg@2"] == approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    # a query whose grades are all 0 is skipped and counted
    skipped = ranking_metrics([([0.5, 0.4], [0, 0]), ([0.5, 0.4], [0, 2])], ks=[1])
    assert skipped["queries"] == 1 and skipped["queries_without_relevant"] == 1 and skipped["map"] == approx(0.5)


@pytest.mark.parametrize("grade", [-1, 1.5, "1", None, float("nan"), float("inf")])
def test_bad_grades_are_refused_by_the_metric(grade):
    with pytest.raises(ValueError, match="expected an integer >= 0"):
        ranking_metrics([([0.2, 0.1], [1, grade])])


@pytest.mark.parametrize("grade, shown", [(-1, "-1"), (1.5, "1.5"), ("2", "'2'"), (None, "None"), ([1], "[1]")])
def test_bad_grades_in_ranking_rows_name_the_line_and_candidate(grade, shown):
    row = {"_src": "rank.jsonl:3", "query": "q", "messages": [{"role": "user", "content": "pick"}],
           "candidates": [{"text": "a", "relevant": 2}, {"text": "b", "relevant": grade}]}
    with pytest.raises(SftlabError) as info:
        tasks.check_ranking_rows([row])
    message = str(info.value)
    assert message.startswith("rank.jsonl:3: candidates[1]: 'relevant' must be an integer >= 0")
    assert message.endswith(f"got {shown}") and "\n" not in message


def test_grades_pass_the_row_check():
    row = {"query": "q", "messages": [{"role": "user", "content": "pick"}],
           "candidates": [{"text": t, "relevant": g} for t, g in zip("abcde", [0, 1, 2, 3.0, True])]}
    tasks.check_ranking_rows([row])


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("m") / "qwen2", hidden=32, layers=1)


def test_sftlab_eval_ranks_graded_rows_and_reports_graded_ndcg_and_map(lm_dir, tmp_path):
    chat = [{"role": "user", "content": "Which programme fits a small software firm?"}]
    texts = ["R&D tax credit", "export subsidy", "talent housing", "green loan", "patent grant"]
    rows = [{"query": f"q{q}", "messages": chat,
             "candidates": [{"id": t, "text": t, "relevant": (q + i) % 4} for i, t in enumerate(texts)]}
            for q in range(3)]
    data = _write_jsonl(tmp_path / "graded.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "ranking", "--k", "1,3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    metrics = metrics.get("metrics", metrics)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    queries = [([c["score"] for c in p["ranking"]], [c["relevant"] for c in p["ranking"]]) for p in predictions]
    assert sorted({g for _, grades in queries for g in grades}) == [0, 1, 2, 3]
    for k in (1, 3):
        expected = np.mean([ndcg_score(np.array([g]), np.array([s]), k=k) for s, g in queries])
        assert metrics[f"ndcg@{k}"] == approx(float(expected))
    assert metrics["map"] == approx(float(np.mean([_brute_force(s, g, 1)["ap"] for s, g in queries])))


def test_sftlab_eval_refuses_a_negative_grade_naming_the_line(lm_dir, tmp_path, capsys, monkeypatch):
    from sftlab.eval import run

    monkeypatch.setattr(run, "load_for_eval", lambda *a, **k: pytest.fail("the model was loaded"))
    good = {"query": "q", "messages": [{"role": "user", "content": "pick"}],
            "candidates": [{"text": "a", "relevant": 3}, {"text": "b", "relevant": 0}]}
    bad = {**good, "candidates": [{"text": "a", "relevant": 1}, {"text": "b", "relevant": -2}]}
    data = _write_jsonl(tmp_path / "rank.jsonl", [good, bad])
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "ranking", "--out", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: {data}:2: candidates[1]: 'relevant' must be an integer >= 0 (0 not relevant, 1, 2, "
                      "... more relevant), got -2"]
    assert not (tmp_path / "o").exists()


def test_a_nan_score_is_refused_not_ranked_anywhere():
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics([([0.2, float("nan"), 0.1], [1, 0, 2])])
