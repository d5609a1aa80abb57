"""Metric functions over plain Python lists: labels, ranking, generation and language modelling.

All values are floats in [0, 1] except `loss`/`perplexity` and counts. BLEU is sacrebleu's corpus
BLEU-4 divided by 100; ROUGE-1/2/L are rouge-score's mean F-measures. Label metrics come from
scikit-learn; an unparseable prediction (`None`) counts as wrong, is counted in `unparseable`, and
appears as its own column of the confusion matrix (it is never a false positive of a real class); macro
averages cover the labels that occur. Ranking metrics take relevance grades (integers >= 0; above 0 is relevant,
NDCG's gain is the grade) and are expectations over the orders of tied candidates.
The definitions are in docs/eval.md.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Sequence

UNPARSEABLE = "(unparseable)"
# CJK ideographs (BMP blocks and the supplementary ideographic plane): one token each, never part of a word,
# so "GPT模型" is ["gpt", "模", "型"] as in sacrebleu's `zh` tokenizer.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK = re.compile(f"[{_HAN}]")
_CHAR_TOKENS = re.compile(f"[{_HAN}]|[^\\W_{_HAN}]+", re.UNICODE)


def scalar_metrics(result: dict) -> dict[str, float]:
    """The flat numeric entries of a metrics dict (drops nested details such as per-class tables)."""
    return {key: float(value) for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def label_metrics(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str],
                  probs: Sequence[Sequence[float]] | None = None, positive: str | None = None) -> dict:
    """Accuracy, per-class and macro/micro/weighted precision/recall/F1, confusion matrix, binary AUC/PR.

    `y_pred` entries are label names or None (unparseable). scikit-learn's conventions with `zero_division=0`:
    an unparseable prediction is a false negative of its reference and nobody's false positive (so micro
    recall equals accuracy and micro precision leaves unparseable answers out); a label never predicted has
    precision 0, a label absent from the references recall 0. Macro averages over the labels that occur in
    `y_true` or `y_pred`; micro and weighted over all of `labels` (a label that occurs nowhere adds nothing).
    `probs[i][j]` is the probability of `labels[j]` for example i (likelihood or classifier scores); with two
    labels it adds ROC AUC, average precision, the PR curve and the F1-maximising threshold for `positive`
    (default labels[1]).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    predicted = [UNPARSEABLE if p is None else p for p in y_pred]
    result: dict = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, predicted)),
                    "unparseable": sum(p is None for p in y_pred)}
    # Macro averages over the labels that occur (as reference or prediction), scikit-learn's default label set: a
    # label of the set that occurs nowhere has no defined precision or recall and does not count as a 0.
    occurring = set(y_true) | set(predicted)
    averaged = {"macro": [name for name in labels if name in occurring] or labels, "micro": labels, "weighted": labels}
    for average, names in averaged.items():
        p, r, f, _ = precision_recall_fscore_support(y_true, predicted, labels=names, average=average, zero_division=0)
        result.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    p, r, f, s = precision_recall_fscore_support(y_true, predicted, labels=labels, average=None, zero_division=0)
    result["per_class"] = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                           for i, name in enumerate(labels)}
    columns = labels + [UNPARSEABLE]
    matrix = confusion_matrix(y_true, predicted, labels=columns)[: len(labels)]
    result["confusion"] = {"true": labels, "predicted": columns, "matrix": matrix.tolist()}
    if probs is not None and len(labels) == 2:
        result.update(binary_curve_metrics(y_true, probs, labels, positive or labels[1]))
    return result


def binary_curve_metrics(y_true: Sequence[str], probs: Sequence[Sequence[float]], labels: list[str],
                         positive: str) -> dict:
    """ROC AUC, average precision, PR curve and the threshold with the best F1 for the `positive` label."""
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    column = labels.index(positive)
    truth = np.array([1 if label == positive else 0 for label in y_true])
    score = np.array([row[column] for row in probs], dtype=float)
    if truth.min() == truth.max():  # AUC and PR need both classes present
        return {"positive": positive}
    precision, recall, thresholds = precision_recall_curve(truth, score)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=(precision + recall) > 0)
    best = int(np.argmax(f1[:-1]))
    return {
        "positive": positive,
        "auc": float(roc_auc_score(truth, score)),
        "average_precision": float(average_precision_score(truth, score)),
        "threshold": float(thresholds[best]),
        "threshold_precision": float(precision[best]),
        "threshold_recall": float(recall[best]),
        "threshold_f1": float(f1[best]),
        "pr_curve": _thinned_curve(precision, recall, thresholds, best),
    }


