"""Uniform access to canonical examples of every stage: which stage, prompt, response, label, all text.

Canonical shapes (DEVELOPERS.md): sft `{"messages": [...]}`, pt `{"text"}`, cls `{"text", "label"}`, each
with `"_src": "file:line"`; `load_examples` adds `"_extra"`, the row's fields that its format does not read (an
`id`, metadata), which `save_examples` writes back. Data-work operations use these helpers so they need not branch on the stage.

Tool-calling sft examples (`sftlab.data.messages`) also hold assistant `tool_calls` (their content may be "" or
null), `tool` messages (results) and a `tools` list. Which texts each helper sees:
- `identity` / `identity_parts`: what deduplication, leakage and `build validate` compare: contents and tool
  results (JSON results as canonical JSON) as text (per message with its role for exact duplicates), and the
  tools list and every tool call (name, arguments) as a canonical JSON key; near-duplicate detection takes the
  text without system messages and compares `system_text` apart.
- `label_of`: the last assistant turn's text, or for a turn with only tool calls their names (`tool:NAME`).
- `natural_text`: system, user and assistant contents only (language detection: JSON is not a language).
- `full_text`: everything, for showing an example in a report.
- `prompt_text` / `response_text`: contents; `response_tool_calls` / `tools_text`: the rest, as JSON text.

Image+text examples (`sftlab.datawork.images`) also hold "images" (the entries as the file gives them) and
`_images_dir`; their contents hold `<image>` placeholders. `identity` adds the images' contents (`image_key`) to the
key, `map_texts` keeps every placeholder where it is (`keep_placeholders`), `natural_text` leaves them out.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Callable

from sftlab.data.option_names import option_errors, option_names
from sftlab.data.readers import lone_surrogate  # also re-exported: `data build validate` lists them
from sftlab.datawork.images import (first_with_images, has_images, image_key, is_image_row, keep_placeholders,
                                    read_image_examples, strip_placeholders)
from sftlab.datawork.jsontext import canonical_json, map_json_or_text, parse_json_text
from sftlab.errors import SftlabError
from sftlab.io import check_output_parent  # noqa: F401  (re-exported: the data commands check their outputs first)


def stage_of(example: dict) -> str:
    """'sft', 'cls' or 'pt' from the example's shape."""
    if "messages" in example:
        return "sft"
    if "label" in example:
        return "cls"
    return "pt"


def prompt_text(example: dict, tool_results: bool = True) -> str:
    """What the model is given: non-assistant turns before the last answer (sft; tool results only with
    `tool_results`), the text (cls), '' (pt)."""
    kind = stage_of(example)
    if kind == "sft":
        messages = example["messages"]
        last = last_assistant_index(messages)
        skip = ("assistant",) if tool_results else ("assistant", "tool")
        return "\n".join(content_of(m) for m in messages[: last if last >= 0 else len(messages)] if m["role"] not in skip)
    if kind == "cls":
        return example["text"]
    return ""


def response_text(example: dict) -> str:
    """What the model learns to produce: the last assistant turn (sft), the label (cls), the text (pt)."""
    kind = stage_of(example)
    if kind == "sft":
        last = last_assistant_index(example["messages"])
        return content_of(example["messages"][last]) if last >= 0 else ""
    if kind == "cls":
        return str(example["label"])
    return example["text"]


def label_of(example: dict) -> str:
    """The class of a labelled example: `label` (cls), or the last assistant turn of sft (an sft example whose
    response is a label).

    sft: the turn's text, stripped; when it has no text but tool calls, the calls' function names in order, each
    as `tool:NAME`, joined by `+` (`tool:get_weather`, `tool:search+tool:get_weather`); a turn with text and calls
    is labelled by its text. '' when there is no assistant turn or it has neither text nor calls.
    """
    if stage_of(example) == "pt":
        raise SftlabError(f"{example.get('_src', 'example')}: a pt example has no label")
    text = response_text(example).strip()
    if text or stage_of(example) != "sft":
        return text
    last = last_assistant_index(example["messages"])
    calls = (example["messages"][last].get("tool_calls") or []) if last >= 0 else []
    return "+".join(f"tool:{call['function']['name']}" for call in calls)


