"""Defects found in an acceptance walk of `sftlab data ...` (outputs and options: test_datawork_walk_outputs.py):
exact duplicates that only matched across a message boundary, validation that hid problems behind a broken line
or misread valid ones, lone surrogate escapes that crashed the write, and HTML stripping that broke code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.datawork.dedup import DedupOptions, dedup_examples, example_hash, find_leaks


def sft(user: str, assistant: str, src: str = "f:1", system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else [])
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, "_src": src}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ exact duplicates


def test_exact_duplicates_respect_message_boundaries():
    # "ab"+"cd", "a"+"bcd" and "abc"+"d" all normalise to "abcd" when joined: three different conversations.
    examples = [sft("ab", "cd", "f:1"), sft("a", "bcd", "f:2"), sft("abc", "d", "f:3"), sft("A b!", "c, D.", "f:4")]
    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=None))
    assert [e["_src"] for e in kept] == ["f:1", "f:2", "f:3"]
    assert [why for _, why in removed] == ["exact duplicate of f:1"]  # spacing, case, punctuation still ignored
    assert example_hash(sft("ab", "cd")) != example_hash(sft("a", "bcd"))


def test_near_duplicates_respect_message_boundaries_too(tmp_path):
    examples = [sft("ab", "cd", "f:1"), sft("a", "bcd", "f:2"), sft("abc", "d", "f:3")]
    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=0.5, ngram=2))
    assert (len(kept), removed) == (3, [])
    long_a = sft("Please summarise the quarterly report", "The quarterly report shows revenue growth of ten percent.", "f:1")
    long_b = sft("Please summarise the quarterly report!", "The quarterly report shows revenue growth of ten percent", "f:2")
    assert [why for _, why in dedup_examples([long_a, long_b], DedupOptions())[1]] == ["exact duplicate of f:1"]
    near_b = sft("Please summarise the quarterly report", "The quarterly report shows a revenue growth of ten percent.",
                 "f:2")
    assert dedup_examples([long_a, near_b], DedupOptions())[1][0][1].startswith("near duplicate of f:1 (jaccard")
    data = write_jsonl(tmp_path / "b.jsonl", examples)
    assert main(["data", "clean", str(data), str(tmp_path / "o.jsonl")]) == 0
    assert len((tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()) == 3


def test_exact_duplicates_respect_roles_and_system_turns():
    user_first = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]}
    assistant_first = {"messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "there"},
                                    {"role": "assistant", "content": ""}]}
    assert example_hash(user_first) != example_hash(assistant_first)
    # a system prompt merged into the user turn is another conversation too
    assert example_hash(sft("be brief. hello", "ok")) != example_hash(sft("hello", "ok", system="be brief."))
    # pt and cls texts are one part each: the same text is still a duplicate
    assert example_hash({"text": "Hello, world"}) == example_hash({"text": "hello world!"})


def test_leakage_and_validate_use_the_boundary_aware_key(tmp_path, capsys):
    leaks = find_leaks([sft("a", "bcd", "t:1")], {"val": [sft("ab", "cd", "v:1")]}, DedupOptions(near_threshold=None))
    assert leaks == []
    data = write_jsonl(tmp_path / "b.jsonl", [sft("ab", "cd"), sft("a", "bcd"), sft("AB", "cd!")])
    assert main(["data", "build", "validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"{data}:3: duplicate: same content as {data}:1" in out and f"{data}:2: duplicate" not in out


# ------------------------------------------------------------------------------------------------ validate


def test_validate_keeps_u2028_and_nel_inside_json_strings(tmp_path, capsys):
    rows = [sft("line\u2028separator", "next\u0085line"), sft("second", "answer")]
    data = write_jsonl(tmp_path / "u.jsonl", rows)
    assert main(["data", "build", "validate", str(data)]) == 0
    assert f"{data}: 2 rows, 0 problem(s)" in capsys.readouterr().out


def test_validate_reads_a_json_array_saved_as_jsonl(tmp_path, capsys):
    data = tmp_path / "array.jsonl"
    data.write_text(json.dumps([sft("q1", "a1"), sft("q2", "")], indent=1), encoding="utf-8")
    assert main(["data", "build", "validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert "syntax" not in out and "empty" in out and "2 rows, 1 problem(s)" in out


def test_validate_lists_row_problems_next_to_broken_lines(tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    good = json.dumps(sft("hi", "yo"))
    data.write_text("\n".join([good, "{broken", json.dumps({"messages": [{"role": "user", "content": "q"},
                     {"role": "wizard", "content": "a"}]}), "[1, 2]", json.dumps(sft("", "yo")), good]) + "\n",
                    encoding="utf-8")
    assert main(["data", "build", "validate", str(data)]) == 1
    lines = capsys.readouterr().out.splitlines()
    kinds = {line.split(": ")[0]: line.split(": ")[1] for line in lines[:-1]}
    assert kinds == {f"{data}:2": "syntax", f"{data}:3": "schema", f"{data}:4": "syntax", f"{data}:5": "empty",
                     f"{data}:6": "duplicate"}
    assert lines[-1] == f"{data}: 4 rows, 5 problem(s)"


def test_validate_report_never_replaces_the_input(tmp_path, capsys):
    data = tmp_path / "train.json"
    data.write_text(json.dumps([sft("q", "a")]), encoding="utf-8")
    before = data.read_bytes()
    assert main(["data", "build", "validate", str(data), "--report", str(tmp_path / "train")]) == 2
    assert "--report" in capsys.readouterr().err and data.read_bytes() == before


# ------------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("text", ["std::vector<int> v;", "List<String> xs = new ArrayList<>();", "if (a<b && c>d) {}",
                                  "Map<String, List<Integer>> m;", "x <y> z", "email me <john@x.com>"])
def test_normalisation_removes_html_tags_only_not_code_or_comparisons(text):
    from sftlab.datawork.normalize import Normalizer

    assert Normalizer()(text) == text


def test_normalisation_leaves_markdown_code_as_written():
    from sftlab.datawork.normalize import Normalizer

    norm = Normalizer()
    text = 'Use `print("<b>a  b</b>")` here &amp; <b>there</b>'
    assert norm(text) == 'Use `print("<b>a  b</b>")` here & there'
    block = '```html\n<div class="x">hi</div>\n    x  =  1\n```\n\n\n\nafter  <p>text</p>'
    assert norm(block) == '```html\n<div class="x">hi</div>\n    x  =  1\n```\n\nafter text'
    assert norm("`ＡＢＣ`\u200b") == "`ABC`"  # code still gets NFKC and loses control characters
    assert norm('a <DIV CLASS="x" data-id=3>y</DIV><img src=x.png /><!-- c -->z') == "a y\nz"


def test_lone_surrogate_escapes_are_named_not_a_traceback_at_write(tmp_path, capsys):
    data = tmp_path / "s.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "emoji \\ud83d cut"}, {"role": "assistant", "content": '
                    '"fine \\ud83d\\ude00"}]}\n', encoding="utf-8")
    assert "\\ud83d cut" in data.read_text(encoding="utf-8")  # the file holds the JSON escape, as scraped data does
    message = "lone UTF-16 surrogate \\ud83d in messages[0].content (half of an emoji?)"
    assert main(["data", "build", "validate", str(data)]) == 1
    assert f"{data}:1: encoding: {message}" in capsys.readouterr().out
    for command in (["clean"], ["build", "convert"]):
        assert main(["data", *command, str(data), str(tmp_path / "o.jsonl")]) == 2
        assert capsys.readouterr().err.startswith(f"error: {data}:1: {message}")
    data.write_text(data.read_text(encoding="utf-8").replace("\\ud83d cut", "cut"), encoding="utf-8")
    assert main(["data", "build", "convert", str(data), str(tmp_path / "o.jsonl")]) == 0  # a paired escape is one emoji
    assert "\U0001f600" in (tmp_path / "o.jsonl").read_text(encoding="utf-8")
