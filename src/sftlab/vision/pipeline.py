"""The data chain of an image+text sft run: records -> multimodal examples -> checked token rows.

    prepared = prepare_vision_data(cfg, base_dir=Path("configs"))   # a sftlab.data.pipeline.PreparedData
    prepared.train[0]   # {"input_ids", "labels", "images", "image_tokens"}

`sftlab.data.pipeline.prepare_data` hands sft runs on a vision-language model (see
`sftlab.vision.load.is_vision_model`) to this module. The processor's image settings are compared with the
model's config.json (`sftlab.vision.load.check_processor_matches_model`), and every record is checked and
encoded before training starts (placeholders vs images, readable images, image token counts; see
`sftlab.vision.encode`); samples dropped for length or for having nothing to supervise are counted in the stats,
never cut inside an image.
`data.packing` and `data.balance` resampling are refused for image rows.

Rows are cached like text rows, and pruned with them (`sftlab.data.token_cache`: `data.cache_dir`, relative to the config's
directory, else `$SFTLAB_CACHE/tokenized`, else `~/.cache/sftlab/tokenized`), one directory per key: the examples,
each image file's size and modification time, the tokenizer, chat template and image processor settings, the
length settings and the source of the vision modules. Every image is still opened once by the record checks.
"""

from __future__ import annotations

import hashlib
import json
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


def _cache_key(examples: list[dict], processor, cfg) -> str:
    digest = hashlib.sha256()
    for example in examples:
        public = {key: value for key, value in example.items() if not key.startswith("_")}
        digest.update(json.dumps(public, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
        for reference in example.get("images") or []:
            if not reference.startswith("data:"):
                stat = Path(reference).stat()
                digest.update(f"{reference}:{stat.st_size}:{stat.st_mtime_ns}".encode("utf-8"))
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(here.glob("*.py")))).hexdigest()
    digest.update(json.dumps([type(processor).__name__, vocab, processor.chat_template,
                              processor.image_processor.to_json_string(), cfg.train.max_length, cfg.data.mask,
                              cfg.data.truncation, code], sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()[:24]


def cached_vision_rows(examples: list[dict], processor, cfg, data_cfg) -> tuple[object, dict]:
    """`tokenize_vision_examples` through the on-disk cache (see module docstring); stats say whether it hit."""
    from datasets import load_from_disk

    from sftlab.data.token_cache import cache_root, mark_used, prune_cache
    from sftlab.io import atomic_dir, atomic_write_json

    folder = cache_root(data_cfg) / f"vision-{_cache_key(examples, processor, cfg)}"
    if (folder / "stats.json").is_file():
        mark_used(folder)
        stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
        return load_from_disk(str(folder / "rows")), {**stats, "cache_hit": True, "cache_path": str(folder)}
    rows, stats = tokenize_vision_examples(examples, processor, cfg)
    with atomic_dir(folder, overwrite=True) as tmp:
        rows.save_to_disk(str(tmp / "rows"))
        atomic_write_json(tmp / "stats.json", stats)
    mark_used(folder)
    prune_cache(folder.parent, data_cfg.cache_max_gb)
    return load_from_disk(str(folder / "rows")), {**stats, "cache_hit": False, "cache_path": str(folder)}


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
    data_cfg = cfg.data
    if data_cfg.cache_dir and base_dir is not None and not Path(data_cfg.cache_dir).expanduser().is_absolute():
        data_cfg = data_cfg.model_copy(update={"cache_dir": str(Path(base_dir) / data_cfg.cache_dir)})
    train, stats["train"] = cached_vision_rows(train_examples, processor, cfg, data_cfg)
    validation = None
    if val_examples:
        validation, stats["validation"] = cached_vision_rows(val_examples, processor, cfg, data_cfg)
    return PreparedData(train=train, validation=validation, stats=stats, val_examples=val_examples,
                        train_examples=train_examples)
