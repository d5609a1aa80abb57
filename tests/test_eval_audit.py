"""Audit of the metric conventions against independent computations: scikit-learn, brute force over tie orders,
hand-computed BLEU/ROUGE values, and the baselines' fitting (no peeking at the evaluated labels)."""

import math
import random

import pytest

from sftlab.eval import baselines
from sftlab.eval.metrics import UNPARSEABLE, WordCharTokenizer, generation_metrics, label_metrics, ranking_metrics

approx = pytest.approx


def _random_labels(rng: random.Random, labels: list[str], n: int) -> tuple[list[str], list]:
    """References drawn from a subset of the labels (some labels absent), predictions with some None."""
    present = rng.sample(labels, rng.randint(1, len(labels)))
    y_true = [rng.choice(present) for _ in range(n)]
    y_pred = [None if rng.random() < 0.15 else rng.choice(labels[: rng.randint(1, len(labels))]) for _ in range(n)]
    return y_true, y_pred


def _hand_per_class(y_true: list[str], y_pred: list, name: str) -> tuple[float, float, float]:
    tp = sum(t == name and p == name for t, p in zip(y_true, y_pred))
    predicted, support = y_pred.count(name), y_true.count(name)
    precision = tp / predicted if predicted else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@pytest.mark.parametrize("seed", range(40))
def test_label_metrics_equal_hand_counts_and_sklearn(seed):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = random.Random(seed)
    labels = ["a", "b", "c", "d"][: rng.randint(2, 4)]
    y_true, y_pred = _random_labels(rng, labels, rng.randint(1, 30))
    result = label_metrics(y_true, y_pred, labels)
    per_class = {name: _hand_per_class(y_true, y_pred, name) for name in labels}
    for name, (p, r, f) in per_class.items():
        assert (result["per_class"][name]["precision"], result["per_class"][name]["recall"],
                result["per_class"][name]["f1"]) == approx((p, r, f))
    occurring = [name for name in labels if name in y_true or name in y_pred]
    assert result["macro_f1"] == approx(sum(per_class[name][2] for name in occurring) / len(occurring))
    assert result["weighted_f1"] == approx(sum(per_class[n][2] * y_true.count(n) for n in labels) / len(y_true))
    correct = sum(t == p for t, p in zip(y_true, y_pred))
    assert result["accuracy"] == approx(correct / len(y_true)) == approx(result["micro_recall"])
    answered = sum(p is not None for p in y_pred)
    assert result["micro_precision"] == approx(correct / answered if answered else 0.0)
    # scikit-learn's default label set (labels=None: those occurring) with the unparseable token left out
    predicted = [UNPARSEABLE if p is None else p for p in y_pred]
    for average, names in (("macro", occurring), ("micro", labels), ("weighted", labels)):
        reference = precision_recall_fscore_support(y_true, predicted, labels=names, average=average, zero_division=0)
        assert [result[f"{average}_{m}"] for m in ("precision", "recall", "f1")] == approx(list(reference[:3]))
    matrix = confusion_matrix(y_true, predicted, labels=labels + [UNPARSEABLE])[: len(labels)].tolist()
    assert result["confusion"]["matrix"] == matrix
    assert [row[-1] for row in matrix] == [sum(t == n and p is None for t, p in zip(y_true, y_pred)) for n in labels]


def test_a_label_occurring_nowhere_is_not_averaged_as_zero():
    """`--labels a,b,c` (or the training-time label set) on data where c is neither a reference nor predicted."""
    result = label_metrics(["a", "b", "a"], ["a", "b", "b"], ["a", "b", "c"])
    f1_a, f1_b = 2 / 3, 2 / 3
    assert result["macro_f1"] == approx((f1_a + f1_b) / 2)  # was (f1_a + f1_b + 0) / 3
    assert result["per_class"]["c"]["support"] == 0
    # a label that is predicted but never a reference does count: precision 0, recall 0 (zero_division=0)
    assert label_metrics(["a", "a"], ["a", "c"], ["a", "b", "c"])["macro_f1"] == approx((2 / 3 + 0) / 2)