PR_CURVE_POINTS = 1000  # metrics.json's PR curve: at most this many points (100,000 rows gave 5.8 MiB of JSON)


def _thinned_curve(precision, recall, thresholds, best: int) -> dict:
    """The PR curve with at most `PR_CURVE_POINTS` points, evenly spaced along scikit-learn's (its first and last
    point and the best-F1 threshold's point kept); `thresholds` has one value fewer than the other two, as there."""
    import numpy as np

    keep = np.unique(np.concatenate([np.linspace(0, len(thresholds) - 1, PR_CURVE_POINTS - 2).round().astype(int),
                                     [best]]))
    if len(keep) >= len(thresholds):
        keep = np.arange(len(thresholds))
    points = np.append(keep, len(precision) - 1)  # scikit-learn's last point: precision 1, recall 0, no threshold
    return {"precision": precision[points].tolist(), "recall": recall[points].tolist(),
            "thresholds": thresholds[keep].tolist()}


def relevance_grade(value) -> int:
    """`value` as a relevance grade, an integer >= 0 (bools and integral floats such as 2.0 pass); ValueError naming the
    value otherwise (negative, fractional, not finite, or not a number)."""
    if isinstance(value, numbers.Integral):
        grade = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        grade = int(value)
    else:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    if grade < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return grade


