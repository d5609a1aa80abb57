"""Reports of data-work commands: what went in, what came out, what was removed and why, with examples.

    report = Report("clean", inputs=["train.jsonl"], before=len(examples))
    report.removed("exact duplicate", example, "exact duplicate of train.jsonl:3")
    report.note("redacted PII in 2 examples: email 1, phone 1")   # a console line (the JSON has sections)
    report.finish(after=len(kept), outputs=["clean.jsonl"])
    report.write("clean.report")          # clean.report.json + clean.report.md
    print(report.summary())

The JSON is for scripts; the Markdown (and the console summary) is for people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftlab.datawork.records import full_text, src
from sftlab.io import atomic_write_json, atomic_write_text

EXAMPLES_PER_REASON = 3
_PREVIEW_CHARS = 160


def preview(example: dict) -> str:
    """The example's text on one line, cut to a readable length."""
    text = " | ".join(full_text(example).split("\n"))
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


class Report:
    """Counts, removals grouped by reason (with a few examples each) and free-form sections."""

    def __init__(self, command: str, inputs: list[str], before: int | None = None):
        self.data: dict[str, Any] = {"command": command, "inputs": [str(p) for p in inputs], "before": before,
                                     "after": None, "outputs": [], "removed": {}, "sections": {}}
        self.notes: list[str] = []

    def removed(self, reason_kind: str, example: dict, detail: str) -> None:
        """Record one removed example under `reason_kind` (detail says exactly why)."""
        group = self.data["removed"].setdefault(reason_kind, {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < EXAMPLES_PER_REASON:
            group["examples"].append({"src": src(example), "why": detail, "text": preview(example)})

    def removed_all(self, pairs: list[tuple[dict, str]], kind_of=None) -> None:
        """Record (example, detail) pairs; the reason kind is `kind_of(detail)` or the detail up to '(' / ' of '."""
        for example, detail in pairs:
            self.removed(kind_of(detail) if kind_of else reason_kind(detail), example, detail)

    def invalid_rows(self, rows: list[tuple[str, str]]) -> None:
        """Record rows left out because they do not convert, as (`file:line`, error): counted under 'invalid row'
        (a few shown) and every one listed in the 'invalid rows' section."""
        for where, problem in rows:
            self.removed("invalid row", {"_src": where, "text": problem.removeprefix(f"{where}: ")}, "does not convert")
        if rows:
            self.section("invalid rows", [{"src": where, "error": problem} for where, problem in rows])

    def note(self, line: str) -> None:
        """A line for the console summary (put the numbers in a section too: notes are not written)."""
        self.notes.append(line)

    def section(self, name: str, value: Any) -> None:
        self.data["sections"][name] = value

    def finish(self, after: int, outputs: list[str]) -> "Report":
        self.data["after"] = after
        self.data["outputs"] = [str(p) for p in outputs]
        return self

    @property
    def removed_count(self) -> int:
        return sum(group["count"] for group in self.data["removed"].values())

    def summary(self) -> str:
        """A few lines for the console."""
        d = self.data
        lines = [f"{d['command']}: {d['before']} -> {d['after']} examples"]
        lines += [f"  {note}" for note in self.notes]
        for kind, group in d["removed"].items():
            lines.append(f"  removed {group['count']:>6}  {kind}")
            for item in group["examples"][:1]:
                lines.append(f"           e.g. {item['src']}: {item['text'][:80]}")
        for path in d["outputs"]:
            lines.append(f"  wrote {path}")
        return "\n".join(lines)

    def markdown(self) -> str:
        d = self.data
        out = [f"# sftlab data {d['command']}", "", f"- inputs: {', '.join(d['inputs'])}",
               f"- examples before: {d['before']}", f"- examples after: {d['after']}",
               f"- outputs: {', '.join(d['outputs'])}", ""]
        if d["removed"]:
            out += ["## Removed", "", "| reason | count |", "|---|---|"]
            out += [f"| {kind} | {group['count']} |" for kind, group in d["removed"].items()]
            for kind, group in d["removed"].items():
                out += ["", f"### {kind}", ""]
                out += [f"- `{item['src']}` ({item['why']}): {item['text']}" for item in group["examples"]]
            out.append("")
        for name, value in d["sections"].items():
            out += [f"## {name}", "", "```json", json.dumps(value, indent=2, ensure_ascii=False, default=str), "```", ""]
        return "\n".join(out)

    def write(self, stem: str | Path) -> list[Path]:
        """Write `<stem>.json` and `<stem>.md` atomically."""
        json_path, md_path = report_paths(stem)
        return [atomic_write_json(json_path, self.data), atomic_write_text(md_path, self.markdown())]


def reason_kind(detail: str) -> str:
    """Group key of a removal detail: 'near duplicate of x (jaccard 0.9)' -> 'near duplicate'."""
    for cut in (" of ", " (", ": "):
        if cut in detail:
            detail = detail.split(cut, 1)[0]
    return detail.strip()


def report_stem(output: str | Path) -> Path:
    """`out/clean.jsonl` -> `out/clean.report`, `out/train.v2.jsonl` -> `out/train.v2.report` (the report sits
    beside the data it describes; only the last extension is replaced, so two outputs never share a report)."""
    output = Path(output)
    return output.with_name(output.stem + ".report")


def report_paths(stem: str | Path) -> list[Path]:
    """The two files a report with this stem is written to: `<stem>.json` and `<stem>.md`."""
    stem = Path(stem)
    return [stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")]
