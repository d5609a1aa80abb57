"""Metrics against hand-computed values on tiny fixtures (labels, ranking, generation, lm) and the baselines."""

import math

import pytest

from sftlab.eval import baselines
from sftlab.eval.metrics import UNPARSEABLE, generation_metrics, label_metrics, lm_metrics, ranking_metrics, scalar_metrics
from sftlab.eval.tasks import parse_label

approx = pytest.approx


def test_label_metrics_with_unparseable_and_never_predicted_class():
    # true a a b b c c; predicted a (unparseable) b a b b -> class c is never predicted
    result = label_metrics(["a", "a", "b", "b", "c", "c"], ["a", None, "b", "a", "b", "b"], ["a", "b", "c"])
    assert result["accuracy"] == approx(2 / 6)
    assert result["unparseable"] == 1
    assert result["per_class"]["a"] == approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert result["per_class"]["b"] == approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    assert result["per_class"]["c"] == approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2})
    assert result["macro_f1"] == approx(0.3)
    assert result["macro_precision"] == approx(5 / 18)
    assert result["weighted_f1"] == approx(0.3)
    # micro: 2 true positives, 5 predictions of real classes (the unparseable one is no class), 6 examples
    assert result["micro_precision"] == approx(2 / 5)
    assert result["micro_recall"] == approx(2 / 6)
    assert result["micro_f1"] == approx(4 / 11)
    assert result["confusion"]["predicted"] == ["a", "b", "c", UNPARSEABLE]
    assert result["confusion"]["matrix"] == [[1, 0, 0, 1], [1, 1, 0, 0], [0, 2, 0, 0]]
    assert "auc" not in result


def test_binary_auc_pr_curve_and_threshold():
    labels = ["n", "p"]
    p_scores = [0.1, 0.4, 0.5, 0.8]
    result = label_metrics(["n", "p", "n", "p"], ["n", "n", "p", "p"], labels, [[1 - s, s] for s in p_scores])
    assert result["positive"] == "p"
    assert result["auc"] == approx(0.75)  # 3 of the 4 (positive, negative) pairs are ordered correctly
    assert result["average_precision"] == approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result["threshold"] == approx(0.4)
    assert (result["threshold_precision"], result["threshold_recall"], result["threshold_f1"]) == approx((2 / 3, 1.0, 0.8))
    assert len(result["pr_curve"]["precision"]) == len(result["pr_curve"]["recall"])


def test_a_long_pr_curve_is_thinned_keeping_its_ends_and_the_chosen_threshold(monkeypatch):
    import numpy as np
    from sklearn.metrics import precision_recall_curve

    from sftlab.eval import metrics

    rng = np.random.default_rng(0)
    truth = ["p" if t else "n" for t in rng.random(5000) < 0.3]
    scores = rng.random(5000)
    result = label_metrics(truth, truth, ["n", "p"], [[1 - s, s] for s in scores])
    curve = result["pr_curve"]
    assert len(curve["thresholds"]) <= metrics.PR_CURVE_POINTS and len(curve["precision"]) == len(curve["thresholds"]) + 1
    precision, recall, thresholds = precision_recall_curve([t == "p" for t in truth], scores)
    assert curve["thresholds"][0] == thresholds[0] and curve["thresholds"][-1] == thresholds[-1]
    assert (curve["precision"][-1], curve["recall"][-1]) == (precision[-1], recall[-1])
    assert result["threshold"] in curve["thresholds"]
    at = curve["thresholds"].index(result["threshold"])
    assert (curve["precision"][at], curve["recall"][at]) == approx((result["threshold_precision"],
                                                                   result["threshold_recall"]))
    monkeypatch.setattr(metrics, "PR_CURVE_POINTS", 10 ** 6)  # a short curve is kept whole
    whole = label_metrics(truth, truth, ["n", "p"], [[1 - s, s] for s in scores])["pr_curve"]
    assert whole["thresholds"] == thresholds.tolist() and whole["precision"] == precision.tolist()


def test_binary_positive_label_can_be_chosen():
    result = label_metrics(["n", "p", "n", "p"], ["n", "n", "p", "p"], ["n", "p"],
                           [[1 - s, s] for s in (0.1, 0.4, 0.5, 0.8)], positive="n")
    # scores of "n" are 0.9, 0.6, 0.5, 0.2 for truths n p n p: same AUC by symmetry, threshold on "n"'s scale
    assert result["positive"] == "n" and result["auc"] == approx(0.75)
    assert result["threshold"] == approx(0.5) and result["threshold_f1"] == approx(0.8)


