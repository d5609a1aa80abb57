"""Outputs of `sftlab data ...` found unsafe in an acceptance walk: a second output (validation split, mapping,
stats directory, report) that could replace an input, data written in a format its file extension does not
read back, reports of two outputs that overwrote each other, option values that silently removed everything,
and tracebacks for unreadable option files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.datawork.records import load_examples
from sftlab.datawork.report import report_stem

CLS_CSV = "sentence,category\nI love it,pos\nI hate it,neg\nGreat product,pos\nTerrible,neg\nok fine,pos\nawesome,pos\n"


def sft_line(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]},
                      ensure_ascii=False) + "\n"


@pytest.fixture
def chat(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text(sft_line("中国的首都是哪里？", "中国的首都是北京。") + sft_line("What is 2+2?", "It is 4."), encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_balance_val_out_never_replaces_the_input(tmp_path, capsys):
    table = tmp_path / "cls.csv"
    table.write_text(CLS_CSV, encoding="utf-8")
    args = ["data", "balance", str(table), str(tmp_path / "b.jsonl"), "--columns", "text=sentence", "label=category",
            "--val-ratio", "0.3", "--val-out"]
    assert main(args + [str(table)]) == 2
    assert "--val-out" in capsys.readouterr().err and table.read_text(encoding="utf-8") == CLS_CSV
    assert main(args + [str(tmp_path / "b.jsonl")]) == 2
    assert "--val-out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.csv"]


def test_balance_writes_nothing_when_smote_lacks_its_encoder(tmp_path):
    table = tmp_path / "cls.csv"
    table.write_text(CLS_CSV, encoding="utf-8")
    assert main(["data", "balance", str(table), str(tmp_path / "b.npz"), "--columns", "text=sentence", "label=category",
                 "--method", "smote", "--val-ratio", "0.3", "--val-out", str(tmp_path / "val.jsonl")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.csv"]


def test_stats_out_never_replaces_a_directory_holding_the_input(tmp_path, chat, capsys):
    before = snapshot(tmp_path)
    assert main(["data", "stats", str(chat), "--out", str(tmp_path), "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err and snapshot(tmp_path) == before
    run = tmp_path / "runs" / "run.yaml"
    run.parent.mkdir()
    run.write_text("model: {path: nowhere}\n", encoding="utf-8")
    assert main(["data", "stats", str(chat), "--out", str(run.parent), "--overwrite", "--config", str(run)]) == 2
    assert "holds the input" in capsys.readouterr().err and run.is_file()
    assert main(["data", "stats", str(chat), "--out", str(tmp_path / "stats")]) == 0
    assert (tmp_path / "stats" / "stats.json").is_file()


def test_features_mapping_out_never_replaces_the_spec_or_the_output(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("id,revenue,region\n1,100,north\n2,,south\n", encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text("keep: [id]\nnumeric: [revenue]\ncategorical: [region]\n", encoding="utf-8")
    before = snapshot(tmp_path)
    for target in (spec, tmp_path / "f.csv"):
        assert main(["data", "features", str(table), str(tmp_path / "f.csv"), "--spec", str(spec),
                     "--mapping-out", str(target)]) == 2
        assert "--mapping-out" in capsys.readouterr().err and snapshot(tmp_path) == before


def test_features_bad_mapping_files_and_conflicting_options_are_one_line_errors(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("id,revenue\n1,100\n", encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text("keep: [id]\nnumeric: [revenue]\n", encoding="utf-8")
    broken, wrong = tmp_path / "broken.json", tmp_path / "wrong.json"
    broken.write_text("{broken\n", encoding="utf-8")
    wrong.write_text(json.dumps({"spec": {"numeric": ["revenue"]}}), encoding="utf-8")
    out = str(tmp_path / "f.csv")
    assert main(["data", "features", str(table), out, "--mapping", str(broken)]) == 2
    assert f"{broken}:1: not valid JSON" in capsys.readouterr().err
    assert main(["data", "features", str(table), out, "--mapping", str(wrong)]) == 2
    assert f"{wrong}: not a saved feature mapping" in capsys.readouterr().err
    assert main(["data", "features", str(table), out, "--spec", str(spec), "--mapping", str(wrong)]) == 2
    assert "--spec" in capsys.readouterr().err and not Path(out).exists()


@pytest.mark.parametrize("name, to", [("x.parquet", "messages"), ("x.csv", "messages"), ("x.txt", "jsonl"),
                                      ("x.jsonl", "csv"), ("x", "messages")])
def test_output_extension_must_read_back_in_the_written_format(tmp_path, chat, capsys, name, to):
    assert main(["data", "build", "convert", str(chat), str(tmp_path / name), "--to", to]) == 2
    assert "--to" in capsys.readouterr().err and not (tmp_path / name).exists()


def test_outputs_in_every_written_format_read_back(tmp_path, chat):
    for name, to in (("m.jsonl", "messages"), ("m.json", "sharegpt"), ("c.jsonl", "jsonl"), ("c.json", "jsonl")):
        assert main(["data", "build", "convert", str(chat), str(tmp_path / name), "--to", to]) == 0
        assert [e["messages"] for e in load_examples(tmp_path / name)] == [e["messages"] for e in load_examples(chat)]


def test_each_output_has_its_own_report(tmp_path, chat):
    assert report_stem(tmp_path / "train.v1.jsonl") == tmp_path / "train.v1.report"
    assert report_stem(tmp_path / "clean.jsonl") == tmp_path / "clean.report"
    for name in ("train.v1.jsonl", "train.v2.jsonl"):
        assert main(["data", "clean", str(chat), str(tmp_path / name)]) == 0
    assert json.loads((tmp_path / "train.v1.report.json").read_text(encoding="utf-8"))["outputs"] == [str(tmp_path / "train.v1.jsonl")]
    assert (tmp_path / "train.v2.report.md").is_file()


def test_an_output_whose_report_would_replace_an_input_is_refused(tmp_path, capsys):
    data = tmp_path / "x.report.json"
    data.write_text(json.dumps([{"instruction": "q", "output": "a"}]), encoding="utf-8")
    before = data.read_bytes()
    assert main(["data", "build", "convert", str(data), str(tmp_path / "x.jsonl")]) == 2
    assert "report" in capsys.readouterr().err and data.read_bytes() == before
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("value", ["xx", "fr", "zh,,en"])
def test_clean_lang_refuses_languages_the_detector_cannot_find(tmp_path, chat, capsys, value):
    assert main(["data", "clean", str(chat), str(tmp_path / "o.jsonl"), "--lang", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lang") and "zh, ja, ko, en, ru" in err and not (tmp_path / "o.jsonl").exists()


def test_clean_lang_is_case_insensitive(tmp_path, chat):
    assert main(["data", "clean", str(chat), str(tmp_path / "o.jsonl"), "--lang", "ZH"]) == 0
    assert len(load_examples(tmp_path / "o.jsonl")) == 1


@pytest.mark.parametrize("option", ["--refusals", "--synonyms"])
def test_option_files_that_are_not_utf8_are_one_line_errors(tmp_path, chat, capsys, option):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9, coffee\n".encode("latin-1"))
    command = "clean" if option == "--refusals" else "augment"
    assert main(["data", command, str(chat), str(tmp_path / "o.jsonl"), option, str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:1: not valid UTF-8 (byte 0xe9); re-save the file as UTF-8"


@pytest.mark.parametrize("extra", [["--copies", "0"], ["--copies", "-1"], ["--methods", ","]])
def test_augment_refuses_settings_that_would_augment_nothing(tmp_path, chat, capsys, extra):
    assert main(["data", "augment", str(chat), str(tmp_path / "o.jsonl"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {extra[0]}") and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("extra, named", [(["--max-tokens", "0"], "--max-tokens 0"), (["--min-tokens", "-3"], "--min-tokens -3"),
                                          (["--min-tokens", "10", "--max-tokens", "2"], "--min-tokens 10")])
def test_clean_token_limits_that_would_remove_everything_are_refused(tmp_path, chat, capsys, extra, named):
    assert main(["data", "clean", str(chat), str(tmp_path / "o.jsonl"), *extra]) == 2
    assert capsys.readouterr().err.startswith(f"error: {named}") and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("extra, named", [(["--batch-size", "0"], "--batch-size 0"),
                                          (["--max-new-tokens", "0"], "--max-new-tokens 0"),
                                          (["--temperature", "-0.5"], "--temperature -0.5")])
def test_generation_options_are_checked_before_a_model_loads(tmp_path, chat, capsys, extra, named):
    instructions = tmp_path / "instr.jsonl"
    instructions.write_text('{"id": "a", "instruction": "Say hi"}\n', encoding="utf-8")
    review = tmp_path / "review.jsonl"
    missing_model = str(tmp_path / "no-model")
    assert main(["data", "build", "drafts", str(instructions), "--review", str(review), "--model", missing_model, *extra]) == 2
    assert capsys.readouterr().err.startswith(f"error: {named}")
    assert main(["data", "augment", str(chat), str(tmp_path / "a.jsonl"), "--methods", "paraphrase", "--model",
                 missing_model, *extra]) == 2
    assert capsys.readouterr().err.startswith(f"error: {named}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "instr.jsonl"]


@pytest.mark.parametrize("name", ["out", "review.csv"])
def test_drafts_review_must_be_a_json_lines_file(tmp_path, capsys, name):
    instructions = tmp_path / "instr.jsonl"
    instructions.write_text('{"id": "a", "instruction": "Say hi"}\n', encoding="utf-8")
    (tmp_path / "out").mkdir()
    assert main(["data", "build", "drafts", str(instructions), "--review", str(tmp_path / name), "--model",
                 str(tmp_path / "no-model")]) == 2
    assert "--review" in capsys.readouterr().err and not (tmp_path / "review.csv").exists()


def test_augment_never_writes_the_same_copy_twice(tmp_path):
    from sftlab.datawork.augment import RuleAugmenter, augment_examples

    example = {"messages": [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hi"}], "_src": "f:1"}
    new = augment_examples([example], RuleAugmenter({}, rate=0.5, seed=0), ["swap", "delete"], copies=4)
    texts = [m["messages"][0]["content"] for m in new]
    assert sorted(texts) == sorted(set(texts)) and "world hello" in texts  # swap gives one new text however often
    assert all(text != "hello world" for text in texts)


def test_review_files_name_their_file_and_line(tmp_path, capsys):
    review = tmp_path / "review.jsonl"
    review.write_bytes('{"id": "a", "status": "draft", "instruction": "caf\xe9"}\n'.encode("latin-1"))
    assert main(["data", "build", "export", str(review), str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {review}:1: not valid UTF-8 (byte 0xe9); re-save the file as UTF-8"
    review.write_text('{"id": "a", "status": "approved", "instruction": "q", "draft": " ", "final": ""}\n', encoding="utf-8")
    assert main(["data", "build", "export", str(review), str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {review}:1: status approved but both")


def test_refusal_and_prompt_repeat_filters_check_sft_answers_only(tmp_path):
    data = tmp_path / "pt.jsonl"
    data.write_text('{"text": "As an AI language model I cannot help."}\n{"text": "Plain text."}\n', encoding="utf-8")
    assert main(["data", "clean", str(data), str(tmp_path / "o.jsonl")]) == 0
    assert len(load_examples(tmp_path / "o.jsonl")) == 2


def test_kb_list_fields_never_reach_answers_as_python_lists(tmp_path, capsys):
    records = tmp_path / "kb.jsonl"
    records.write_text(json.dumps({"id": 1, "title": "Loan A", "issuer": "City Bank", "category": "finance",
                                   "date": "2024-01-01", "eligibility": "small firms", "benefits": ["low rate", "no fee"]})
                       + "\n" + json.dumps({"id": 2, "title": "Loan B", "issuer": "Town Bank", "tags": ["x"]}) + "\n",
                       encoding="utf-8")
    args = ["data", "build", "kb", str(records), str(tmp_path / "kb_out.jsonl"), "--lang", "en", "--per-record", "9"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {records}:1: field 'benefits' is a JSON list")
    records.write_text(json.dumps({"id": 2, "title": "Loan B", "issuer": "Town Bank", "tags": ["x", "y"]}) + "\n",
                       encoding="utf-8")
    assert main(args) == 0  # a list no template uses is no problem
    answers = [e["messages"][1]["content"] for e in load_examples(tmp_path / "kb_out.jsonl")]
    assert answers and not any("[" in answer for answer in answers)


@pytest.mark.parametrize("ratio", ["0.01", "0.9", "1.5"])
def test_balance_impossible_split_names_the_option(tmp_path, capsys, ratio):
    table = tmp_path / "cls.csv"
    table.write_text(CLS_CSV, encoding="utf-8")
    assert main(["data", "balance", str(table), str(tmp_path / "b.jsonl"), "--columns", "text=sentence", "label=category",
                 "--val-ratio", ratio, "--val-out", str(tmp_path / "v.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --val-ratio {ratio}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.csv"]


@pytest.mark.parametrize("value", ["0", "-5"])
def test_stats_max_length_below_one_is_refused(tmp_path, chat, capsys, value):
    assert main(["data", "stats", str(chat), "--max-length", value]) == 2
    assert capsys.readouterr().err.startswith(f"error: --max-length {value}: ")


@pytest.mark.parametrize("command", [["clean"], ["build", "convert"], ["augment"]])
def test_image_text_rows_keep_their_images_rather_than_being_stripped_of_them(tmp_path, command):
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "cat.png")
    data = tmp_path / "img.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>What is this?"},
                                             {"role": "assistant", "content": "A cat."}], "images": ["cat.png"]}) + "\n",
                    encoding="utf-8")
    assert main(["data", *command, str(data), str(tmp_path / "o.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and all(row["images"] == ["cat.png"] for row in rows)  # more in tests/test_data_images.py


def test_stats_overwrite_replaces_the_whole_directory(tmp_path, chat, capsys):
    out = tmp_path / "stats"
    out.mkdir()
    (out / "old.txt").write_text("stale", encoding="utf-8")
    assert main(["data", "stats", str(chat), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "old.txt").is_file()
    assert main(["data", "stats", str(chat), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "stats.json").is_file()


def test_features_table_must_be_named_csv(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("id,revenue\n1,100\n", encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text("keep: [id]\nnumeric: [revenue]\n", encoding="utf-8")
    assert main(["data", "features", str(table), str(tmp_path / "f.jsonl"), "--spec", str(spec)]) == 2
    assert "OUT.csv" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml", "t.csv"]
