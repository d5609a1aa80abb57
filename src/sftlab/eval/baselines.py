"""Simple baselines scored with the same metrics as the model, so a user sees whether fine-tuning beat the obvious.

Label tasks: the majority class and a TF-IDF (character 1-3-grams, works for Chinese and English) +
logistic-regression classifier. Ranking: the most popular item (how often a candidate id was relevant).

With a training file the baselines are fitted on it. Without one they are fitted on the evaluation
split itself, honestly: the majority class is that split's most frequent label, TF-IDF + LR uses
out-of-fold predictions (stratified k-fold cross-validation), and item popularity leaves the query being
ranked out of its own counts. Every result says what it was fitted on (`fit_on`).
"""

from __future__ import annotations

from collections import Counter

from sftlab.errors import SftlabError
from sftlab.eval import metrics as M
from sftlab.eval.tasks import check_targets, split_prompt


def example_text(example: dict) -> str:
    """The input text of a label example: `text`, or the prompt messages' contents joined."""
    if "text" in example and "messages" not in example:
        return str(example["text"])
    prompt, _ = split_prompt(example)
    return "\n".join(str(m.get("content", "")) for m in prompt)


def majority_baseline(eval_targets: list[str], labels: list[str], train_targets: list[str] | None = None) -> dict:
    """Always predict the most frequent label (of the training targets, else of the evaluation split)."""
    source = train_targets if train_targets else eval_targets
    counts = Counter(source)
    majority = max(labels, key=lambda label: (counts[label], -labels.index(label)))
    result = M.label_metrics(eval_targets, [majority] * len(eval_targets), labels)
    result.update(predicts=majority, fit_on="train file" if train_targets else "evaluation split")
    return result


def _tfidf_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True),
                         LogisticRegression(max_iter=1000))


def tfidf_baseline(eval_texts: list[str], eval_targets: list[str], labels: list[str],
                   train_texts: list[str] | None = None, train_targets: list[str] | None = None) -> dict:
    """TF-IDF + logistic regression: fitted on the training file, else out-of-fold on the evaluation split."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if train_texts:
        if len(set(train_targets)) < 2:
            return {"skipped": "the training file has fewer than 2 labels"}
        model = _tfidf_pipeline().fit(train_texts, train_targets)
        classes = list(model.classes_)
        probs = model.predict_proba(eval_texts)
        fit_on = "train file"
    else:
        smallest = min(Counter(eval_targets).values())
        if len(set(eval_targets)) < 2 or smallest < 2:
            return {"skipped": "cross-validation needs at least 2 examples of every label in the evaluation split"}
        folds = StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=0)
        probs = cross_val_predict(_tfidf_pipeline(), eval_texts, eval_targets, cv=folds, method="predict_proba")
        classes = sorted(set(eval_targets))
        fit_on = f"evaluation split ({folds.n_splits}-fold cross-validation)"
    full = np.zeros((len(eval_texts), len(labels)))
    for column, name in enumerate(classes):
        if name in labels:
            full[:, labels.index(name)] = probs[:, column]
    predicted = [labels[int(i)] for i in full.argmax(axis=1)]
    result = M.label_metrics(eval_targets, predicted, labels, full.tolist())
    result["fit_on"] = fit_on
    return result


def check_train_labels(train_examples: list[dict] | None, labels: list[str]) -> None:
    """Fail, naming the line, on a training-file label outside the evaluated label set (the baselines would
    otherwise be fitted on labels they can never predict, and the majority class would not be the file's)."""
    if train_examples:
        targets = [split_prompt(e)[1] for e in train_examples]
        try:
            check_targets(train_examples, targets, labels)
        except SftlabError as exc:
            raise SftlabError(f"--train {exc}; pass every label with --labels") from None


def label_baselines(examples: list[dict], labels: list[str], train_examples: list[dict] | None = None) -> dict:
    """Majority class and TF-IDF + LR on label examples (`{"messages"}` or `{"text","label"}`)."""
    check_train_labels(train_examples, labels)
    eval_texts = [example_text(e) for e in examples]
    eval_targets = [split_prompt(e)[1] for e in examples]
    train_texts = [example_text(e) for e in train_examples] if train_examples else None
    train_targets = [split_prompt(e)[1] for e in train_examples] if train_examples else None
    return {"majority": majority_baseline(eval_targets, labels, train_targets),
            "tfidf_logreg": tfidf_baseline(eval_texts, eval_targets, labels, train_texts, train_targets)}


def popularity_baseline(queries: list[dict], ks: list[int], train_queries: list[dict] | None = None) -> dict:
    """Rank candidates by how often their `id` was relevant (in training queries, else in the other queries)."""
    def relevant_ids(rows: list[dict]) -> Counter:
        return Counter(str(c.get("id")) for q in rows for c in q["candidates"] if int(c["relevant"]) and "id" in c)

    totals = relevant_ids(train_queries or queries)
    scored = []
    for query in queries:
        own = Counter() if train_queries else relevant_ids([query])
        scores = [float(totals[str(c.get("id"))] - own[str(c.get("id"))]) if "id" in c else 0.0 for c in query["candidates"]]
        scored.append((scores, [int(c["relevant"]) for c in query["candidates"]]))
    result = M.ranking_metrics(scored, ks)
    result["fit_on"] = "train file" if train_queries else "evaluation split (each query left out of its own counts)"
    return {"most_popular": result}
