"""The model card (`README.md`) written next to a trained model: base model, data, strategy, metrics, environment."""

from __future__ import annotations

import yaml


def _data_sources(cfg) -> list[str]:
    train = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
    return [item if isinstance(item, str) else item.path for item in train]


def _metric_lines(metrics: dict) -> list[str]:
    lines = ["| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return lines


def model_card(cfg, trainable, metrics: dict, stats: dict | None, is_adapter: bool,
               environment: dict | None = None) -> str:
    """Markdown with YAML front matter (Hugging Face model-card style) describing one training run.

    `environment` (`sftlab.train.environment.collect_environment`) adds the library versions and device."""
    front = {"base_model": cfg.model.path, "library_name": "peft" if is_adapter else "transformers",
             "tags": ["sftlab", cfg.train.stage, cfg.strategy.kind]}
    sources = _data_sources(cfg)
    load = ("PeftModel.from_pretrained(base, this_dir)" if is_adapter
            else ("AutoModelForSequenceClassification" if cfg.train.stage == "cls" else "AutoModelForCausalLM")
            + ".from_pretrained(this_dir)")
    parts = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
        f"# Fine-tuned {cfg.model.path} ({cfg.train.stage})", "",
        "Trained with sftlab. Load it with `" + load + "`. These are the weights after the last step; "
        "the best validation checkpoint (if any) is `best/` in the run directory.", "",
        "## Base model", "", f"- `{cfg.model.path}` (weights dtype {cfg.model.dtype})", "",
        "## Data", "", *[f"- train: `{source}`" for source in sources],
    ]
    if cfg.data.validation:
        parts.append(f"- validation: `{cfg.data.validation}`")
    parts += _stats_lines(stats or {})
    parts += ["", "## Strategy", "", f"- kind: {cfg.strategy.kind}", f"- {trainable.summary()}"]
    if "units" in (trainable.details or {}):
        from sftlab.strategy.report import importance_table

        parts += ["", "### Importance-based selection", "", *importance_table(trainable.details),
                  "", "Chart: `importance.png` in the run directory."]
    parts += [
              "", "## Training", "",
              f"- steps: {metrics.get('step', '?')}, batch {cfg.train.batch_size} x accumulation {cfg.train.grad_accum}, "
              f"lr {cfg.train.lr:g} ({cfg.train.scheduler}, warmup {cfg.train.warmup_steps}), precision {cfg.train.precision}, "
              f"seed {cfg.train.seed}", "", "## Final metrics", "", *_metric_lines(metrics), ""]
    if environment:
        from sftlab.train.environment import environment_lines

        parts += ["## Environment", "", *environment_lines(environment), ""]
    return "\n".join(parts)


def _stats_lines(stats: dict) -> list[str]:
    """Example and token counts per split, and the labels, from the data pipeline's stats."""
    lines = []
    for split in ("train", "validation"):
        split_stats = stats.get(split)
        if isinstance(split_stats, dict) and "examples" in split_stats:
            lines.append(f"- {split}: {split_stats['examples']} examples, {split_stats.get('tokens', '?')} tokens "
                         f"({split_stats.get('supervised_tokens', '?')} supervised)")
    if stats.get("label_names"):
        lines.append(f"- labels: {', '.join(map(str, stats['label_names']))}")
    return lines + (["- full statistics: `data_stats.json` in the run directory"] if stats else [])
