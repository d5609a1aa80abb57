"""The whole data chain for a run: sources -> canonical examples -> balance -> token rows -> packed rows.

    prepared = prepare_data(cfg, tokenizer, base_dir=Path("configs"))
    prepared.train, prepared.validation      # sftlab.data.rows.TokenRows (validation: None when absent)
    prepared.stats, prepared.label_names, prepared.val_examples

Used by the training loop and `sftlab data preview`. Relative paths in `data.*` (files, registry,
cache_dir) are resolved against `base_dir` (the config file's directory) when it is given.
`data.balance=oversample|undersample` resamples the training examples only (validation keeps the true
distribution) with `sftlab.datawork.balance`; `class_weight` is applied by the loss (cls only; its weights are
recorded in the stats). `sftlab.data.balance` refuses a method the stage cannot use. With `data.packing`
(pt/sft) both splits are packed, since the training loop collates them the same way.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from sftlab.config.schema import RunConfig
from sftlab.data.collate import pack_rows
from sftlab.data.sources import load_examples
from sftlab.data.tokenize import label_set, tokenize_examples


@dataclasses.dataclass
class PreparedData:
    """Token datasets ready for batching, plus what it took to make them."""

    train: Any
    validation: Any | None
    stats: dict
    label_names: list[str] | None = None
    val_examples: list[dict] = dataclasses.field(default_factory=list)
    train_examples: list[dict] = dataclasses.field(default_factory=list)


def prepare_data(cfg: RunConfig, tokenizer, base_dir: str | Path | None = None) -> PreparedData:
    """Load, split, balance, tokenize (cached) and, with data.packing, pack the run's data."""
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
    if data_cfg.balance == "undersample" and label_names is not None:
        from sftlab.data.balance import check_undersample_labels

        check_undersample_labels([ex["label"] for ex in train_examples], label_names,
                                 [ex["label"] for ex in val_examples])
    if data_cfg.balance in ("oversample", "undersample"):
        from sftlab.datawork.balance import balance_examples

        train_examples, stats["balance"] = balance_examples(train_examples, data_cfg.balance, data_cfg.seed)
    if stage == "cls":
        stats["label_distribution"] = {
            "train": _distribution(train_examples, label_names),
            "validation": _distribution(val_examples, label_names) if val_examples else {},
        }
    train, train_stats = tokenize_examples(train_examples, tokenizer, data_cfg, cfg.train, label_names)
    stats["train"] = train_stats.to_dict()
    if data_cfg.balance == "class_weight":  # after tokenisation, which names a row whose label is outside the set
        from sftlab.data.balance import class_weight_report

        stats["balance"] = class_weight_report([ex["label"] for ex in train_examples], label_names, data_cfg.seed)
    validation = None
    if val_examples:
        validation, val_stats = tokenize_examples(val_examples, tokenizer, data_cfg, cfg.train, label_names)
        stats["validation"] = val_stats.to_dict()
    if data_cfg.packing and stage != "cls":
        train = pack_rows(train, cfg.train.max_length, data_cfg.seed)
        validation = pack_rows(validation, cfg.train.max_length, data_cfg.seed) if validation is not None else None
        stats["packed_rows"] = {"train": len(train), "validation": len(validation) if validation is not None else 0}
    if label_names is not None:
        stats["label_names"] = label_names
    return PreparedData(train=train, validation=validation, stats=stats, label_names=label_names,
                        val_examples=val_examples, train_examples=train_examples)


def _distribution(examples: list[dict], label_names: list[str]) -> dict[str, int]:
    counts = Counter(ex["label"] for ex in examples)
    return {name: counts.get(name, 0) for name in label_names} | {k: v for k, v in counts.items() if k not in label_names}