def response_tool_calls(example: dict) -> str:
    """The tool calls of the last assistant turn of an sft example, one canonical JSON object
    `{"arguments": ..., "name": ...}` per line; '' when it has none (and for pt and cls)."""
    if stage_of(example) != "sft":
        return ""
    last = last_assistant_index(example["messages"])
    return calls_text(example["messages"][last]) if last >= 0 else ""


def tools_text(example: dict) -> str:
    """The example's `tools` list as canonical JSON text; '' when it has none."""
    return canonical_json(example["tools"]) if example.get("tools") else ""


def content_of(message: dict) -> str:
    """A message's text content; '' for the null content of an assistant turn with tool calls."""
    content = message.get("content")
    return content if isinstance(content, str) else ""


def call_value(call: dict) -> dict:
    """A tool call as `{"name", "arguments"}` with arguments parsed when they are JSON text (ids left out)."""
    function = call["function"]
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        parsed = parse_json_text(arguments)
        arguments = arguments if parsed is None else parsed
    return {"name": function["name"], "arguments": arguments}


def calls_text(message: dict) -> str:
    """A message's tool calls, one canonical JSON object per line ('' without tool calls)."""
    return "\n".join(canonical_json(call_value(call)) for call in message.get("tool_calls") or [])


def result_text(content: str) -> str:
    """A tool result for comparison: canonical JSON when it is JSON of an object or array, else the text."""
    parsed = parse_json_text(content)
    return content if parsed is None else canonical_json(parsed)


def identity(example: dict, system: bool = True) -> tuple[str, str]:
    """(text, tool key) that deduplication and leakage compare.

    text: message contents and tool results (JSON results as canonical JSON, so key order and spacing do not
    matter), one per line; the text of pt and cls. `system=False` leaves system messages out of the text (what
    near-duplicate detection compares; see `system_text`). tool key: canonical JSON of the tools list and of the
    tool calls (name and arguments) of every assistant turn that has them, in order, and of the images' contents
    (`images.image_key`, in order); '' when the example has none of these. Call ids and a result's name and
    tool_call_id are left out.
    """
    parts, key = identity_parts(example, system)
    return "\n".join(text for _, text in parts), key


def identity_parts(example: dict, system: bool = True) -> tuple[list[tuple[str, str]], str]:
    """`identity` with the text kept apart per message: ([(role, text), ...], tool key); [("text", text)] for pt
    and cls. The exact-duplicate hash normalises each part on its own, so message and role boundaries count."""
    if stage_of(example) != "sft":
        return [("text", example["text"])], ""
    messages = [m for m in example["messages"] if system or m["role"] != "system"]
    parts = [(m["role"], result_text(content_of(m)) if m["role"] == "tool" else content_of(m)) for m in messages]
    calls = [[call_value(call) for call in m["tool_calls"]] for m in example["messages"] if m.get("tool_calls")]
    images = image_key(example)
    if not calls and not example.get("tools") and not images:
        return parts, ""
    return parts, canonical_json({"calls": calls, "tools": example.get("tools") or []}
                                 | ({"images": images} if images else {}))


def system_text(example: dict) -> str:
    """The contents of an sft example's system messages, in order, one per line; '' without any (and for pt, cls)."""
    if stage_of(example) != "sft":
        return ""
    return "\n".join(content_of(m) for m in example["messages"] if m["role"] == "system")


def natural_text(example: dict) -> str:
    """System, user and assistant contents joined by newlines (tool results, calls, tools and `<image>`
    placeholders left out); the text of pt and cls."""
    if stage_of(example) != "sft":
        return example["text"]
    text = "\n".join(content_of(m) for m in example["messages"] if m["role"] != "tool" and content_of(m))
    return strip_placeholders(text) if has_images(example) else text


def full_text(example: dict) -> str:
    """Every text of the example, one per line: contents, tool calls and results, then the tools list."""
    if stage_of(example) != "sft":
        return example["text"]
    parts = []
    for message in example["messages"]:
        parts += [text for text in (content_of(message), calls_text(message)) if text]
    return "\n".join(parts + ([tools_text(example)] if example.get("tools") else []))