def _tie_groups(scores: Sequence[float], relevance: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(first rank, size, relevant count, summed grades) of each group of equal scores, highest scores first (ranks
    from 0); a candidate is relevant when its grade is above 0."""
    groups: dict[float, list[int]] = {}
    for score, rel in zip(scores, relevance):
        groups.setdefault(score, []).append(rel)
    out, start = [], 0
    for score in sorted(groups, reverse=True):
        grades = groups[score]
        out.append((start, len(grades), sum(g > 0 for g in grades), sum(grades)))
        start += len(grades)
    return out


def _expected_at_k(groups: list[tuple[int, int, int, int]], k: int) -> tuple[float, float, float]:
    """(expected relevant count in the top k, probability of at least one, expected DCG@k with linear gain) over
    random orders of tied candidates: a group straddling rank k contributes its mean per slot it fills."""
    found, miss, dcg = 0.0, 1.0, 0.0
    for start, size, relevant, gain in groups:
        slots = min(k, start + size) - start
        if slots <= 0:
            break
        found += relevant * slots / size
        miss *= math.comb(size - relevant, slots) / math.comb(size, slots)  # none of the group's relevant made it
        dcg += gain / size * sum(1.0 / math.log2(rank + 2) for rank in range(start, start + slots))
    return found, 1.0 - miss, dcg


def _ideal_dcg(relevance: Sequence[int], k: int) -> float:
    """DCG@k of the best order (grades sorted, highest first) with linear gain."""
    return sum(grade / math.log2(rank + 2) for rank, grade in enumerate(sorted(relevance, reverse=True)[:k]))


def _expected_reciprocal_rank(groups: list[tuple[int, int, int, int]]) -> float:
    """E[1 / rank of the first relevant candidate] over random orders of tied candidates."""
    for start, size, relevant, _ in groups:
        if relevant:
            orders = math.comb(size, relevant)
            return sum(math.comb(size - j, relevant - 1) / orders / (start + j) for j in range(1, size - relevant + 2))
    return 0.0


def _expected_average_precision(groups: list[tuple[int, int, int, int]]) -> float:
    """E[average precision] over random orders of tied candidates: the mean over relevant candidates of the precision
    at each one's rank. A relevant candidate of a group (first rank s, size n, m relevant, P relevant ranked before
    it) is at rank s + j with probability 1/n, with (j - 1)(m - 1)/(n - 1) of the group's other relevant ahead of it
    on average; the precision there is linear in that count, so its expectation is exact."""
    total, before, found = 0.0, 0, 0.0
    for start, size, relevant, _ in groups:
        if relevant:
            share = (relevant - 1) / (size - 1) if size > 1 else 0.0
            found += relevant / size * sum((before + 1 + (j - 1) * share) / (start + j) for j in range(1, size + 1))
            before += relevant
        total += relevant
    return found / total if total else 0.0


def ranking_metrics(queries: Sequence[tuple[Sequence[float], Sequence[int]]], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """HitRate@K, Precision@K, Recall@K, NDCG@K, MRR and MAP over queries of (scores, relevance grades).

    Grades are integers >= 0 (0/1 for binary labels; 0/1/2/3 for, say, none < click < save < apply); a grade above 0
    is relevant for hit rate, precision, recall, MRR and MAP, and NDCG uses the grade itself as the gain (linear gain,
    as scikit-learn's `ndcg_score`: its value for the same query). Candidates are ranked by score, highest first.
    Equal scores are averaged over every order of the tied candidates (the expected value under random
    tie-breaking; scikit-learn's NDCG does the same), so input order never matters. Precision@K divides by K even
    when a query has fewer than K candidates. MAP is the mean over queries of the average precision of the whole
    ranking (the precision at each relevant candidate's rank, averaged over the query's relevant candidates).
    Queries without any relevant candidate are skipped and counted in `queries_without_relevant`. A grade that is
    negative or not an integer, or a NaN score, is a ValueError.
    """
    checked = [(list(map(float, s)), [relevance_grade(r) for r in rels]) for s, rels in queries]
    if any(math.isnan(score) for scores, _ in checked for score in scores):
        raise ValueError("a ranking score is NaN: candidates cannot be ordered")  # scikit-learn refused them too
    usable = [(s, r) for s, r in checked if any(r)]
    result: dict = {"queries": len(usable), "queries_without_relevant": len(queries) - len(usable)}
    if not usable:
        return result
    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("hit_rate", "precision", "recall", "ndcg")}
    reciprocal = average_precision = 0.0
    for scores, relevance in usable:
        groups = _tie_groups(scores, relevance)
        reciprocal += _expected_reciprocal_rank(groups)
        average_precision += _expected_average_precision(groups)
        relevant = sum(g > 0 for g in relevance)
        for k in ks:
            found, hit, dcg = _expected_at_k(groups, k)
            sums[f"hit_rate@{k}"] += hit
            sums[f"precision@{k}"] += found / k
            sums[f"recall@{k}"] += found / relevant
            sums[f"ndcg@{k}"] += dcg / _ideal_dcg(relevance, k)  # 1 for a query of one (relevant) candidate
    result.update({key: value / len(usable) for key, value in sums.items()})
    result["mrr"] = reciprocal / len(usable)
    result["map"] = average_precision / len(usable)
    return result


class WordCharTokenizer:
    """Tokenizer for rouge-score: each CJK character is a token, other text splits into lowercase words.

    With `segmenter="jieba"` Chinese is cut into words by jieba instead of characters.
    """

    def __init__(self, segmenter: str = "char"):
        self.segmenter = segmenter

    def tokenize(self, text: str) -> list[str]:
        if self.segmenter == "jieba":
            import jieba

            jieba.setLogLevel(60)
            return [token.lower() for token in jieba.lcut(text) if token.strip() and re.search(r"\w", token)]
        return [token.lower() for token in _CHAR_TOKENS.findall(text)]


def normalize_answer(text: str) -> str:
    """Whitespace-normalised text used for exact match (case and punctuation are kept)."""
    return " ".join(str(text).split())


def generation_metrics(predictions: Sequence[str], references: Sequence[str], segmenter: str = "char") -> dict:
    """Exact match, corpus BLEU-4 (sacrebleu) and mean ROUGE-1/2/L F1 (rouge-score).

    Chinese is split by characters (sacrebleu's `zh` tokenizer for BLEU) or, with `segmenter="jieba"`,
    by jieba words for both; English is split into words.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return {"n": 0}
    tokenizer = WordCharTokenizer(segmenter)
    if segmenter == "jieba":
        hyps = [" ".join(tokenizer.tokenize(p)) for p in predictions]
        refs = [" ".join(tokenizer.tokenize(r)) for r in references]
        bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none")
    else:
        tokenize = "zh" if any(_CJK.search(r) for r in references) else "13a"
        bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    exact = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    result = {"n": len(references), "exact_match": exact / len(references), "bleu": min(1.0, bleu.score / 100.0)}
    result.update({("rouge_l" if key == "rougeL" else key): value / len(references) for key, value in totals.items()})
    return result


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(700) so that a diverged loss stays a finite JSON number (training's validation and
    `sftlab eval` both report it so)."""
    return math.exp(min(loss, 700.0))


def lm_metrics(total_nll: float, total_tokens: int) -> dict:
    """Mean loss per supervised token and its perplexity."""
    if total_tokens == 0:
        return {"tokens": 0}
    loss = total_nll / total_tokens
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": int(total_tokens)}
