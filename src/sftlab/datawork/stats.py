"""`sftlab data stats`: counts, token lengths of prompts and responses (with PNG histograms), supervised-token
ratio, label distribution (PNG), duplicates, language mix and the share of samples longer than max_length.

    stats = compute_stats(examples, tokenizer, max_length=512)     # a JSON-able dict
    write_stats(stats, lengths, "stats/", overwrite=True)          # stats.json, stats.md, *.png

Without a tokenizer, lengths are counted in characters (`"unit": "chars"`) and the supervised ratio and
truncation share, which need the chat template, are left out. With one, sft examples are rendered exactly
as training renders and tokenizes them (`sftlab.data.templates.render_conversation`, `encode_rendered_batch`:
many texts per tokenizer call, with a progress bar on a terminal) to count supervised tokens, and the
tokenizer's unknown token (`[UNK]`) is counted in those sequences (`unknown_tokens`: text the tokenizer cannot
represent, such as Chinese through an English-only vocabulary; `stats_notes` turns it into a printed note, and
so it does for Chinese labels that labels.png draws as boxes where no CJK font is installed).
Tool data: prompt lengths include the tools list and response lengths the last turn's tool calls (canonical JSON
text), and the language mix reads system, user and assistant contents only (`records.natural_text`).
Image+text data (`datawork.images`): an `images` section counts rows with images, images, images per row, distinct
images (by content) and image files that are missing; `<image>` placeholders count as text in character lengths and
not in the language mix; duplicates must have the same images. Labels (cls, or sft with `label_task`) are
`records.label_of`: a last assistant turn with only tool calls counts
under their names (`tool:get_weather`). Duplicates, and the cls examples a label conflict removes, are counted
as `dedup.dedup_examples` finds them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from sftlab.datawork.balance import distribution
from sftlab.datawork.dedup import DedupOptions, dedup_examples
from sftlab.datawork.filters import detect_language
from sftlab.datawork.images import has_images, image_key
from sftlab.datawork.records import (label_of, natural_text, prompt_text, response_text, response_tool_calls,
                                     stage_of, tools_text)


def summarize(values: list[int]) -> dict:
    """count, mean, min, p50, p90, p99, max of a list of lengths (zeros when empty)."""
    if not values:
        return {"count": 0, "mean": 0.0, "min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    arr = np.array(values)
    return {"count": len(values), "mean": round(float(arr.mean()), 2), "min": int(arr.min()),
            **{f"p{q}": int(np.percentile(arr, q, method="lower")) for q in (50, 90, 99)}, "max": int(arr.max())}


_CHUNK = 256  # texts per tokenizer call: the fast tokenizer encodes them together


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Length of each text: characters without a tokenizer, else its tokens without special tokens (0 when empty)."""
    if tokenizer is None:
        return [len(text) for text in texts]
    counts = []
    for at in range(0, len(texts), _CHUNK):
        chunk = texts[at:at + _CHUNK]
        ids = tokenizer(chunk, add_special_tokens=False)["input_ids"] if chunk else []
        counts += [len(row) if text else 0 for text, row in zip(chunk, ids)]
    return counts


def _encoded(examples: list[dict], tokenizer, template: str, mask: str):
    """(ids, labels or None, example) of each training sequence of `examples`, in order, as training makes them
    (`sftlab.data.tokenize.encode_samples` for sft; pt and cls text with the tokenizer's special tokens)."""
    from sftlab.data.tokenize import encode_samples

    sft = iter(encode_samples([e for e in examples if stage_of(e) == "sft"], tokenizer, template, mask))
    texts = [example["text"] for example in examples if stage_of(example) != "sft"]
    plain = iter(tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else [])
    for example in examples:
        if stage_of(example) != "sft":
            yield next(plain), None, example
            continue
        for ids, labels, _ in next(sft):  # mask each_assistant: one training sequence per assistant turn
            yield ids, labels, example


def _sequence_lengths(examples, tokenizer, template, mask) -> tuple[list[int], int, dict]:
    """Full training-sequence length of each example (of each sample an example makes under mask each_assistant),
    the number of supervised tokens in all of them, and `UnknownTokens`' count of the tokenizer's unknown token;
    with a progress bar on a terminal."""
    from sftlab.data.unknown_tokens import UnknownTokens
    from sftlab.progress import example_bar

    lengths, supervised, unknown = [], 0, UnknownTokens(getattr(tokenizer, "unk_token_id", None))
    bar = example_bar(examples, "token lengths")
    try:
        for at in range(0, len(examples), _CHUNK):
            for ids, labels, example in _encoded(examples[at:at + _CHUNK], tokenizer, template, mask):
                lengths.append(len(ids))
                if labels is not None:
                    supervised += sum(1 for label in labels if label != -100)
                elif stage_of(example) == "pt":
                    supervised += len(ids)
                unknown.add(ids, example.get("_src"))
            bar.update(min(_CHUNK, len(examples) - at))
    finally:
        bar.close()
    return lengths, supervised, unknown.summary(sum(lengths))