def last_assistant_index(messages: list[dict]) -> int:
    """Index of the last assistant message, or -1."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return index
    return -1


def map_texts(example: dict, fn: Callable[[str], str]) -> dict:
    """A copy of `example` with `fn` applied to every text: message contents (a tool result that is JSON of an
    object or array only in its string values, so it stays valid JSON) or `text`. A null content, tool-call
    arguments, the tools list and labels are left untouched. In an image+text example every `<image>`
    placeholder stays as and where it is (`images.keep_placeholders`)."""
    out = copy.deepcopy(example)
    if has_images(out):
        fn = functools.partial(keep_placeholders, fn=fn)
    if stage_of(out) == "sft":
        for message in out["messages"]:
            if isinstance(message.get("content"), str):
                tool = message["role"] == "tool"
                message["content"] = map_json_or_text(message["content"], fn) if tool else fn(message["content"])
    else:
        out["text"] = fn(out["text"])
    return out


def src(example: dict) -> str:
    """The example's `file:line` origin, or '?' when it has none."""
    return str(example.get("_src", "?"))


def load_examples(path: str | Path, fmt: str = "auto", stage: str | None = None, columns: dict | None = None,
                  options: tuple[str, str] = ("--format", "--columns"),
                  invalid: list[tuple[str, str]] | None = None) -> list[dict]:
    """Read a dataset file with `sftlab.data.formats` and return canonical examples (each with `_src`).

    `stage` None takes the stage the format implies (alpaca -> sft, text -> pt, label -> cls). A file with an
    image+text row (`images.is_image_row`) is read as `sftlab train` reads it for vision-language models, every
    row with its "images" (`images.read_image_examples`). The fields of a row that its format does not read (`id`,
    metadata) are kept under `_extra`, and `save_examples` writes them back. Errors name `options` (the format and
    columns options) and `--stage` where the trainer's messages name data.format, data.columns and train.stage
    (`option_errors`).

    With `invalid` (a list), rows that do not convert or hold a lone surrogate are left out and appended to it as
    (`file:line`, the error) (`sftlab data clean --drop-invalid`); image+text rows still fail on the first one.
    """
    from sftlab.data.formats import read_rows

    rows = read_rows(path, surrogates=invalid is not None)
    if any(is_image_row(row) for row in rows):
        if invalid is not None:
            rows = read_rows(path)  # lone surrogates fail here, as everything else on image+text rows
        return read_image_examples(rows, path, fmt, stage, columns, options)
    if invalid is not None:
        return _convertible(rows, fmt, stage, columns, options, invalid)
    return _canonical(rows, fmt, stage, columns, options)


def load_valid_examples(path: str | Path, fmt: str, stage: str | None, columns: dict | None,
                   invalid: list[tuple[str, str]] | None) -> list[dict]:
    """`data clean`'s and `data build convert`'s examples: with `invalid` (`--drop-invalid`) as `load_examples` leaves
    rows out, and a file
    where no row converts is an error; without it, the first row that does not convert is one, with a hint at the
    option (a file's or an option's problem gets none)."""
    if invalid is not None:
        examples = load_examples(path, fmt, stage, columns, invalid=invalid)
        if not examples:
            raise SftlabError(f"{path}: none of its {len(invalid)} rows converts (first: {invalid[0][1]})")
        return examples
    try:
        return load_examples(path, fmt, stage, columns)
    except SftlabError as exc:
        rows: list[tuple[str, str]] = []
        try:
            load_examples(path, fmt, stage, columns, invalid=rows)
        except SftlabError:
            raise exc from None
        if not rows:
            raise
        raise SftlabError(f"{exc} (--drop-invalid leaves out such rows, listed in the report)") from None


