"""Class balance for labelled data (cls, or sft whose answer is a label): distribution, random over- and
undersampling (imbalanced-learn), class weights for the loss (scikit-learn's "balanced" weights), stratified
train/validation split, and SMOTE on sentence embeddings for a vector-input head.

Labels are `records.label_of`: the cls label, or the last assistant turn's text; a last turn with only tool
calls is labelled by their function names (`tool:get_weather`), so such conversations form classes of their own.

The training pipeline calls `resample_indices(labels, method, seed)` on its token rows for `data.balance`
oversample/undersample (after tokenisation has dropped what does not fit) and `class_weights(labels,
label_names)` for `data.balance=class_weight`; `balance_examples(examples, method, seed)` resamples examples
(`sftlab data balance`).
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np

from sftlab.datawork.records import label_of, src
from sftlab.errors import SftlabError

METHODS = ("none", "oversample", "undersample", "class_weight")


def distribution(labels: list[str]) -> dict[str, int]:
    """Count per label, most frequent first (ties by name)."""
    return dict(sorted(Counter(labels).items(), key=lambda item: (-item[1], item[0])))


def class_weights(labels: list[str], label_names: list[str]) -> list[float]:
    """Loss weight per class in `label_names` order: n_samples / (n_classes * count), as sklearn's "balanced".

    Classes of `label_names` with no example get weight 1.0 (they never appear as a target); a label not in
    `label_names` is an error.
    """
    from sklearn.utils.class_weight import compute_class_weight

    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise SftlabError(f"labels {unknown} are not in the label set {label_names}")
    if not labels:
        raise SftlabError("class weights need at least one labelled example")
    present = np.array(sorted(set(labels)))
    weights = compute_class_weight("balanced", classes=present, y=np.array(labels))
    by_label = dict(zip(present.tolist(), weights.tolist()))
    return [round(float(by_label.get(name, 1.0)), 6) for name in label_names]


def balance_examples(examples: list[dict], method: str, seed: int = 0) -> tuple[list[dict], dict]:
    """Resample `examples` by their labels; returns (examples, report with distributions before/after).

    oversample: copies of random minority examples until every class has the majority's count.
    undersample: a random subset of every class down to the minority's count.
    class_weight / none: examples unchanged; class_weight adds the weights to the report.
    """
    if method not in METHODS:
        raise SftlabError(f"unknown balance method {method!r}; expected one of {', '.join(METHODS)}")
    labels = [label_of(example) for example in examples]
    report = {"method": method, "seed": seed, "before": distribution(labels)}
    if method in ("oversample", "undersample"):
        picked = resample_indices(labels, method, seed)
        examples = [copy.deepcopy(examples[i]) for i in picked]
        labels = [labels[i] for i in picked]
    if method == "class_weight":
        names = sorted(set(labels))
        report["class_weights"] = dict(zip(names, class_weights(labels, names)))
    report["after"] = distribution(labels)
    return examples, report


def resample_indices(labels: list[str], method: str, seed: int = 0) -> list[int]:
    """Indices into `labels` after random over- or undersampling (imbalanced-learn, seeded): oversample keeps every
    index and adds copies of random minority ones until each label has the majority's count; undersample keeps a
    random subset of each label down to the minority's count. One label (or none): every index, unchanged.

    The training pipeline resamples token rows with it (`sftlab.data.pipeline`), after tokenisation has dropped
    the samples that do not fit, so the counts it balances are the counts that train."""
    if method not in ("oversample", "undersample"):
        raise SftlabError(f"resampling method must be oversample or undersample, got {method!r}")
    if len(set(labels)) < 2:
        return list(range(len(labels)))
    from imblearn.under_sampling import RandomUnderSampler
    from imblearn.over_sampling import RandomOverSampler

    sampler_cls = RandomOverSampler if method == "oversample" else RandomUnderSampler
    index = np.arange(len(labels)).reshape(-1, 1)
    picked, _ = sampler_cls(random_state=seed).fit_resample(index, np.array(labels))
    return picked.ravel().tolist()


def stratified_split(examples: list[dict], val_ratio: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, validation) with the label ratios kept in both (scikit-learn's train_test_split)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_ratio < 1.0:
        raise SftlabError(f"validation ratio must be between 0 and 1, got {val_ratio}")
    labels = [label_of(example) for example in examples]
    rare = [label for label, count in Counter(labels).items() if count < 2]
    if rare:
        raise SftlabError(f"a stratified split needs at least 2 examples per label; {rare[:5]} have one")
    try:
        train_idx, val_idx = train_test_split(np.arange(len(examples)), test_size=val_ratio, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise SftlabError(f"stratified split impossible: {exc}") from None
    return [examples[i] for i in sorted(train_idx)], [examples[i] for i in sorted(val_idx)]


def embed_texts(texts: list[str], model_dir: str, batch_size: int = 16, max_length: int = 256) -> np.ndarray:
    """Mean-pooled last hidden states of a local encoder/decoder model directory, float32 [n, hidden]."""
    import torch
    from transformers import AutoModel

    from sftlab.datawork.generate import load_local_model

    tokenizer, model = load_local_model(model_dir, "--encoder", AutoModel)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(chunks).float().numpy()


def smote_vectors(vectors: np.ndarray, labels: list[str], seed: int = 0, k_neighbors: int = 5) -> dict:
    """SMOTE (imbalanced-learn) on embedding vectors; returns arrays for an .npz file.

    Keys: `X` (original rows first, then synthetic ones), `y` (int class index), `label_names`,
    `synthetic` (bool per row). k_neighbors is lowered to the smallest class size - 1.
    """
    from imblearn.over_sampling import SMOTE

    counts = Counter(labels)
    if len(counts) < 2:
        raise SftlabError("SMOTE needs at least two classes")
    smallest = min(counts.values())
    if smallest < 2:
        raise SftlabError(f"SMOTE needs at least 2 examples per class; {[k for k, v in counts.items() if v < 2][:5]} have one")
    names = sorted(counts)
    y = np.array([names.index(label) for label in labels])
    sampler = SMOTE(random_state=seed, k_neighbors=min(k_neighbors, smallest - 1))
    X_res, y_res = sampler.fit_resample(vectors, y)
    synthetic = np.zeros(len(y_res), dtype=bool)
    synthetic[len(y):] = True
    return {"X": X_res.astype(np.float32), "y": y_res.astype(np.int64), "label_names": np.array(names), "synthetic": synthetic}


def save_npz(path: str | Path, arrays: dict) -> None:
    """np.savez into a temporary sibling, then rename it into place (the output appears whole or not at all)."""
    from sftlab.io import atomic_file

    with atomic_file(path, "wb") as handle:
        np.savez(handle, **arrays)


def check_labelled(examples: list[dict]) -> None:
    """Fail with the first example that has no usable label."""
    for example in examples:
        if not label_of(example):
            raise SftlabError(f"{src(example)}: empty label (for sft, the label is the last assistant turn's text, "
                              "or the names of its tool calls)")
