"""The whole data chain for a run: sources -> canonical examples -> token rows -> balance -> packed rows.

    prepared = prepare_data(cfg, tokenizer, base_dir=Path("configs"))
    prepared.train, prepared.validation      # sftlab.data.rows.TokenRows (validation: None when absent)
    prepared.stats, prepared.label_names, prepared.val_examples

Used by the training loop and `sftlab data preview`. Relative paths in `data.*` (files, registry,
cache_dir) are resolved against `base_dir` (the config file's directory) when it is given.
`data.balance=oversample|undersample` resamples the training split's token rows only (validation keeps the
true distribution) with `sftlab.datawork.balance.resample_indices`, after tokenisation has dropped the samples
that do not fit (`data.truncation`), so the balanced counts are the trained ones; each row is labelled by its cls
label or its sft sample's last answer. data_stats.json's `balance` has the labels of the loaded `examples`, of
the rows tokenisation kept (`before`) and of the rows that train (`after`); `train` counts the resampled rows
(rows, tokens, supervised tokens, cls `label_counts`) and the samples tokenisation dropped or cut. A label of
`data.labels` with no training row is refused (`check_resample_labels`). `class_weight` is applied by the loss
(cls only; its weights are recorded in the stats). `sftlab.data.balance` refuses a method the stage cannot use. With `data.packing`
(pt/sft) both splits are packed, since the training loop collates them the same way.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from sftlab.config.schema import RunConfig
from sftlab.data.balance import check_resample_labels, class_weight_report
from sftlab.data.collate import pack_rows
from sftlab.data.sources import load_examples
from sftlab.data.tokenize import label_set, retotal, tokenize
from sftlab.datawork.balance import distribution, resample_indices
from sftlab.datawork.records import label_of


@dataclasses.dataclass
class PreparedData:
    """Token datasets ready for batching, plus what it took to make them.

    `train_examples` are the loaded training examples; with data.balance oversample/undersample, the examples
    of the resampled rows instead (one per row, copies included; a mask=each_assistant sample is its
    conversation up to the supervised turn). `train_srcs` / `val_srcs`: the `file:line` of each token row
    before packing (empty for pt concat blocks)."""

    train: Any
    validation: Any | None
    stats: dict
    label_names: list[str] | None = None
    val_examples: list[dict] = dataclasses.field(default_factory=list)
    train_examples: list[dict] = dataclasses.field(default_factory=list)
    train_srcs: list[str] = dataclasses.field(default_factory=list)
    val_srcs: list[str] = dataclasses.field(default_factory=list)


def prepare_data(cfg: RunConfig, tokenizer, base_dir: str | Path | None = None) -> PreparedData:
    """Load, split, tokenize (cached), balance and, with data.packing, pack the run's data."""
    stage, data_cfg = cfg.train.stage, cfg.data
    from sftlab.data.balance import check_balance_stage
    from sftlab.vision.load import is_vision_model

    check_balance_stage(data_cfg.balance, stage)

    if stage == "sft" and is_vision_model(cfg.model):  # image+text data, encoded by the model's processor
        from sftlab.vision.pipeline import prepare_vision_data

        return prepare_vision_data(cfg, base_dir)
    if data_cfg.cache_dir and base_dir is not None and not Path(data_cfg.cache_dir).expanduser().is_absolute():
        data_cfg = data_cfg.model_copy(update={"cache_dir": str(Path(base_dir) / data_cfg.cache_dir)})
    train_examples, val_examples = load_examples(data_cfg, stage, base_dir)
    label_names = label_set(train_examples, data_cfg) if stage == "cls" else None
    stats: dict[str, Any] = {"stage": stage, "examples": {"train": len(train_examples), "validation": len(val_examples)}}
    resample = data_cfg.balance in ("oversample", "undersample")
    declared = label_names if stage == "cls" else data_cfg.labels
    if resample and declared:  # before tokenising: a class the data lacks fails at once
        check_resample_labels(data_cfg.balance, [label_of(ex) for ex in train_examples], declared,
                              [label_of(ex) for ex in val_examples])
    done = tokenize(train_examples, tokenizer, data_cfg, cfg.train, label_names)
    train, train_stats = done.rows, done.stats
    train_srcs = [_src(train_examples[index]) for index, _ in done.origins]
    row_labels = _row_labels(done, train_examples, label_names) if stage == "cls" or resample else []
    if resample:
        if declared:  # after: a class whose every sample was too long
            check_resample_labels(data_cfg.balance, row_labels, declared, [label_of(ex) for ex in val_examples],
                                  [label_of(ex) for ex in train_examples])
        picked, stats["balance"] = _resample(row_labels, train_examples, data_cfg)
        train = train.select(picked)
        train_stats = retotal(train_stats, train, label_names)
        train_examples = [_sample(train_examples, done.origins[i]) for i in picked]
        train_srcs, row_labels = [train_srcs[i] for i in picked], [row_labels[i] for i in picked]
    stats["train"] = train_stats.to_dict()
    if data_cfg.balance == "class_weight":  # after tokenisation, which names a row whose label is outside the set
        stats["balance"] = class_weight_report(row_labels, label_names, data_cfg.seed)
    validation, val_srcs = None, []
    if val_examples:
        val_done = tokenize(val_examples, tokenizer, data_cfg, cfg.train, label_names)
        validation, stats["validation"] = val_done.rows, val_done.stats.to_dict()
        val_srcs = [_src(val_examples[index]) for index, _ in val_done.origins]
    if stage == "cls":
        stats["label_distribution"] = {"train": _distribution(row_labels, label_names),
                                       "validation": _distribution([ex["label"] for ex in val_examples], label_names)
                                       if val_examples else {}}
    if data_cfg.packing and stage != "cls":
        train = pack_rows(train, cfg.train.max_length, data_cfg.seed)
        validation = pack_rows(validation, cfg.train.max_length, data_cfg.seed) if validation is not None else None
        stats["packed_rows"] = {"train": len(train), "validation": len(validation) if validation is not None else 0}
    if label_names is not None:
        stats["label_names"] = label_names
    return PreparedData(train=train, validation=validation, stats=stats, label_names=label_names,
                        val_examples=val_examples, train_examples=train_examples, train_srcs=train_srcs,
                        val_srcs=val_srcs)