def test_macro_f1_agrees_with_the_training_loop_for_classifiers():
    """validate.py computes a cls run's macro F1 with scikit-learn's default label set; sftlab eval must agree."""
    from sftlab.train.validate import metrics_from_sums

    rng = random.Random(5)
    names = ["neg", "neu", "pos", "other"]
    for _ in range(20):
        truth = [rng.randrange(3) for _ in range(12)]  # "other" (index 3) never occurs in this validation split
        pred = [rng.randrange(4 if rng.random() < 0.3 else 3) for _ in range(12)]
        loop = metrics_from_sums({"total": 0.0, "count": 1, "labels": truth, "predictions": pred}, "cls")
        ours = label_metrics([names[i] for i in truth], [names[i] for i in pred], names)
        assert ours["macro_f1"] == approx(loop["macro_f1"]) and ours["accuracy"] == approx(loop["accuracy"])


def _pairwise_auc(truth: list[int], score: list[float]) -> float:
    pairs = [(s_pos, s_neg) for s_pos, t_pos in zip(score, truth) if t_pos for s_neg, t_neg in zip(score, truth) if not t_neg]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(20))
def test_binary_auc_and_threshold_equal_brute_force(seed):
    from sklearn.metrics import average_precision_score

    rng = random.Random(100 + seed)
    n = rng.randint(4, 25)
    y_true = ["no", "yes"] * 2 + [rng.choice(["no", "yes"]) for _ in range(n - 4)]
    score = [round(rng.random(), 1) for _ in range(n)]  # rounded: ties between positives and negatives
    result = label_metrics(y_true, ["yes" if s >= 0.5 else "no" for s in score], ["no", "yes"],
                           [[1 - s, s] for s in score])
    truth = [int(t == "yes") for t in y_true]
    assert result["auc"] == approx(_pairwise_auc(truth, score))
    assert result["average_precision"] == approx(average_precision_score(truth, score))
    best = None  # the threshold t (predict "yes" when score >= t) with the best F1; the lowest t on a tie
    for t in sorted(set(score)):
        tp = sum(s >= t and y for s, y in zip(score, truth))
        f1 = 2 * tp / (sum(s >= t for s in score) + sum(truth))
        if best is None or f1 > best[1] + 1e-12:
            best = (t, f1)
    assert (result["threshold"], result["threshold_f1"]) == approx(best)


def test_ranking_ties_do_not_reward_input_order():
    """A model (or baseline) that scores every candidate the same ranks them at random, not relevant-first."""
    first = ranking_metrics([([0.0] * 4, [1, 0, 0, 0])], ks=[1, 2])
    last = ranking_metrics([([0.0] * 4, [0, 0, 0, 1])], ks=[1, 2])
    assert first == last
    assert first["hit_rate@1"] == approx(0.25) and first["hit_rate@2"] == approx(0.5)
    assert first["mrr"] == approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    unseen = [{"candidates": [{"id": f"new{q}-{i}", "relevant": int(i == 0)} for i in range(4)]} for q in range(3)]
    assert baselines.popularity_baseline(unseen, [1])["most_popular"]["hit_rate@1"] == approx(0.25)


def test_ranking_k_beyond_the_candidates_and_several_relevant():
    # ranked: rel, non, rel (no ties); k=10 > 3 candidates: precision divides by k, recall by the relevant count
    result = ranking_metrics([([0.9, 0.5, 0.1], [1, 0, 1])], ks=[1, 10])
    assert result["precision@10"] == approx(2 / 10) and result["recall@10"] == approx(1.0)
    assert result["hit_rate@1"] == 1 and result["mrr"] == 1
    assert result["ndcg@10"] == approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    single = ranking_metrics([([0.3], [1]), ([0.3], [0])], ks=[5])
    assert single["queries"] == 1 and single["queries_without_relevant"] == 1 and single["ndcg@5"] == 1