def compute_stats(examples: list[dict], tokenizer=None, max_length: int | None = None, template: str = "auto",
                  mask: str = "assistant", label_task: bool = False, near_threshold: float | None = 0.8) -> tuple[dict, dict]:
    """(stats dict, raw length lists for plots); `label_task` treats sft answers as labels."""
    stages = Counter(stage_of(example) for example in examples)
    prompt_lengths = _token_counts(tokenizer, [_joined(prompt_text(e), tools_text(e)) for e in examples
                                               if stage_of(e) != "pt"])
    response_lengths = _token_counts(tokenizer, [_joined(response_text(e), response_tool_calls(e)) for e in examples
                                                 if stage_of(e) != "cls"])
    stats: dict = {"examples": len(examples), "stages": dict(stages), "unit": "tokens" if tokenizer is not None else "chars",
                   "prompt_length": summarize(prompt_lengths), "response_length": summarize(response_lengths)}
    if tokenizer is not None:
        lengths, supervised, unknown = _sequence_lengths(examples, tokenizer, template, mask)
        total = sum(lengths)
        stats["sequence_length"] = summarize(lengths)
        if unknown:
            stats["unknown_tokens"] = unknown
        if stages.get("cls", 0) < len(examples):
            stats["supervised_token_ratio"] = round(supervised / total, 4) if total else 0.0
        if max_length:
            over = sum(1 for n in lengths if n > max_length)
            stats["max_length"] = max_length
            stats["truncated"] = {"count": over, "share": round(over / len(lengths), 4) if lengths else 0.0}
    if stages.get("cls") or label_task:
        stats["labels"] = distribution([label_of(e) for e in examples if stage_of(e) != "pt"])
    _, removed = dedup_examples(examples, DedupOptions(near_threshold=near_threshold))
    kinds = Counter(why.split(" ", 1)[0] for _, why in removed)  # exact, near or label (conflict)
    stats["duplicates"] = {"exact": kinds.get("exact", 0), "near": kinds.get("near", 0),
                           "label_conflicts": kinds.get("label", 0), "near_threshold": near_threshold,
                           "examples": [{"src": e.get("_src"), "why": why} for e, why in removed[:5]]}
    stats["languages"] = dict(Counter(detect_language(natural_text(e)) for e in examples).most_common())
    if any(has_images(example) for example in examples):
        stats["images"] = image_stats(examples)
    return stats, {"prompt": prompt_lengths, "response": response_lengths}


def image_stats(examples: list[dict]) -> dict:
    """Rows with images, images, rows per number of images, distinct images (by content, `images.image_key`) and
    image references whose file is missing."""
    counts = [len(example.get("images") or []) for example in examples]
    keys = [key for example in examples for key in image_key(example)]
    return {"rows_with_images": sum(1 for n in counts if n), "images": sum(counts),
            "rows_by_image_count": {str(n): rows for n, rows in sorted(Counter(counts).items())},
            "distinct_images": len(set(keys)), "missing_files": sum(1 for key in keys if key.startswith("missing:"))}


def _joined(text: str, tool_text: str) -> str:
    """A prompt with its tools list, or a response with its tool calls (JSON text), one per line."""
    return f"{text}\n{tool_text}" if text and tool_text else text or tool_text