def _resample(row_labels: list[str], examples: list[dict], data_cfg) -> tuple[list[int], dict]:
    """The indices of the rows that train after data.balance, and the `balance` entry of data_stats.json."""
    picked = resample_indices(row_labels, data_cfg.balance, data_cfg.seed)
    return picked, {"method": data_cfg.balance, "seed": data_cfg.seed, "unit": "token rows",
                    "examples": distribution([label_of(ex) for ex in examples]), "before": distribution(row_labels),
                    "after": distribution([row_labels[i] for i in picked])}


def _src(example: dict) -> str:
    return str(example.get("_src", ""))


def _row_labels(done, examples: list[dict], label_names: list[str] | None) -> list[str]:
    """The label of each token row: its cls label, or the last answer of its sft sample (`label_of`)."""
    if label_names is not None:
        return [label_names[index] for index in done.rows["label"]]
    return [label_of(_sample(examples, origin)) for origin in done.origins]


def _sample(examples: list[dict], origin: tuple[int, int]) -> dict:
    """The example a token row was made from; an sft sample cut to its messages (mask=each_assistant)."""
    example = examples[origin[0]]
    if origin[1] < 0 or "messages" not in example or origin[1] == len(example["messages"]):
        return example
    return {**example, "messages": example["messages"][: origin[1]]}


def _distribution(labels: list[str], label_names: list[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(name, 0) for name in label_names} | {k: v for k, v in counts.items() if k not in label_names}