def test_rouge_tokens_split_chinese_characters_out_of_latin_words_and_digits():
    assert WordCharTokenizer().tokenize("GPT模型在2023年发布, Café don't") == [
        "gpt", "模", "型", "在", "2023", "年", "发", "布", "café", "don", "t"]
    # [gpt, 模, 型] against [gpt, 大, 模, 型]: all 3 found, 3 of 4 recalled -> F1 6/7 (was 0: one token each)
    result = generation_metrics(["GPT模型"], ["GPT大模型"])
    assert result["rouge1"] == approx(6 / 7) and result["rouge_l"] == approx(6 / 7)
    assert result["rouge2"] == approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # bigram 模型 of 2 and of 3


def test_bleu_is_corpus_bleu4_with_brevity_penalty_by_hand():
    # every n-gram of the prediction is in the reference; only the brevity penalty exp(1 - r/c) applies
    english = generation_metrics(["a b c d e f"], ["a b c d e f g h"])
    assert english["bleu"] == approx(math.exp(1 - 8 / 6))
    chinese = generation_metrics(["高新技术企业"], ["高新技术企业认定"])  # characters are the tokens
    assert chinese["bleu"] == approx(math.exp(1 - 8 / 6))
    assert generation_metrics(["短句"], ["短句"])["bleu"] == 0.0  # fewer than 4 tokens in all: no 4-gram, BLEU 0
    # a b c d e against a b c x e: precisions 4/5, 2/4, 1/3 and 0/2, the 4-gram one smoothed to 1/2 / 2
    assert generation_metrics(["a b c d e"], ["a b c x e"])["bleu"] == approx((4 / 5 * 2 / 4 * 1 / 3 * 1 / 4) ** 0.25)


def test_bleu_of_an_exact_match_is_one_not_above():
    # sacrebleu's 100.00000000000004 for a perfect match divided by 100 was a BLEU above 1
    for text in ("我爱北京天安门", "the cat sat on the mat today"):
        assert generation_metrics([text], [text])["bleu"] == 1.0


def test_generation_case_and_empty_conventions():
    result = generation_metrics(["The Cat sat down"], ["the cat sat down"])
    assert result["exact_match"] == 0 and result["bleu"] < 1  # case-sensitive
    assert result["rouge1"] == 1 and result["rouge_l"] == 1  # lower-cased
    assert generation_metrics([" the  cat "], ["the cat"])["exact_match"] == 1  # whitespace-normalised
    empty = generation_metrics(["", ""], ["", "x"])
    assert empty["exact_match"] == 0.5 and empty["rouge1"] == 0 and empty["rouge_l"] == 0


def test_tfidf_baseline_on_the_evaluation_split_does_not_see_the_label_it_predicts():
    """Unique random strings with random labels: in-sample fitting memorises them, out-of-fold is at chance."""
    from sklearn.metrics import accuracy_score

    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12)) for _ in range(60)]
    targets = [rng.choice(["x", "y"]) for _ in texts]
    result = baselines.tfidf_baseline(texts, targets, ["x", "y"])
    in_sample = baselines._tfidf_pipeline().fit(texts, targets)
    assert accuracy_score(targets, in_sample.predict(texts)) > 0.95  # construction: leakage would show
    assert result["accuracy"] < 0.75 and "cross-validation" in result["fit_on"]


def test_training_validation_and_sftlab_eval_give_the_same_perplexity_for_any_loss():
    """Both cap exp(loss) at the same place (they capped at exp(50) and exp(700) before)."""
    import math

    from sftlab.eval.metrics import lm_metrics
    from sftlab.train.validate import metrics_from_sums

    for loss in (0.5, 49.0, 60.0, 800.0):
        trained = metrics_from_sums({"total": loss * 4, "count": 4}, "sft")
        evaluated = lm_metrics(loss * 4, 4)
        assert trained["perplexity"] == evaluated["perplexity"] == math.exp(min(loss, 700.0))