def _convertible(rows: list[dict], fmt: str, stage: str | None, columns: dict | None, options: tuple[str, str],
                 invalid: list[tuple[str, str]]) -> list[dict]:
    """`load_examples` with `invalid`: the examples of the rows that convert, the others appended to `invalid` in
    file order."""
    broken = [(row["_src"], f"{row['_src']}: {problem}") for row in rows if (problem := lone_surrogate(row))]
    gone = {where for where, _ in broken}
    left = [row for row in rows if row["_src"] not in gone]
    skipped: list[tuple[str, str]] = []
    examples = _canonical(left, fmt, stage, columns, options, skipped) if left else []
    position = {row["_src"]: index for index, row in enumerate(rows)}
    invalid += sorted(broken + [(where, option_names(problem, *options)) for where, problem in skipped],
                      key=lambda item: position.get(item[0], len(rows)))
    return examples


def _canonical(rows: list[dict], fmt: str, stage: str | None, columns: dict | None, options: tuple[str, str],
               skipped: list[tuple[str, str]] | None = None) -> list[dict]:
    """Canonical examples of `rows`, each with the fields its format does not read under `_extra`."""
    from sftlab.data.formats import apply_columns, detect_format, extra_fields, to_canonical

    with option_errors(*options):
        examples = to_canonical(rows, fmt, stage, columns or None, skipped=skipped)
        converted = {example["_src"] for example in examples}  # all rows, but with `skipped` those that convert
        mapped = [apply_columns(row, columns or None) for row in rows if row["_src"] in converted]
        chosen = detect_format(mapped[0]) if fmt == "auto" and mapped else fmt
    for example, row in zip(examples, mapped):
        extra = extra_fields(row, chosen)
        if extra:
            example["_extra"] = extra
    return examples


def check_output_format(path: str | Path, fmt: str | None) -> None:
    """Fail before any work when `path`'s extension would not read back as what `fmt` writes: `csv` needs .csv,
    every other format (JSON records, and the default) .jsonl or .json (`sftlab.data.readers` picks the reader by
    extension, so JSON lines in a .parquet, .csv or .txt file could not be read again)."""
    check_output_parent(path)
    suffix = Path(path).suffix.lower()
    wanted = (".csv",) if fmt == "csv" else (".jsonl", ".json")
    if suffix not in wanted:
        written = "CSV" if fmt == "csv" else "JSON records"
        raise SftlabError(f"{path}: --to {fmt or 'default'} writes {written}, which sftlab reads back only from a "
                          f"{' or '.join(wanted)} file; name the output so, or choose another --to")


def save_examples(path: str | Path, examples: list[dict], fmt: str | None = None) -> Path:
    """Write canonical examples with `sftlab.data.writers.write_rows` (default: messages for sft, jsonl otherwise)
    to a path whose extension reads back in that format (`check_output_format`); the fields kept under `_extra`
    go with them (`sftlab.data.formats.written_extra`, and `dropped_fields_note` for those that do not).
    Examples with images go through `sftlab.datawork.imagewrite` (their image entries rewritten to resolve from
    `path`'s directory)."""
    from sftlab.data.writers import write_rows

    check_output_format(path, fmt)
    if first_with_images(examples) is not None:
        from sftlab.datawork.imagewrite import write_image_examples

        write_image_examples(path, examples, output_format(examples, fmt))
    else:
        write_rows(path, examples, output_format(examples, fmt))
    return Path(path)


def output_format(examples: list[dict], fmt: str | None) -> str:
    """`fmt`, or the default: messages for sft, jsonl otherwise. `openai` (content parts for image turns) is
    `messages` for examples without images, whose turns are text."""
    if fmt is None:
        return "messages" if examples and stage_of(examples[0]) == "sft" else "jsonl"
    if fmt == "openai" and first_with_images(examples) is None:
        return "messages"
    return fmt


def dropped_fields_note(examples: list[dict], fmt: str | None) -> str | None:
    """A one-line note naming the fields of the input rows (`_extra`) that `save_examples` does not write in
    `fmt`, and why; None when every field is written."""
    from sftlab.data.formats import unwritten_fields

    fmt = output_format(examples, fmt)
    names = unwritten_fields(examples, fmt)
    if not names:
        return None
    why = ("--to csv writes text and label only" if fmt == "csv" else
           "a field that one of the formats reads would change the example when it is read back")
    return f"note: dropped field(s) {', '.join(names)} of the input rows: {why}"
