"""`sftlab train` says at the start how many samples tokenisation dropped or cut, per split; nothing when all fit."""

import json

from sftlab.data.preview import drop_lines
from test_train_loop import SFT_ROWS, tiny_run, train, write_jsonl

LONG_ROWS = [{"messages": [{"role": "user", "content": "tell me more " * 60},
                           {"role": "assistant", "content": f"answer {i}"}]} for i in range(3)]


def _data_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("data: ")]


def test_over_long_samples_are_logged_per_split_with_their_counts(tmp_path, capsys):
    val = write_jsonl(tmp_path / "val.jsonl", SFT_ROWS[:3] + LONG_ROWS[:1])
    result = train(tiny_run(tmp_path, rows=SFT_ROWS + LONG_ROWS, data={"validation": str(val)},
                            train={"max_steps": 1, "max_length": 128}))
    assert _data_lines(capsys.readouterr().err) == [
        "data: dropped 3 of 11 train samples longer than train.max_length=128 (data.truncation: drop); "
        "data_stats.json counts them",
        "data: dropped 1 of 4 validation samples longer than train.max_length=128 (data.truncation: drop); "
        "data_stats.json counts them"]
    stats = json.loads((result.out_dir / "data_stats.json").read_text())
    assert stats["train"]["dropped_too_long"] == 3 and stats["validation"]["dropped_too_long"] == 1


def test_cut_samples_are_logged_with_the_left_policy(tmp_path, capsys):
    train(tiny_run(tmp_path, rows=SFT_ROWS + LONG_ROWS, data={"truncation": "left"},
                   train={"max_steps": 1, "max_length": 128}))
    assert _data_lines(capsys.readouterr().err) == [
        "data: cut 3 of 11 train samples from the left to train.max_length=128 (data.truncation: left); "
        "data_stats.json counts them"]


def test_nothing_is_logged_when_every_sample_fits(tmp_path, capsys):
    result = train(tiny_run(tmp_path, train={"max_steps": 1, "max_length": 128}))
    assert _data_lines(capsys.readouterr().err) == []
    assert json.loads((result.out_dir / "data_stats.json").read_text())["train"]["rows"] == len(SFT_ROWS)


def test_drop_lines_join_every_kind_of_change_in_one_line_per_split():
    stats = {"train": {"examples": 50, "dropped_answer_too_long": 2, "cut_left": 5, "dropped_no_supervised": 1},
             "validation": {"examples": 10, "rows": 10, "dropped_too_long": 0}, "stage": "sft"}
    assert drop_lines(stats, 256, "left") == [
        "data: dropped 2 of 50 train samples whose last answer alone is longer than train.max_length=256 "
        "(data.truncation: left), cut 5 from the left to train.max_length=256 (data.truncation: left), dropped 1 "
        "left with no supervised token (they add nothing to the loss); data_stats.json counts them"]
    assert drop_lines({"train": {"examples": 8, "truncated": 3}}, 16, "drop") == [
        "data: truncated 3 of 8 train samples to train.max_length=16; data_stats.json counts them"]
    assert drop_lines({"train": {"examples": 8, "truncated": 3, "truncated_tokens": 1204}}, 512, "drop") == [
        "data: truncated 3 of 8 train samples to train.max_length=512 (1,204 tokens cut); data_stats.json counts them"]
    assert drop_lines({"stage": "pt", "streaming": {"files": []}}, 16, "drop") == []


def test_truncated_documents_are_logged_with_the_tokens_cut(tmp_path, capsys):
    """pt with data.pt_mode: document said how many documents were truncated, not how many tokens that cut."""
    rows = [{"text": "short text"}, {"text": "tell me more " * 60}, {"text": "and more again " * 40}]
    result = train(tiny_run(tmp_path, rows=rows, data={"pt_mode": "document"},
                            train={"stage": "pt", "max_steps": 1, "max_length": 32}))
    stats = json.loads((result.out_dir / "data_stats.json").read_text())["train"]
    assert stats["truncated"] == 2 and stats["truncated_tokens"] > 2 * 32
    assert _data_lines(capsys.readouterr().err) == [
        f"data: truncated 2 of 3 train samples to train.max_length=32 ({stats['truncated_tokens']:,} tokens cut); "
        "data_stats.json counts them"]
