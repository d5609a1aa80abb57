"""Second acceptance walk of `sftlab data ...`: cls texts with conflicting labels (clean, stats, validate), --eval
files that are the input or the output, eval files in another format, and errors that name the data commands'
own options (--format, --columns, --stage) rather than the run config's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.data.formats import read_rows, to_canonical
from sftlab.datawork.dedup import DedupOptions, dedup_examples
from sftlab.errors import SftlabError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sft(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


CONFLICTS = [{"text": "Where is my card?", "label": "card"},      # 1
             {"text": "where is my card", "label": "card"},       # 2 same label: an exact duplicate of 1
             {"text": "Where is my card?!", "label": "refund"},   # 3 conflict: 'card' has 2 copies, so 3 goes
             {"text": "Cancel it", "label": "cancel"},            # 4 conflict with 5, a tie: both go
             {"text": "cancel it.", "label": "refund"},           # 5
             {"text": "Thanks a lot", "label": "other"}]          # 6


# ------------------------------------------------------------------------------------------------ label conflicts


def test_clean_reports_label_conflicts_and_keeps_the_majority_label(tmp_path, capsys):
    data = write_jsonl(tmp_path / "cls.jsonl", CONFLICTS)
    out = tmp_path / "clean.jsonl"
    assert main(["data", "clean", str(data), str(out), "--no-near"]) == 0
    assert [(r["text"], r["label"]) for r in read_jsonl(out)] == [("Where is my card?", "card"), ("Thanks a lot", "other")]
    report = json.loads((tmp_path / "clean.report.json").read_text(encoding="utf-8"))
    assert report["removed"]["exact duplicate"]["count"] == 1
    conflict = report["removed"]["label conflict"]
    assert conflict["count"] == 3 and [e["src"] for e in conflict["examples"]] == [f"{data}:{n}" for n in (3, 4, 5)]
    assert conflict["examples"][0]["why"] == ("label conflict: label 'refund', but the same text has labels 'card' 2x, "
                                              f"'refund' 1x; kept the majority 'card' ({data}:1)")
    assert conflict["examples"][1]["why"] == ("label conflict: the same text has labels 'cancel' 1x, 'refund' 1x; "
                                              "a tie, so every copy is removed")
    assert "removed      3  label conflict" in capsys.readouterr().out


def test_label_conflicts_are_resolved_with_no_exact_and_near_duplicates_need_the_same_label(tmp_path):
    examples = [dict(row, _src=f"f:{n}") for n, row in enumerate(CONFLICTS, 1)]
    kept, removed = dedup_examples(examples, DedupOptions(exact=False, near_threshold=None))
    assert [e["_src"] for e in kept] == ["f:1", "f:2", "f:6"]  # --no-exact keeps same-label copies, not conflicts
    assert [why.split(":")[0] for _, why in removed] == ["label conflict"] * 3
    long = "The card I ordered on Monday arrived today in perfect condition, thank you very much for the quick help"
    pair = [{"text": long, "label": "card_arrived", "_src": "p:1"},
            {"text": long.replace("arrived today", "has not arrived today"), "label": "card_missing", "_src": "p:2"}]
    assert dedup_examples(pair, DedupOptions(near_threshold=0.6))[1] == []  # a minimal pair: both kept
    pair[1]["label"] = "card_arrived"
    assert dedup_examples(pair, DedupOptions(near_threshold=0.6))[1][0][1].startswith("near duplicate of p:1")


def test_sft_answers_to_one_prompt_are_no_conflict_but_can_be_near_duplicates():
    prompt = ("Summarise the following policy for a new employee in one sentence: travel costs are paid back within "
              "thirty days when the receipts are uploaded to the finance portal together with the approval of the line "
              "manager and the project code.")
    answers = [{"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                "_src": f"a:{n}"} for n, answer in enumerate(["File expenses.", "Keep receipts."], 1)]
    assert dedup_examples(answers, DedupOptions(near_threshold=None))[1] == []  # not exact duplicates, no conflict
    removed = dedup_examples(answers, DedupOptions())[1]  # the long shared prompt makes them near duplicates
    assert [why.split(" (")[0] for _, why in removed] == ["near duplicate of a:1"]
    assert dedup_examples(answers, DedupOptions(near_threshold=0.99))[1] == []


def test_stats_and_validate_list_label_conflicts(tmp_path, capsys):
    data = write_jsonl(tmp_path / "cls.jsonl", CONFLICTS)
    assert main(["data", "stats", str(data), "--no-near"]) == 0
    duplicates = json.loads(capsys.readouterr().out)["duplicates"]
    assert (duplicates["exact"], duplicates["near"], duplicates["label_conflicts"]) == (1, 0, 3)
    assert main(["data", "build", "validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"{data}:2: duplicate: same content as {data}:1" in out
    assert f"{data}:3: label-conflict: label 'refund', but {data}:1 has the same text with label 'card'" in out
    assert f"{data}:5: label-conflict: label 'refund', but {data}:4 has the same text with label 'cancel'" in out
    assert f"{data}:6" not in out and "6 rows, 3 problem(s)" in out


# ------------------------------------------------------------------------------------------------ --eval files


def test_eval_file_that_is_the_input_or_the_output_is_an_error(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [sft("What is 2+2?", "4"), sft("Capital of France?", "Paris")])
    out = tmp_path / "out.jsonl"
    assert main(["data", "clean", str(data), str(out), "--eval", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --eval {data}: is the input; an evaluation set must be another file") and not out.exists()
    out.write_text(data.read_text(encoding="utf-8"), encoding="utf-8")  # an earlier run's output
    assert main(["data", "clean", str(data), str(out), "--eval", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --eval {out}: is the output")
    assert main(["data", "augment", str(data), str(tmp_path / "aug.jsonl"), "--eval", str(data)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --eval {data}: is the input")


def test_eval_files_in_another_format_with_eval_format_and_eval_columns(tmp_path, capsys):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"instruction": "What is 2+2?", "output": "4"},
                                 {"instruction": "Capital of France?", "output": "Paris"}]), encoding="utf-8")
    val = write_jsonl(tmp_path / "val.jsonl", [{"conversations": [{"from": "human", "value": "What is 2+2?"},
                                                                  {"from": "gpt", "value": "4"}]}])
    out = tmp_path / "out.jsonl"
    # by default --eval files are read with the input's --format, and the error says so
    assert main(["data", "clean", str(train), str(out), "--format", "alpaca", "--eval", str(val)]) == 2
    err = capsys.readouterr().err
    assert f"error: {val}:1: missing required field 'instruction'" in err and "unless --eval-format" in err
    assert main(["data", "clean", str(train), str(out), "--format", "alpaca", "--eval", str(val),
                 "--eval-format", "sharegpt"]) == 0
    assert [r["messages"][0]["content"] for r in read_jsonl(out)] == ["Capital of France?"]  # the leak is gone
    table = tmp_path / "t.csv"
    table.write_text("sentence,category\nhello there,greet\nbye now,leave\n", encoding="utf-8")
    val_cls = write_jsonl(tmp_path / "val_cls.jsonl", [{"text": "bye now", "label": "leave"}])
    base = ["data", "clean", str(table), str(out), "--columns", "text=sentence", "label=category", "--eval", str(val_cls)]
    assert main(base) == 2
    assert "column 'sentence' (--eval-columns text=sentence) not found" in capsys.readouterr().err
    assert main(base + ["--eval-columns"]) == 0  # no value: the eval file has the canonical names
    assert [r["text"] for r in read_jsonl(out)] == ["hello there"]


# ------------------------------------------------------------------------------------------------ option names


def test_data_command_errors_name_their_options_not_config_keys(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("sentence,intent\nhello,greet\n", encoding="utf-8")
    assert main(["data", "clean", str(table), str(tmp_path / "o.jsonl"), "--columns", "text=sentence", "label=category"]) == 2
    err = capsys.readouterr().err
    assert f"error: {table}:2: column 'category' (--columns label=category) not found" in err and "data.columns" not in err
    assert main(["data", "stats", str(table)]) == 2
    err = capsys.readouterr().err
    assert "set --format (alpaca," in err and "and --columns" in err and "data.format" not in err
    assert main(["data", "stats", str(table), "--format", "alpacca"]) == 2
    assert capsys.readouterr().err.startswith("error: --format: unknown data format 'alpacca'")
    chat = write_jsonl(tmp_path / "chat.jsonl", [sft("hi", "there")])
    assert main(["data", "balance", str(chat), str(tmp_path / "b.jsonl"), "--stage", "cls"]) == 2
    err = capsys.readouterr().err
    assert "but --stage is 'cls'" in err and "check --format / --columns" in err and "train.stage" not in err
    assert main(["data", "build", "validate", str(table), "--columns", "text=sentence", "label=category"]) == 1
    assert "column 'category' (--columns label=category) not found" in capsys.readouterr().out
    instructions = write_jsonl(tmp_path / "ins.jsonl", [{"question": "hi"}])
    assert main(["data", "build", "drafts", str(instructions), "--review", str(tmp_path / "r.jsonl"), "--model",
                 str(tmp_path), "--columns", "instruction=prompt"]) == 2
    assert "(--columns instruction=prompt) not found" in capsys.readouterr().err


def test_the_trainers_messages_still_name_config_keys(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("sentence,intent\nhello,greet\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=r"column 'category' \(data\.columns\.label\) not found"):
        to_canonical(read_rows(table), "auto", None, {"label": "category"})
    with pytest.raises(SftlabError, match="set data.format"):
        to_canonical(read_rows(table))
