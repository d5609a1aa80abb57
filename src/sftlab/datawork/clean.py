"""`sftlab data clean`: normalise text, optionally redact PII, filter poor examples, remove exact and near
duplicates, and remove training examples that leak into validation/test sets, reporting every removal with its
reason and every redaction with its kind.

    kept, report = clean_examples(examples, CleanOptions(...), tokenizer=None, eval_sets={"test": test})

Order: image checks -> normalisation -> PII redaction -> filters -> in-set deduplication -> leakage against
evaluation sets. Evaluation sets are normalised and redacted the same way before comparison, and are never changed
or written. Image+text examples whose images training could not open (missing, not decodable, a decompression bomb,
a web URL; `images.image_problems`) are removed first, each under its problem's kind; text edits keep every
`<image>` placeholder (`records.map_texts`), and duplicates must have the same images (`records.identity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sftlab.datawork.dedup import DedupOptions, dedup_examples, find_leaks
from sftlab.datawork.filters import FilterOptions, filter_examples
from sftlab.datawork.images import has_images, image_problems
from sftlab.datawork.normalize import NormalizeOptions, Normalizer
from sftlab.datawork.pii import Redactor
from sftlab.datawork.records import map_texts
from sftlab.datawork.report import Report, reason_kind

_FIELD_NAMES = {"contents": "contents", "tool_arguments": "tool-call arguments", "tool_results": "tool results",
                "other_fields": "other fields"}


@dataclass
class CleanOptions:
    """All settings of one clean run; `normalize=None` skips normalisation, `dedup=None` deduplication,
    `redact_pii=None` PII redaction (else the kinds to redact, see `sftlab.datawork.pii.KINDS`)."""

    normalize: NormalizeOptions | None = field(default_factory=NormalizeOptions)
    redact_pii: list[str] | None = None
    filters: FilterOptions = field(default_factory=FilterOptions)
    dedup: DedupOptions | None = field(default_factory=DedupOptions)
    drop_leaks: bool = True


def clean_examples(examples: list[dict], options: CleanOptions, tokenizer=None,
                   eval_sets: dict[str, list[dict]] | None = None, report: Report | None = None) -> tuple[list[dict], Report]:
    """Cleaned copies of `examples` (inputs untouched) and the report of what happened."""
    report = report or Report("clean", inputs=[], before=len(examples))
    if report.data["before"] is None:
        report.data["before"] = len(examples)
    if any(has_images(example) for example in examples):
        examples = _drop_bad_images(examples, report)
    current = examples
    if options.normalize is not None:
        normalizer = Normalizer(options.normalize)
        current = [map_texts(example, normalizer) for example in examples]
        changed = sum(1 for old, new in zip(examples, current) if old != new)
        report.section("normalisation", {"changed_examples": changed, "options": vars(options.normalize)})
        eval_sets = {name: [map_texts(e, normalizer) for e in rows] for name, rows in (eval_sets or {}).items()}
    if options.redact_pii is not None:
        current, eval_sets = _redact(current, eval_sets, options.redact_pii, report)
    current, removed = filter_examples(current, options.filters, tokenizer)
    report.removed_all(removed, kind_of=_filter_kind)
    if options.dedup is not None:
        current, removed = dedup_examples(current, options.dedup)
        report.removed_all(removed)
        report.section("deduplication", {"exact": options.dedup.exact, "near_threshold": options.dedup.near_threshold,
                                         "ngram": options.dedup.ngram, "removed": len(removed)})
    if eval_sets:
        current = _remove_leaks(current, eval_sets, options, report)
    report.data["after"] = len(current)
    return current, report


def _drop_bad_images(examples: list[dict], report: Report) -> list[dict]:
    """The examples whose images all open; each other one is removed under the kind of its first image problem
    ("image not found", "image unreadable", "image not a local file"), the detail naming the image."""
    kept, images = [], 0
    for example in examples:
        images += len(example.get("images") or [])
        problems = image_problems(example)
        if not problems:
            kept.append(example)
            continue
        kind, detail = problems[0]
        more = f" (and {len(problems) - 1} more image problem(s))" if len(problems) > 1 else ""
        report.removed(kind, example, detail + more)
    report.section("images", {"rows_with_images": sum(1 for e in examples if e.get("images")), "images": images,
                              "removed_examples": len(examples) - len(kept)})
    return kept


def _redact(examples: list[dict], eval_sets: dict[str, list[dict]] | None, kinds: list[str],
            report: Report) -> tuple[list[dict], dict[str, list[dict]] | None]:
    """Examples with PII replaced by placeholders (tool calls and results too), counted per kind and per field
    in the report; evaluation sets are redacted with a separate, uncounted redactor so that leakage still
    compares like with like."""
    redactor = Redactor(kinds)
    redacted = [redactor.redact_example(example) for example in examples]
    changed = sum(1 for old, new in zip(examples, redacted) if old != new)
    report.section("pii_redaction", {"kinds": redactor.kinds, "redacted": dict(redactor.counts),
                                     "redacted_in": dict(redactor.fields), "changed_examples": changed})
    found = ", ".join(f"{kind} {count}" for kind, count in redactor.counts.items())
    where = ", ".join(f"{_FIELD_NAMES[name]} {count}" for name, count in redactor.fields.items())
    report.note(f"redacted PII in {changed} examples: {found} (in {where})")
    if eval_sets:
        eval_redactor = Redactor(kinds)
        eval_sets = {name: [eval_redactor.redact_example(e) for e in rows] for name, rows in eval_sets.items()}
    return redacted, eval_sets


def _remove_leaks(train: list[dict], eval_sets: dict[str, list[dict]], options: CleanOptions, report: Report) -> list[dict]:
    dedup = options.dedup or DedupOptions(near_threshold=None)
    leaks = find_leaks(train, eval_sets, dedup)
    report.section("leakage", {"eval_sets": {name: len(rows) for name, rows in eval_sets.items()},
                               "leaking_train_examples": len(leaks), "removed": options.drop_leaks, "leaks": leaks})
    if not options.drop_leaks:
        return train
    leaked = {leak["train_index"]: leak for leak in leaks}
    for index, leak in sorted(leaked.items()):
        detail = f"{leak['kind']} match of {leak['eval_set']} example {leak['eval_src']} (jaccard {leak['jaccard']:.2f})"
        report.removed(f"leaks into {leak['eval_set']}", train[index], detail)
    return [example for index, example in enumerate(train) if index not in leaked]


def _filter_kind(detail: str) -> str:
    if detail.startswith("refusal/boilerplate"):
        return "refusal/boilerplate"
    if detail.startswith("language "):
        return "wrong language"
    return reason_kind(detail)