# Fonts tried in order for every glyph (matplotlib >= 3.6 falls back per character), so Chinese labels render
# where a CJK font is installed; without one they show as boxes.
FONTS = ["DejaVu Sans", "Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "Source Han Sans SC", "SimHei", "Microsoft YaHei"]


def missing_glyphs(labels) -> str:
    """The characters of `labels` that none of the installed `FONTS` can draw (in first-seen order), which the
    label plot shows as boxes: Chinese labels on a machine without a CJK font. '' when every one can be drawn."""
    from matplotlib import font_manager, ft2font

    covered: set[int] = set()
    for name in FONTS:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
        except ValueError:
            continue
        covered.update(ft2font.FT2Font(path).get_charmap())
    chars = dict.fromkeys(c for label in labels for c in str(label) if not c.isspace())
    return "".join(c for c in chars if ord(c) not in covered)


def stats_notes(stats: dict, plots: list[str] = ()) -> list[str]:
    """One-line notes on what `stats` shows that a user should act on: training sequences holding the tokenizer's
    unknown token, and (when `plots` has labels.png) label characters the plot draws as boxes."""
    notes = []
    unknown = stats.get("unknown_tokens") or {}
    if unknown.get("count"):
        notes.append(f"note: {unknown['count']} unknown tokens ({unknown['share']:.1%} of all tokens) in "
                     f"{unknown['examples']} examples, first {unknown['first']}: the tokenizer cannot represent "
                     "that text, and training would learn its unknown token instead")
    if "labels.png" in plots and glyph_note(stats):
        notes.append(glyph_note(stats))
    return notes


def glyph_note(stats: dict) -> str:
    """A one-line note when labels.png will show some label characters as boxes (no installed font has them),
    naming the fonts that would draw them; '' otherwise."""
    missing = missing_glyphs(stats.get("labels") or {})
    if not missing:
        return ""
    shown = missing if len(missing) <= 10 else missing[:10] + "..."
    return (f"note: labels.png shows {len(missing)} label character(s) as boxes ({shown}): no installed font has "
            f"them; install one of {', '.join(FONTS[1:])} (stats.json and stats.md are unaffected)")


def _pyplot():
    import logging

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["font.sans-serif"] = FONTS
    return plt


def _histogram(values: list[int], title: str, unit: str, path: Path) -> None:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=min(50, max(1, len(set(values)))), color="#4c72b0")
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("examples")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _bars(counts: dict[str, int], path: Path) -> None:
    import warnings

    plt = _pyplot()
    names = list(counts)[:40]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(names) + 2), 3.5))
        ax.bar(range(len(names)), [counts[n] for n in names], color="#55a868")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("examples")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_title("label distribution" + (" (40 most frequent)" if len(counts) > 40 else ""))
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def write_stats(stats: dict, lengths: dict, out_dir: str | Path, overwrite: bool = False) -> list[str]:
    """Write stats.json, stats.md and the PNG plots into `out_dir` in one atomic step; returns file names. stats.md
    ends with `glyph_note` when labels.png cannot draw some label characters."""
    from sftlab.io import atomic_dir

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        files = ["stats.json", "stats.md"]
        if lengths["prompt"]:
            _histogram(lengths["prompt"], "prompt length", stats["unit"], tmp / "prompt_lengths.png")
            files.append("prompt_lengths.png")
        if lengths["response"]:
            _histogram(lengths["response"], "response length", stats["unit"], tmp / "response_lengths.png")
            files.append("response_lengths.png")
        note = ""
        if stats.get("labels"):
            _bars(stats["labels"], tmp / "labels.png")
            files.append("labels.png")
            note = glyph_note(stats)
        stats = {**stats, "plots": [f for f in files if f.endswith(".png")]}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "stats.md").write_text(stats_markdown(stats) + (f"\n{note}\n" if note else ""), encoding="utf-8")
    return files


def stats_markdown(stats: dict) -> str:
    """A short human summary of `stats`."""
    unit = stats["unit"]
    lines = ["# Dataset statistics", "", f"- examples: {stats['examples']} ({', '.join(f'{k} {v}' for k, v in stats['stages'].items())})"]
    for key in ("prompt_length", "response_length", "sequence_length"):
        if key in stats and stats[key]["count"]:
            s = stats[key]
            lines.append(f"- {key.replace('_', ' ')} ({unit}): mean {s['mean']}, p50 {s['p50']}, p90 {s['p90']}, max {s['max']}")
    if "supervised_token_ratio" in stats:
        lines.append(f"- supervised-token ratio: {stats['supervised_token_ratio']}")
    if stats.get("unknown_tokens", {}).get("count"):
        u = stats["unknown_tokens"]
        lines.append(f"- unknown tokens: {u['count']} ({u['share']:.1%}) in {u['examples']} examples, first {u['first']}")
    if "truncated" in stats:
        lines.append(f"- longer than max_length {stats['max_length']}: {stats['truncated']['count']} ({stats['truncated']['share']:.1%})")
    lines.append(f"- duplicates: {stats['duplicates']['exact']} exact, {stats['duplicates']['near']} near"
                 + (f"; {stats['duplicates']['label_conflicts']} examples in label conflicts"
                    if stats["duplicates"]["label_conflicts"] else ""))
    lines.append(f"- languages: {', '.join(f'{k} {v}' for k, v in stats['languages'].items())}")
    if "images" in stats:
        s = stats["images"]
        per_row = ", ".join(f"{n} image(s): {rows}" for n, rows in s["rows_by_image_count"].items())
        lines.append(f"- images: {s['images']} in {s['rows_with_images']} rows (rows with {per_row}); "
                     f"{s['distinct_images']} distinct; {s['missing_files']} missing")
    if stats.get("labels"):
        lines.append(f"- labels: {', '.join(f'{k} {v}' for k, v in list(stats['labels'].items())[:20])}")
    for plot in stats.get("plots", []):
        lines.append(f"\n![{plot}]({plot})")
    return "\n".join(lines) + "\n"
