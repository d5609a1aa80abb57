"""Knowledge base -> instruction/response pairs: structured records (CSV/JSONL, e.g. policy notices with title,
issuer, category, date, eligibility, benefits) filled into question templates kept as a data file.

    templates = load_templates(None, "zh")                     # resources/kb_templates.yaml, Chinese ones
    pairs, report = build_pairs(records, templates, per_record=3, seed=0)

For each record, `per_record` applicable templates (all their fields present) and one phrasing of each are
chosen with a generator seeded by (seed, record id), so the output does not depend on record order and a
re-run is identical. A template with `pick` also draws which fields it asks about: `count` of the `from`
fields present in the record, filled into the `{picked_names}` and `{picked_facts}` slots. Every pair is filled from its own record only, and is then checked: a pair whose text
contains a field value of another record that its own record does not contain is dropped and reported
(this catches templates with hard-coded facts and records that copied another record's fields).
"""

from __future__ import annotations

import random
import string
from importlib import resources
from pathlib import Path

import yaml

from sftlab.errors import SftlabError
from sftlab.io import read_yaml_mapping

MIN_FACT_CHARS = 4  # shorter values (e.g. "是", "2024") are too common to call a leak


def load_templates(path: str | Path | None, lang: str) -> list[dict]:
    """Templates of language `lang` from `path` or the built-in file, each checked (id, questions, answer)."""
    if path is None:
        source = "kb_templates.yaml"
        raw = yaml.safe_load(resources.files("sftlab.resources").joinpath(source).read_text(encoding="utf-8"))
    else:
        if not Path(path).is_file():
            raise SftlabError(f"template file not found: {path}")
        source, raw = str(path), read_yaml_mapping(path, "a mapping with a top-level 'templates' list")
    items = raw.get("templates")
    if not isinstance(items, list):
        raise SftlabError(f"{source}: expected a top-level 'templates' list")
    chosen = []
    for index, item in enumerate(items):
        where = f"{source}: templates[{index}]"
        if not isinstance(item, dict) or not item.get("id") or not item.get("answer") or not item.get("questions"):
            raise SftlabError(f"{where} needs id, questions (a list) and answer")
        if not isinstance(item["questions"], list):
            raise SftlabError(f"{where}.questions must be a list of phrasings")
        if "pick" in item:
            _check_pick(item, where)
        if item.get("lang", lang) == lang:
            chosen.append({**item, "fields": sorted(_slots(item) - PICK_SLOTS)})
    if not chosen:
        raise SftlabError(f"{source}: no templates for language {lang!r}")
    return chosen


PICK_SLOTS = {"picked_names", "picked_facts"}
PICK_DEFAULTS = {"item": "{name}: {value}", "join": "; ", "names_join": ", "}


def _check_pick(item: dict, where: str) -> None:
    pick = item["pick"]
    if not isinstance(pick, dict) or not isinstance(pick.get("from"), list) or not pick["from"]:
        raise SftlabError(f"{where}.pick needs 'from' (a list of fields) and 'count'")
    if not isinstance(pick.get("count"), int) or not 1 <= pick["count"] <= len(pick["from"]):
        raise SftlabError(f"{where}.pick.count must be a whole number from 1 to {len(pick['from'])}")
    names = item.get("names") or {}
    missing = [field for field in pick["from"] if field not in names]
    if missing:
        raise SftlabError(f"{where}.names must name every field in pick.from; missing {missing}")


def _pick_values(template: dict, record: dict, rng: random.Random) -> dict[str, str]:
    """The {picked_names}/{picked_facts} slot values: `count` fields drawn from those the record has."""
    if "pick" not in template:
        return {}
    pick, names = {**PICK_DEFAULTS, **template["pick"]}, template["names"]
    present = [field for field in pick["from"] if _value(record, field)]
    fields = rng.sample(present, pick["count"])
    return {"picked_names": pick["names_join"].join(names[f] for f in fields),
            "picked_facts": pick["join"].join(pick["item"].format(name=names[f], value=_value(record, f)) for f in fields)}


def _slots(template: dict) -> set[str]:
    names = set()
    for text in [template["answer"], *template["questions"]]:
        names |= {name for _, name, _, _ in string.Formatter().parse(text) if name}
    return names


