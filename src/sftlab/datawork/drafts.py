"""Model drafts with human review: a local model drafts responses to instructions, people review them in a
JSONL review file, and only approved or edited records are exported for training.

Review file: one JSON object per line with `id`, `status` (draft | approved | rejected | edited),
`instruction`, `input`, `draft` (the model's text) and `final` (the text to train on; required for edited,
defaults to the draft for approved); reviewers may add fields of their own (a note), which are kept. Re-running
`update_review` keeps every record already in the review file (decisions, existing drafts and added fields
untouched) and drafts only instructions with a new id.

    records, summary = update_review(instructions, existing, generator)
    examples = export_reviewed(records)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sftlab.errors import SftlabError

STATUSES = ("draft", "approved", "rejected", "edited")
REVIEW_FIELDS = ("id", "status", "instruction", "input", "draft", "final")


def record_id(row: dict, id_field: str = "id") -> str:
    """The row's own id, else a stable hash of its instruction and input (so re-runs find it again)."""
    if row.get(id_field) not in (None, ""):
        return str(row[id_field])
    text = f"{row.get('instruction', '')}\x00{row.get('input', '') or ''}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def read_instructions(path: str | Path, columns: dict | None = None, id_field: str = "id") -> list[dict]:
    """Instruction rows (id, instruction, input) from any data file `sftlab.data.formats` reads."""
    from sftlab.data.formats import apply_columns, read_rows
    from sftlab.data.option_names import option_errors

    out, seen = [], {}
    for row in read_rows(path):
        with option_errors():
            row = apply_columns(row, columns)
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise SftlabError(f"{row['_src']}: missing required field 'instruction'")
        item = {"id": record_id(row, id_field), "instruction": instruction, "input": str(row.get("input") or ""), "_src": row["_src"]}
        if item["id"] in seen:
            raise SftlabError(f"{row['_src']}: id {item['id']!r} already used at {seen[item['id']]}")
        seen[item["id"]] = row["_src"]
        out.append(item)
    return out


def read_review(path: str | Path) -> list[dict]:
    """Records of an existing review file, checked (status, fields, unique ids); [] when it does not exist."""
    from sftlab.data.formats import read_rows

    if not Path(path).exists() or (Path(path).is_file() and not Path(path).read_bytes().strip()):
        return []
    records, seen = [], {}
    for row in read_rows(path):
        where = row["_src"]
        missing = [key for key in ("id", "status", "instruction") if row.get(key) in (None, "")]
        if missing:
            raise SftlabError(f"{where}: review record misses {missing}")
        if row["status"] not in STATUSES:
            raise SftlabError(f"{where}: status {row['status']!r} is not one of {', '.join(STATUSES)}")
        if row["status"] == "edited" and not str(row.get("final") or "").strip():
            raise SftlabError(f"{where}: status 'edited' needs the corrected text in 'final'")
        key = str(row["id"])
        if key in seen:
            raise SftlabError(f"{where}: id {key!r} already used at {seen[key]}")
        seen[key] = where
        extra = {field: value for field, value in row.items() if field not in REVIEW_FIELDS and field != "_src"}
        records.append({field: row.get(field) if row.get(field) is not None else "" for field in REVIEW_FIELDS}
                       | {"id": key, "_src": where, "_fields": extra})
    return records


def update_review(instructions: list[dict], existing: list[dict], generator, batch_size: int = 8) -> tuple[list[dict], dict]:
    """Existing records unchanged plus new draft records for instructions not yet in the review file.

    `generator(prompts) -> texts` is called in batches of `batch_size` only for new ids.
    Returns (records in instruction order, then records whose instruction is gone) and a summary.
    """
    by_id = {record["id"]: record for record in existing}
    new = [item for item in instructions if item["id"] not in by_id]
    for start in range(0, len(new), batch_size):
        batch = new[start : start + batch_size]
        drafts = generator([draft_prompt(item) for item in batch]) if generator is not None else [""] * len(batch)
        for item, draft in zip(batch, drafts):
            by_id[item["id"]] = {"id": item["id"], "status": "draft", "instruction": item["instruction"],
                                 "input": item["input"], "draft": draft, "final": ""}
    wanted = [item["id"] for item in instructions]
    wanted_ids = set(wanted)
    orphans = [record for record in existing if record["id"] not in wanted_ids]
    records = [by_id[key] for key in wanted] + orphans
    summary = {"instructions": len(instructions), "kept_from_review_file": len(existing), "new_drafts": len(new),
               "no_longer_in_instructions": len(orphans), "status": _status_counts(records)}
    return records, summary


def write_review(path: str | Path, records: list[dict]) -> Path:
    """Write the review file atomically, one record per line: REVIEW_FIELDS, then the fields reviewers added to a
    record (a note, a reviewer's name; kept by `read_review` under `_fields`), as they were."""
    from sftlab.io import atomic_write_jsonl

    return atomic_write_jsonl(path, [{field: record.get(field, "") for field in REVIEW_FIELDS} | record.get("_fields", {})
                                     for record in records])


def draft_prompt(item: dict) -> str:
    """The prompt the drafting model sees: the instruction, then the input on its own line when there is one."""
    return f"{item['instruction']}\n{item['input']}" if item["input"] else item["instruction"]


def export_reviewed(records: list[dict]) -> list[dict]:
    """sft examples from approved records (final, else the draft) and edited records (final), each with the
    record's `id` as an extra field (`_extra`), which `records.save_examples` writes."""
    examples = []
    for record in records:
        if record["status"] not in ("approved", "edited"):
            continue
        answer = str(record.get("final") or "").strip() or (str(record.get("draft") or "").strip() if record["status"] == "approved" else "")
        if not answer:
            where = record.get("_src") or f"review record {record['id']!r}"
            raise SftlabError(f"{where}: status approved but both 'final' and 'draft' are empty")
        examples.append({"messages": [{"role": "user", "content": draft_prompt(record)}, {"role": "assistant", "content": answer}],
                         "_src": record.get("_src") or f"review:{record['id']}", "_extra": {"id": record["id"]}})
    return examples


def _status_counts(records: list[dict]) -> dict[str, int]:
    return {status: sum(1 for r in records if r["status"] == status) for status in STATUSES}
