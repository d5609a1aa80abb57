"""Second acceptance walk of `sftlab data ...`: fields the formats do not read (ids, metadata) kept through clean,
convert, balance, augment and export, with a note naming the ones an output cannot hold; drafts cut off in the
middle of a character."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def chat(user: str, assistant: str, **extra) -> dict:
    return {**extra, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


# ------------------------------------------------------------------------------------------------ extra fields


def test_clean_keeps_ids_and_metadata_and_reads_back(tmp_path, capsys):
    rows = [chat("What is 2+2?", "4", id="q1", meta={"source": "forum", "tags": ["math"]}),
            chat("what is 2 + 2", "4", id="q2"),  # an exact duplicate: removed with its id
            chat("Capital of France?", "Paris", id=7)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["data", "clean", str(data), str(out), "--no-near"]) == 0
    assert "note:" not in capsys.readouterr().out
    written = read_jsonl(out)
    assert written == [rows[0], rows[2]]  # every field of the kept rows, unchanged
    again = tmp_path / "again.jsonl"
    assert main(["data", "clean", str(out), str(again), "--to", "alpaca"]) == 0
    assert [(r["id"], r.get("meta"), r["instruction"]) for r in read_jsonl(again)] == [
        ("q1", {"source": "forum", "tags": ["math"]}, "What is 2+2?"), (7, None, "Capital of France?")]


def test_redact_pii_reaches_the_kept_fields(tmp_path, capsys):
    rows = [chat("Mail me", "ok", id="u1", contact={"mail": "ann@corp.com", "phones": ["138 1234 5678"]}, age=41)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl"), "--redact-pii"]) == 0
    assert "other fields 2)" in capsys.readouterr().out
    written = read_jsonl(tmp_path / "out.jsonl")[0]
    assert (written["id"], written["contact"], written["age"]) == ("u1", {"mail": "[EMAIL]", "phones": ["[PHONE]"]}, 41)
    report = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))["sections"]["pii_redaction"]
    assert report["redacted_in"] == {"contents": 0, "tool_arguments": 0, "tool_results": 0, "other_fields": 2}


def test_convert_keeps_ids_and_names_the_fields_it_must_drop(tmp_path, capsys):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"id": 1, "instruction": "Say hi", "output": "Hi", "lang": "en"}]), encoding="utf-8")
    messages, back = tmp_path / "m.jsonl", tmp_path / "back.json"
    assert main(["data", "build", "convert", str(alpaca), str(messages)]) == 0
    assert read_jsonl(messages) == [chat("Say hi", "Hi", id=1, lang="en")]
    assert main(["data", "build", "convert", str(messages), str(back), "--to", "alpaca"]) == 0
    assert json.loads(back.read_text(encoding="utf-8")) == [{"id": 1, "lang": "en", "instruction": "Say hi", "input": "",
                                                             "output": "Hi"}]
    capsys.readouterr()
    # a `system` column is not read by the messages format; written as sharegpt it would become a system turn
    odd = write_jsonl(tmp_path / "odd.jsonl", [chat("Say hi", "Hi", id=3, system="Be rude.")])
    assert main(["data", "build", "convert", str(odd), str(tmp_path / "s.jsonl"), "--to", "sharegpt"]) == 0
    assert "note: dropped field(s) system of the input rows" in capsys.readouterr().out
    assert read_jsonl(tmp_path / "s.jsonl")[0] == {"id": 3, "conversations": [{"from": "human", "value": "Say hi"},
                                                                             {"from": "gpt", "value": "Hi"}]}
    assert list(read_jsonl(tmp_path / "s.jsonl")[0]) == ["id", "conversations"]  # kept fields first


def test_csv_output_notes_the_fields_it_drops(tmp_path, capsys):
    data = write_jsonl(tmp_path / "cls.jsonl", [{"id": 1, "text": "great", "label": "pos", "rater": "a"},
                                                {"id": 2, "text": "awful", "label": "neg", "rater": "b"}])
    assert main(["data", "clean", str(data), str(tmp_path / "o.csv"), "--to", "csv"]) == 0
    assert "note: dropped field(s) id, rater of the input rows: --to csv writes text and label only" in capsys.readouterr().out


def test_balance_and_augment_keep_ids(tmp_path):
    rows = [{"id": f"r{i}", "text": f"great product number {i}", "label": "pos", "split": "a"} for i in range(3)]
    rows.append({"id": "r3", "text": "awful thing", "label": "neg", "split": "a"})
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    out = tmp_path / "bal.jsonl"
    assert main(["data", "balance", str(data), str(out), "--method", "oversample"]) == 0
    balanced = read_jsonl(out)
    assert len(balanced) == 6 and all(r in rows for r in balanced)  # oversampled copies are the same records, ids too
    aug = tmp_path / "aug.jsonl"
    assert main(["data", "augment", str(data), str(aug), "--methods", "swap", "--lang", "en"]) == 0
    written = read_jsonl(aug)
    assert written[:4] == rows
    copies = written[4:]
    assert copies and all("id" not in r and r["split"] == "a" for r in copies)  # ids stay unique
    assert [r["augmented"]["source_id"] for r in copies] == [f"r{i}" for i in range(len(copies))]
    assert copies[0]["augmented"] == {"method": "swap", "source": f"{data}:1", "source_id": "r0"}


def test_export_writes_the_review_id(tmp_path):
    review = write_jsonl(tmp_path / "review.jsonl", [
        {"id": "a", "status": "approved", "instruction": "Say hi", "input": "", "draft": "Hi", "final": ""},
        {"id": "b", "status": "rejected", "instruction": "x", "input": "", "draft": "y", "final": ""}])
    assert main(["data", "build", "export", str(review), str(tmp_path / "train.jsonl")]) == 0
    assert read_jsonl(tmp_path / "train.jsonl") == [chat("Say hi", "Hi", id="a")]


def test_validate_lists_lone_surrogates_of_a_json_file_and_checks_the_rest(tmp_path, capsys):
    # the reader refuses such rows for every other command; validate reads them to list every problem
    data = tmp_path / "s.json"
    data.write_text('[{"text": "smile \\ud83d", "label": "a"},\n {"text": "", "label": "b"}]', encoding="utf-8")
    assert main(["data", "build", "validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"{data}:1[#0]: encoding: lone UTF-16 surrogate \\ud83d in text" in out
    assert f"{data}:2[#1]: schema: field 'text' is empty" in out and "unreadable" not in out


# ------------------------------------------------------------------------------------------------ drafts


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from sftlab.models.tiny import save_tiny

    return str(save_tiny("qwen2", tmp_path_factory.mktemp("lm") / "qwen2", hidden=32, layers=1))


def test_drafts_cut_inside_a_character_lose_the_replacement_character(tmp_path, tiny_lm, monkeypatch):
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    answer = tokenizer("Hi 😀", add_special_tokens=False)["input_ids"]  # the emoji is four byte tokens
    assert tokenizer.decode(answer[:5]) == "Hi \ufffd"

    def generate(self, input_ids, max_new_tokens, **kwargs):  # the model writes the answer until cut off
        new = torch.tensor([(answer + [tokenizer.eos_token_id])[:max_new_tokens]] * input_ids.shape[0])
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(Qwen2ForCausalLM, "generate", generate)
    instructions = write_jsonl(tmp_path / "ins.jsonl", [{"id": "a", "instruction": "Greet"}])
    drafts = {}
    for limit in (5, 8):
        review = tmp_path / f"review{limit}.jsonl"
        assert main(["data", "build", "drafts", str(instructions), "--review", str(review), "--model", tiny_lm,
                     "--max-new-tokens", str(limit)]) == 0
        drafts[limit] = read_jsonl(review)[0]["draft"]
    assert drafts == {5: "Hi", 8: "Hi 😀"}  # cut inside the emoji: no U+FFFD; finished: the whole emoji
