"""The data chain of an image+text sft run: records -> multimodal examples -> checked token rows.

    prepared = prepare_vision_data(cfg, base_dir=Path("configs"))   # a sftlab.data.pipeline.PreparedData
    prepared.train[0]   # {"input_ids", "labels", "images", "image_tokens"}

`sftlab.data.pipeline.prepare_data` hands sft runs on a vision-language model (see
`sftlab.vision.load.is_vision_model`) to this module. The processor's image settings are compared with the
model's config.json (`sftlab.vision.load.check_processor_matches_model`), and every record is checked and
encoded before training starts (placeholders vs images, readable images, image token counts; see
`sftlab.vision.encode`); samples dropped for length or for having nothing to supervise are counted in the stats,
never cut inside an image.
`data.packing` and `data.balance` resampling are refused for image rows; rows are not cached on disk.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sftlab.errors import SftlabError

DROPS = ("dropped_too_long", "dropped_answer_too_long", "dropped_image_span", "dropped_no_supervised")


def tokenize_vision_examples(examples: list[dict], processor, cfg) -> tuple[object, dict]:
    """Token rows (a datasets.Dataset) and their stats for multimodal examples."""
    from datasets import Dataset

    from sftlab.vision.encode import encode_vision_example

    columns: dict[str, list] = {"input_ids": [], "labels": [], "images": [], "image_tokens": []}
    statuses: Counter = Counter()
    for example in examples:
        row = encode_vision_example(example, processor, cfg.train.max_length, cfg.data.mask, cfg.data.truncation)
        statuses[row["status"]] += 1
        if row["status"].startswith("dropped"):
            continue
        for key in columns:
            columns[key].append(row[key])
    stats = {"examples": len(examples), "rows": len(columns["input_ids"]),
             "tokens": sum(len(ids) for ids in columns["input_ids"]),
             "supervised_tokens": sum(sum(1 for t in labels if t != -100) for labels in columns["labels"]),
             "images": sum(len(images) for images in columns["images"]),
             "image_tokens": sum(columns["image_tokens"]), "cut_left": statuses["cut_left"],
             **{name: statuses[name] for name in DROPS}}
    if not columns["input_ids"]:
        drops = ", ".join(f"{statuses[name]} {name}" for name in DROPS if statuses[name])
        raise SftlabError(f"data: no image+text example is left after tokenisation ({drops}); "
                          "check train.max_length / data.truncation")
    return Dataset.from_dict(columns), stats


def prepare_vision_data(cfg, base_dir: str | Path | None = None):
    """Load, check, split and encode the image+text data of an sft run on a vision-language model."""
    from sftlab.data.pipeline import PreparedData
    from sftlab.vision.data import load_vision_examples
    from sftlab.vision.load import check_processor_matches_model, load_processor

    if cfg.train.stage != "sft":
        raise SftlabError(f"train.stage {cfg.train.stage}: image+text data trains with stage sft")
    if cfg.data.packing:
        raise SftlabError("data.packing is not supported for image+text data; set data.packing: false")
    if cfg.data.balance in ("oversample", "undersample"):
        raise SftlabError(f"data.balance={cfg.data.balance} needs labels; image+text sft data has none")
    processor = load_processor(cfg.model)
    check_processor_matches_model(processor, cfg.model.path)
    train_examples, val_examples = load_vision_examples(cfg.data, base_dir)
    stats: dict = {"stage": "sft", "modality": "image+text",
                   "examples": {"train": len(train_examples), "validation": len(val_examples)}}
    train, stats["train"] = tokenize_vision_examples(train_examples, processor, cfg)
    validation = None
    if val_examples:
        validation, stats["validation"] = tokenize_vision_examples(val_examples, processor, cfg)
    return PreparedData(train=train, validation=validation, stats=stats, val_examples=val_examples,
                        train_examples=train_examples)
