"""sftlab data build: validate, convert, model drafts with review, knowledge-base pairs; bad input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.datawork.drafts import export_reviewed, read_instructions, read_review, update_review, write_review
from sftlab.datawork.kb import build_pairs, load_templates
from sftlab.datawork.records import load_examples
from sftlab.datawork.validate import validate_file
from sftlab.errors import SftlabError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_validate_reports_every_problem_with_its_line(tmp_path):
    path = write_jsonl(tmp_path / "hand.jsonl", [
        {"id": 1, "instruction": "hi", "output": "hello"},
        {"id": 1, "instruction": "hi", "output": "hello"},                      # 2: duplicate content + duplicate id
        {"id": 2, "instruction": "x", "output": "  "},                          # 3: empty answer
        {"id": 3, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},  # 4: mixed
        {"id": 4, "instruction": "no output"},                                   # 5: missing field
    ])
    problems, rows = validate_file(path)
    found = {(p.src.rsplit(":", 1)[1], p.kind) for p in problems}
    assert rows == 5
    assert found == {("2", "duplicate"), ("2", "duplicate-id"), ("3", "empty"), ("4", "mixed-format"), ("5", "schema")}
    assert [p.message for p in problems if p.kind == "schema"] == ["missing required field 'output'"]


def test_validate_lists_all_broken_lines_and_bad_encoding(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{broken\n{"text": "fine"}\n[1, 2]\n')
    problems, _ = validate_file(path)
    assert [(p.src, p.kind) for p in problems] == [(f"{path}:2", "syntax"), (f"{path}:4", "syntax")]
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    problems, _ = validate_file(latin1)
    assert [(p.src, p.kind) for p in problems] == [(f"{latin1}:2", "encoding")]
    assert main(["data", "build", "validate", str(latin1)]) == 1


def test_convert_round_trip_keeps_canonical_examples(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "翻译", "input": "hello", "output": "你好", "system": "be brief"},
        {"instruction": "q2", "input": "", "output": "a2", "history": [["u1", "a1"]]},
    ])
    original = load_examples(src)
    for fmt, name in (("sharegpt", "b.json"), ("messages", "c.jsonl"), ("alpaca", "d.json")):
        assert main(["data", "build", "convert", str(src), str(tmp_path / name), "--to", fmt]) == 0
        again = load_examples(tmp_path / name)
        assert [e["messages"] for e in again] == [e["messages"] for e in original]
    assert src.read_text(encoding="utf-8").count("\n") == 2  # input untouched
    assert json.loads((tmp_path / "c.report.json").read_text(encoding="utf-8"))["after"] == 2


def test_bad_inputs_name_file_and_line(tmp_path, capsys):
    fake = tmp_path / "fake.json"
    fake.write_text("text,label\nhello,a\n", encoding="utf-8")
    assert main(["data", "build", "convert", str(fake), str(tmp_path / "o.jsonl")]) == 2
    assert str(fake) in capsys.readouterr().err
    missing = write_jsonl(tmp_path / "m.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    with pytest.raises(SftlabError, match=r"m\.jsonl:2: missing required field 'output'"):
        load_examples(missing, "alpaca")
    table = tmp_path / "t.csv"
    table.write_text("text,category\nhi,a\n", encoding="utf-8")
    assert main(["data", "balance", str(table), str(tmp_path / "b.jsonl"), "--columns", "label=intent"]) == 2
    err = capsys.readouterr().err
    assert "t.csv:2" in err and "'intent'" in err
    assert main(["data", "build", "convert", str(table), str(table), "--columns", "label=category"]) == 2
    assert "overwrite the input" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from sftlab.models.tiny import save_tiny

    return str(save_tiny("qwen2", tmp_path_factory.mktemp("lm") / "qwen2", hidden=32, layers=1))


def test_drafts_review_keeps_decisions_and_exports_approved(tmp_path, tiny_lm):
    instructions = write_jsonl(tmp_path / "ins.jsonl", [
        {"id": "a", "instruction": "Say hi"}, {"id": "b", "instruction": "Count", "input": "1 2 3"},
        {"id": "c", "instruction": "Refuse"}])
    review = tmp_path / "review.jsonl"
    args = ["data", "build", "drafts", str(instructions), "--review", str(review), "--model", tiny_lm,
            "--max-new-tokens", "4", "--batch-size", "2"]
    assert main(args) == 0
    records = read_review(review)
    assert [(r["id"], r["status"]) for r in records] == [("a", "draft"), ("b", "draft"), ("c", "draft")]
    assert all(r["draft"] for r in records)
    records[0].update(status="approved")
    records[1].update(status="edited", final="three numbers")
    records[2].update(status="rejected")
    write_review(review, records)
    write_jsonl(instructions, [json.loads(line) for line in instructions.read_text().splitlines()] + [{"id": "d", "instruction": "New"}])
    assert main(args) == 0
    again = read_review(review)
    assert [(r["id"], r["status"]) for r in again] == [("a", "approved"), ("b", "edited"), ("c", "rejected"), ("d", "draft")]
    assert again[0]["draft"] == records[0]["draft"]
    out = tmp_path / "train.jsonl"
    assert main(["data", "build", "export", str(review), str(out)]) == 0
    exported = load_examples(out)
    assert [e["messages"][0]["content"] for e in exported] == ["Say hi", "Count\n1 2 3"]
    assert exported[1]["messages"][1]["content"] == "three numbers"


def test_update_review_generates_only_new_ids(tmp_path):
    calls = []

    def fake_generator(prompts):
        calls.append(list(prompts))
        return [p.upper() for p in prompts]

    instructions = read_instructions(write_jsonl(tmp_path / "i.jsonl", [{"instruction": "x"}, {"instruction": "y"}]))
    records, summary = update_review(instructions, [], fake_generator, batch_size=1)
    assert calls == [["x"], ["y"]] and summary["new_drafts"] == 2
    records, summary = update_review(instructions, records, fake_generator)
    assert len(calls) == 2 and summary["new_drafts"] == 0
    with pytest.raises(SftlabError, match="approved but both"):
        export_reviewed([{"id": "z", "status": "approved", "instruction": "q", "input": "", "draft": "", "final": ""}])


KB = [
    {"id": "P1", "title": "高新技术企业认定管理办法", "issuer": "科技部", "category": "科技创新", "date": "2016-01-29",
     "eligibility": "注册满一年的居民企业", "benefits": "企业所得税减按15%征收"},
    {"id": "P2", "title": "小微企业普惠性税收减免政策", "issuer": "财政部", "category": "税收优惠", "date": "2019-01-17",
     "eligibility": "年应纳税所得额不超过300万元", "benefits": "增值税起征点提高到月销售额10万元"},
    {"id": "P3", "title": "稳岗返还政策", "issuer": "人力资源社会保障部", "category": "就业", "date": "2020-02-20",
     "eligibility": "不裁员或少裁员的参保企业", "benefits": "返还上年度失业保险费的50%"},
]


def test_kb_pairs_are_seeded_and_use_only_their_own_record(tmp_path):
    templates = load_templates(None, "zh")
    pairs, report = build_pairs([dict(r, _src=f"kb:{i}") for i, r in enumerate(KB)], templates, per_record=3, seed=7)
    assert report["pairs"] == 9 and len(pairs) == 9
    again, _ = build_pairs(list(reversed([dict(r, _src=f"kb:{i}") for i, r in enumerate(KB)])), templates, per_record=3, seed=7)
    assert sorted(json.dumps(p, ensure_ascii=False) for p in again) == sorted(json.dumps(p, ensure_ascii=False) for p in pairs)
    other_values = {r["id"]: {v for k, v in r.items() if k != "id"} for r in KB}
    for pair in pairs:
        own = KB[int(pair["_src"].split(":")[1])]
        text = pair["messages"][0]["content"] + pair["messages"][1]["content"]
        assert own["title"] in text
        for rid, values in other_values.items():
            if rid != own["id"]:
                assert not any(v in text for v in values if v not in own.values() and len(v) >= 4)


def test_kb_drops_a_template_that_leaks_another_records_fact(tmp_path):
    leaky = tmp_path / "t.yaml"
    leaky.write_text("templates:\n  - id: bad\n    lang: zh\n    questions: ['{title}是什么？']\n"
                     "    answer: '{title}与稳岗返还政策有关。'\n", encoding="utf-8")
    pairs, report = build_pairs(KB, load_templates(leaky, "zh"), per_record=1)
    assert len(pairs) == 1 and pairs[0]["messages"][0]["content"] == "稳岗返还政策是什么？"
    assert [d["foreign_values"] for d in report["leaks_dropped"]] == [["稳岗返还政策"], ["稳岗返还政策"]]


def test_kb_cli_english_and_same_output_twice(tmp_path):
    records = tmp_path / "kb.csv"
    records.write_text("id,title,issuer,category,date\nA,Export Credit Scheme,Trade Office,trade,2024-05-01\n"
                       "B,Green Loan Programme,Central Bank,finance,2023-11-12\n", encoding="utf-8")
    outs = []
    for name in ("one.jsonl", "two.jsonl"):
        assert main(["data", "build", "kb", str(records), str(tmp_path / name), "--lang", "en", "--per-record", "2", "--seed", "3"]) == 0
        outs.append((tmp_path / name).read_text(encoding="utf-8"))
    assert outs[0] == outs[1] and outs[0].count("\n") == 4
    report = json.loads((tmp_path / "one.report.json").read_text(encoding="utf-8"))
    assert report["before"] == 2 and report["after"] == 4


def test_example_knowledge_base_builds():
    root = Path(__file__).resolve().parents[1] / "examples" / "kb"
    from sftlab.data.formats import read_rows

    pairs, report = build_pairs(read_rows(root / "policies.jsonl"), load_templates(None, "zh"), per_record=3)
    assert report["records"] == 6 and len(pairs) == 18 and not report["leaks_dropped"]


def test_paraphrase_augmentation_with_a_local_model(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello there", "label": "x"}, {"text": "good day", "label": "y"}])
    out = tmp_path / "aug.jsonl"
    args = ["data", "augment", str(data), str(out), "--methods", "paraphrase", "--model", tiny_lm, "--max-new-tokens", "6"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[:2] == [{"text": "hello there", "label": "x"}, {"text": "good day", "label": "y"}]
    assert [r["augmented"]["method"] for r in rows[2:]] == ["paraphrase"] * (len(rows) - 2)
    assert [r["label"] for r in rows[2:]] == ["x", "y"][: len(rows) - 2]
    first = out.read_text(encoding="utf-8")
    assert main(args) == 0 and out.read_text(encoding="utf-8") == first


def test_kb_pick_draws_fields_at_random_from_the_record(tmp_path):
    spec = tmp_path / "pick.yaml"
    spec.write_text(
        "templates:\n  - id: facts\n    lang: en\n    pick: {from: [issuer, date, category], count: 2, join: ' | '}\n"
        "    names: {issuer: issuer, date: date, category: category}\n"
        "    questions: ['{picked_names} of {title}?']\n    answer: '{picked_facts}'\n", encoding="utf-8")
    record = {"id": "A", "title": "Export Credit", "issuer": "Trade Office", "category": "trade", "date": "2024-05-01"}
    answers = set()
    for seed in range(12):
        pairs, _ = build_pairs([record], load_templates(spec, "en"), per_record=1, seed=seed)
        facts = pairs[0]["messages"][1]["content"].split(" | ")
        assert len(facts) == 2
        assert set(facts) <= {"issuer: Trade Office", "date: 2024-05-01", "category: trade"}
        answers.add(frozenset(facts))
    assert len(answers) == 3  # every pair of the three fields is drawn for some seed
    sparse = {"id": "B", "title": "Only Issuer", "issuer": "X Office"}
    assert build_pairs([sparse], load_templates(spec, "en"), per_record=1)[1]["no_template"] == ["0"]
    spec.write_text("templates:\n  - id: bad\n    questions: ['{picked_names}?']\n    answer: a\n    pick: {from: [x], count: 2}\n",
                    encoding="utf-8")
    with pytest.raises(SftlabError, match=r"templates\[0\]\.pick\.count"):
        load_templates(spec, "en")