def _value(record: dict, field: str) -> str:
    """The field as text ('' when missing or null); a JSON list or object is an error naming the record's line,
    since its Python form (`['a', 'b']`) would end up in the answers."""
    value = record.get(field)
    if isinstance(value, (list, dict)):
        kind = "list" if isinstance(value, list) else "object"
        raise SftlabError(f"{record.get('_src', 'record')}: field {field!r} is a JSON {kind}; a field that a template "
                          "uses must be text or a number (join the items into one text)")
    return "" if value is None else str(value).strip()


def _text_fields(record: dict) -> list[str]:
    """The record's own fields that hold text or numbers (lists and objects are no facts to compare)."""
    return [key for key in record if not key.startswith("_") and not isinstance(record[key], (list, dict))]


def applicable(template: dict, record: dict) -> bool:
    """True when every field the template names is present and non-empty in `record` (and, for a template with
    `pick`, at least `count` of its `from` fields)."""
    if "pick" in template and sum(1 for f in template["pick"]["from"] if _value(record, f)) < template["pick"]["count"]:
        return False
    return all(_value(record, field) for field in template["fields"])


def build_pairs(records: list[dict], templates: list[dict], per_record: int = 3, seed: int = 0,
                id_field: str = "id") -> tuple[list[dict], dict]:
    """sft examples (one user question, one assistant answer) and a report of choices and drops."""
    if per_record < 1:
        raise SftlabError(f"--per-record must be at least 1, got {per_record}")
    if not records:
        raise SftlabError("the knowledge base has no records")
    facts = _FactIndex(records)
    pairs, report = [], {"records": len(records), "pairs": 0, "template_use": {}, "no_template": [], "leaks_dropped": []}
    for index, record in enumerate(records):
        usable = [t for t in templates if applicable(t, record)]
        if not usable:
            report["no_template"].append(record.get("_src", str(index)))
            continue
        rng = random.Random(f"{seed}:{_value(record, id_field) or _value(record, 'title') or index}")
        for template in rng.sample(usable, min(per_record, len(usable))):
            values = _Values(record)
            values.update(_pick_values(template, record, rng))
            question = rng.choice(template["questions"]).format_map(values)
            answer = template["answer"].format_map(values)
            leaked = facts.foreign(f"{question}\n{answer}", index, record)
            if leaked:
                report["leaks_dropped"].append({"src": record.get("_src"), "template": template["id"], "foreign_values": leaked[:3]})
                continue
            report["template_use"][template["id"]] = report["template_use"].get(template["id"], 0) + 1
            pairs.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                          "_src": record.get("_src", f"record {index}")})
    report["pairs"] = len(pairs)
    return pairs, report


class _Values(dict):
    """The record's fields as template slot values, each turned into text when a template asks for it."""

    def __init__(self, record: dict):
        super().__init__()
        self.record = record

    def __missing__(self, key: str) -> str:
        if key not in self.record:
            raise KeyError(key)
        return _value(self.record, key)


def _facts(record: dict) -> set[str]:
    return {_value(record, key) for key in _text_fields(record) if len(_value(record, key)) >= MIN_FACT_CHARS}


class _FactIndex:
    """Every distinct field value (MIN_FACT_CHARS or longer) with the records that have it. Each value is keyed
    by its rarest MIN_FACT_CHARS-gram, so finding the values inside a text costs one lookup per character of
    the text plus a check of the few values that share the key."""

    def __init__(self, records: list[dict]):
        self.owners: dict[str, set[int]] = {}
        for index, record in enumerate(records):
            for value in _facts(record):
                self.owners.setdefault(value, set()).add(index)
        n = MIN_FACT_CHARS
        frequency: dict[str, int] = {}
        for value in self.owners:
            for gram in {value[i : i + n] for i in range(len(value) - n + 1)}:
                frequency[gram] = frequency.get(gram, 0) + 1
        self.by_gram: dict[str, list[tuple[str, int]]] = {}
        for value in self.owners:
            offset = min(range(len(value) - n + 1), key=lambda i: (frequency[value[i : i + n]], i))
            self.by_gram.setdefault(value[offset : offset + n], []).append((value, offset))

    def foreign(self, text: str, own_index: int, record: dict) -> list[str]:
        """Values of other records found in `text` that the record itself does not contain."""
        own_text = "\n".join(_value(record, key) for key in _text_fields(record))
        found = set()
        for pos in range(len(text) - MIN_FACT_CHARS + 1):
            for value, offset in self.by_gram.get(text[pos : pos + MIN_FACT_CHARS], ()):
                start = pos - offset
                if start >= 0 and text.startswith(value, start) and self.owners[value] != {own_index} and value not in own_text:
                    found.add(value)
        return sorted(found)
