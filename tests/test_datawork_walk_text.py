"""Text rows in `sftlab data ...`, found in an acceptance walk: near duplicates just above `--near` that the LSH
never proposed, normalisation that changed a normalised text again, reviewer fields lost when drafts re-ran,
`--val-out` ignored without `--val-ratio`, and tracebacks for an output inside a file or a model directory that
does not load."""

from __future__ import annotations

import json
import random
import string

import pytest

from sftlab.cli import main
from sftlab.datawork.dedup import DedupOptions, dedup_examples, jaccard, shingles
from sftlab.datawork.normalize import Normalizer

CLS = "".join(json.dumps({"text": f"text number {i} {'abc'[i % 3] * (i + 1)}", "label": "ab"[i % 2]}) + "\n"
              for i in range(12))


def _pair_near(threshold: float, rng: random.Random, above: bool) -> tuple[str, str] | None:
    """Two random 300-letter texts whose 3-gram Jaccard lies in [threshold, threshold + 0.04) (`above`) or
    (threshold - 0.04, threshold) (not `above`), by changing one letter at a time; None when no step lands there."""
    base = "".join(rng.choice(string.ascii_lowercase) for _ in range(300))
    letters = list(base)
    for _ in range(80):
        letters[rng.randrange(len(letters))] = rng.choice(string.ascii_lowercase)
        score = jaccard(shingles(base, 3), shingles("".join(letters), 3))
        if above and threshold <= score < threshold + 0.04:
            return base, "".join(letters)
        if not above and threshold - 0.04 < score < threshold:
            return base, "".join(letters)
    return None


@pytest.mark.parametrize("threshold", [0.8, 0.9])
def test_near_duplicates_just_above_the_threshold_are_all_removed_and_just_below_kept(threshold):
    rng = random.Random(7)
    for above in (True, False):
        pairs = [p for p in (_pair_near(threshold, rng, above) for _ in range(80)) if p is not None]
        assert len(pairs) >= 40
        missed = []
        for first, second in pairs:
            examples = [{"text": first, "_src": "d.jsonl:1"}, {"text": second, "_src": "d.jsonl:2"}]
            kept, removed = dedup_examples(examples, DedupOptions(near_threshold=threshold))
            assert kept[0]["text"] == first  # the first of a group is the one kept
            if above != bool(removed):
                missed.append(round(jaccard(shingles(first, 3), shingles(second, 3)), 3))
        assert missed == []


@pytest.mark.parametrize("text, expected", [
    ("&lt;p&gt;hello&lt;/p&gt;", "hello"),
    ("＜ｐ＞你好＜／ｐ＞", "你好"),
    ("&amp;amp; x", "& x"),
    ("<<p>p>x", "x"),
    ("keep `&lt;p&gt;  code` as is", "keep `&lt;p&gt;  code` as is"),
])
def test_normalisation_is_idempotent(text, expected):
    normalise = Normalizer()
    assert normalise(text) == expected
    assert normalise(normalise(text)) == normalise(text)


def test_clean_twice_changes_nothing(tmp_path):
    source = tmp_path / "a.jsonl"
    rows = [{"instruction": "&lt;b&gt;Bold&lt;/b&gt; question", "output": "＜ｐ＞回答＜／ｐ＞ &amp;amp; more"},
            {"instruction": "second", "output": "plain answer"}]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["data", "clean", str(source), str(tmp_path / "b.jsonl"), "--no-refusals"]) == 0
    assert main(["data", "clean", str(tmp_path / "b.jsonl"), str(tmp_path / "c.jsonl"), "--no-refusals"]) == 0
    assert (tmp_path / "b.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()
    report = json.loads((tmp_path / "c.report.json").read_text(encoding="utf-8"))
    assert report["sections"]["normalisation"]["changed_examples"] == 0


def test_drafts_rerun_keeps_the_fields_reviewers_added(tmp_path, capsys):
    instructions = tmp_path / "instr.jsonl"
    instructions.write_text(json.dumps({"id": "q1", "instruction": "What is 2+2?"}) + "\n", encoding="utf-8")
    review = tmp_path / "review.jsonl"
    record = {"id": "q1", "status": "edited", "instruction": "What is 2+2?", "input": "", "draft": "5",
              "final": "4", "note": "draft was wrong", "reviewer": {"name": "Li", "round": 2}}
    review.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    # every id is in the review file, so no model is loaded (the --model path does not exist)
    assert main(["data", "build", "drafts", str(instructions), "--review", str(review), "--model", "absent"]) == 0
    assert json.loads(review.read_text(encoding="utf-8")) == record


def test_balance_val_out_without_val_ratio_is_an_error(tmp_path, capsys):
    source = tmp_path / "cls.jsonl"
    source.write_text(CLS, encoding="utf-8")
    assert main(["data", "balance", str(source), str(tmp_path / "b.jsonl"), "--method", "oversample",
                 "--val-out", str(tmp_path / "val.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--val-out" in err and "--val-ratio" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.jsonl"]


def test_balance_val_out_naming_out_says_so(tmp_path, capsys):
    source = tmp_path / "cls.jsonl"
    source.write_text(CLS, encoding="utf-8")
    out = str(tmp_path / "b.jsonl")
    assert main(["data", "balance", str(source), out, "--val-ratio", "0.5", "--val-out", out]) == 2
    err = capsys.readouterr().err
    assert "OUT" in err and "input" not in err


@pytest.mark.parametrize("command", [
    ["data", "clean", "{src}", "{file}/out.jsonl"],
    ["data", "build", "convert", "{src}", "{file}/sub/out.jsonl", "--to", "messages"],
    ["data", "balance", "{src}", "b.jsonl", "--val-ratio", "0.5", "--val-out", "{file}/v.jsonl"],
    ["data", "stats", "{src}", "--out", "{file}/stats"],
    ["data", "build", "validate", "{src}", "--report", "{file}/report"],
])
def test_an_output_inside_a_file_is_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cls.jsonl").write_text(CLS, encoding="utf-8")
    (tmp_path / "afile").write_text("not a directory", encoding="utf-8")
    argv = [part.format(src="cls.jsonl", file="afile") for part in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "afile is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cls.jsonl"]


@pytest.mark.parametrize("command", [
    ["data", "build", "drafts", "instr.jsonl", "--review", "r.jsonl", "--model", "notamodel"],
    ["data", "balance", "cls.jsonl", "v.npz", "--method", "smote", "--encoder", "notamodel",
     "--val-ratio", "0.5", "--val-out", "val.jsonl"],
])
def test_a_directory_that_is_not_a_model_is_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cls.jsonl").write_text(CLS, encoding="utf-8")
    (tmp_path / "instr.jsonl").write_text(json.dumps({"instruction": "hi"}) + "\n", encoding="utf-8")
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "notes.txt").write_text("x", encoding="utf-8")
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    option = "--model" if "drafts" in command else "--encoder"
    assert len(err.splitlines()) == 1 and f"{option} notamodel" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.jsonl", "instr.jsonl", "notamodel"]