def test_ranking_metrics_hand_computed():
    queries = [([0.9, 0.8, 0.1], [0, 1, 1]), ([0.2, 0.7], [1, 0]), ([0.5, 0.4], [0, 0])]
    result = ranking_metrics(queries, ks=[1, 2, 3])
    assert result["queries"] == 2 and result["queries_without_relevant"] == 1
    assert result["hit_rate@1"] == 0 and result["precision@1"] == 0 and result["recall@1"] == 0
    assert result["hit_rate@2"] == 1 and result["precision@2"] == approx(0.5) and result["recall@2"] == approx(0.75)
    assert result["mrr"] == approx(0.5)
    inv = 1 / math.log2(3)
    assert result["ndcg@2"] == approx(((inv / (1 + inv)) + inv) / 2)
    assert result["ndcg@3"] == approx((((inv + 0.5) / (1 + inv)) + inv) / 2)
    assert result["recall@3"] == approx(1.0) and result["precision@3"] == approx((2 / 3 + 1 / 3) / 2)


def test_generation_metrics_words_and_chinese_characters():
    preds = ["the cat sat", "hello world", "高新技术企业", ""]
    refs = ["the cat sat", "hello there world", "高新技术", "x"]
    result = generation_metrics(preds, refs)
    assert result["exact_match"] == approx(0.25)
    assert result["rouge1"] == approx((1 + 0.8 + 0.8 + 0) / 4)
    assert result["rouge2"] == approx((1 + 0 + 0.75 + 0) / 4)
    assert result["rouge_l"] == approx((1 + 0.8 + 0.8 + 0) / 4)
    assert 0 < result["bleu"] < 1
    assert generation_metrics(refs[:3], refs[:3])["bleu"] == approx(1.0)


def test_generation_metrics_jieba_segmenter_counts_words():
    sentence = "企业所得税优惠政策，中小企业融资支持，绿色低碳转型"
    result = generation_metrics([sentence], [sentence], segmenter="jieba")
    assert result["rouge1"] == approx(1.0) and result["bleu"] == approx(1.0)
    partial = generation_metrics(["企业所得税"], ["企业所得税优惠政策"], segmenter="jieba")["rouge1"]
    assert 0 < partial < 1


def test_lm_metrics_and_scalars():
    result = lm_metrics(6.0, 3)
    assert result == {"loss": 2.0, "perplexity": approx(math.exp(2.0)), "tokens": 3}
    assert scalar_metrics({"a": 1, "b": {"c": 2}, "d": "x", "e": True}) == {"a": 1.0}


@pytest.mark.parametrize("text, expected", [("Positive.", "positive"), (" negative ", "negative"),
                                            ("I think negative", "negative"), ("positive and negative", None),
                                            ("maybe", None), ("", None), ("non-negativeish", None)])
def test_parse_label(text, expected):
    assert parse_label(text, ["positive", "negative"]) == expected


def test_majority_and_tfidf_baselines():
    examples = [{"text": t, "label": lab} for t, lab in [
        ("refund my card payment", "refund"), ("refund please", "refund"), ("I want a refund", "refund"),
        ("card arrived late", "card"), ("where is my card", "card"), ("new card delivery", "card"),
        ("refund the charge", "refund")]]
    train = [{"text": "refund money back", "label": "refund"}, {"text": "card not arrived", "label": "card"}] * 3
    result = baselines.label_baselines(examples, ["card", "refund"])
    assert result["majority"]["predicts"] == "refund" and result["majority"]["accuracy"] == approx(4 / 7)
    assert "cross-validation" in result["tfidf_logreg"]["fit_on"]
    fitted = baselines.label_baselines(examples, ["card", "refund"], train)
    assert fitted["majority"]["fit_on"] == "train file" and fitted["majority"]["predicts"] == "card"  # tie -> first label
    assert fitted["tfidf_logreg"]["accuracy"] > 0.5 and "auc" in fitted["tfidf_logreg"]


def test_popularity_baseline_leaves_the_query_out():
    queries = [{"candidates": [{"id": "x", "relevant": 1}, {"id": "y", "relevant": 0}]},
               {"candidates": [{"id": "y", "relevant": 1}, {"id": "x", "relevant": 0}]},
               {"candidates": [{"id": "y", "relevant": 1}, {"id": "x", "relevant": 0}]}]
    result = baselines.popularity_baseline(queries, [1])["most_popular"]
    # query 1: x counted 0 times elsewhere, y twice -> y first (miss); queries 2, 3: y once elsewhere, x once -> a tie,
    # which counts as a hit half the time whatever the input order
    assert result["hit_rate@1"] == approx((0 + 0.5 + 0.5) / 3)
    trained = baselines.popularity_baseline(queries[:1], [1], train_queries=queries[1:])["most_popular"]
    assert trained["hit_rate@1"] == 0 and trained["fit_on"] == "train file"
