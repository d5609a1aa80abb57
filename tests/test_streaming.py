"""data.streaming: pt from a lazily read, buffer-shuffled corpus; exact resume from a stored position; config checks."""

import json
from pathlib import Path

import pytest

from sftlab.config import load_config
from sftlab.data.streaming import StreamPosition, TokenStream, stream_files
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer
from test_train_loop import tiny_run, train

DOCS = [" ".join(f"w{i}x{j}" for j in range(i % 7 + 1)) for i in range(23)]


def corpus(tmp_path: Path, docs: list[str] = DOCS) -> Path:
    """`docs` as a JSON-lines corpus of {"text"} records in `tmp_path`."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in docs), encoding="utf-8")
    return path


def test_unshuffled_concat_blocks_equal_the_in_memory_pt_blocks(tmp_path):
    from sftlab.config.schema import DataConfig, TrainConfig
    from sftlab.data.tokenize import tokenize_examples

    tokenizer = make_tokenizer()
    stream = TokenStream([str(corpus(tmp_path))], "json", "text", tokenizer, 16, "concat", shuffle_buffer=1)
    rows = []
    for row, position in stream.rows(StreamPosition()):
        assert row["labels"] == row["input_ids"]  # pt: every token is supervised
        rows.append(row["input_ids"])
        if position.epoch == 1:
            break
    data_cfg = DataConfig(train="x", cache_dir=str(tmp_path / "cache"))
    expected, _ = tokenize_examples([{"text": t} for t in DOCS], tokenizer, data_cfg,
                                    TrainConfig(stage="pt", max_length=16))
    assert rows == expected["input_ids"]


@pytest.mark.parametrize("mode", ["concat", "document"])
def test_restarting_from_any_position_continues_exactly(tmp_path, mode):
    stream = TokenStream([str(corpus(tmp_path))], "json", "text", make_tokenizer(), 32, mode, shuffle_buffer=5)
    straight = []
    for row, position in stream.rows(StreamPosition(seed=3)):  # two whole epochs
        straight.append((row, position))
        if position.epoch == 2:
            break
    first_epoch = [row["input_ids"] for row, p in straight if p.epoch == 0]
    second_epoch = [row["input_ids"] for row, p in straight[len(first_epoch) + 1:]]
    assert first_epoch[:3] != second_epoch[:3]  # each epoch is shuffled afresh
    total = len(straight)
    for k in sorted({0, 3, total // 3, total // 2, total - 3}):
        again = stream.rows(straight[k][1])
        assert [next(again)[0] for _ in range(total - k - 1)] == [row for row, _ in straight[k + 1:]], k


def test_streaming_pt_run_resumes_with_the_same_losses(tmp_path):
    from sftlab.train import TrainingInterrupted

    def settings(name):
        return tiny_run(tmp_path, name=name, data={"train": str(corpus(tmp_path)), "streaming": True,
                                                   "shuffle_buffer": 4, "validation": str(corpus(tmp_path)),
                                                   "max_samples": 20},
                        train={"stage": "pt", "max_steps": 4, "batch_size": 2, "grad_accum": 2, "max_length": 16,
                               "save_every_n_steps": 1},
                        eval={"every_n_steps": 2}, output={"dir": str(tmp_path / name), "tensorboard": False})

    straight = train(settings("a"))
    assert len(straight.losses) == 4 and "eval_loss" in straight.metrics

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(settings("b"), callbacks=[stop_at_2])
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-2" / "sftlab_state.json").read_text())
    assert set(state["position"]) == {"epoch", "document", "offset", "seed"}
    resumed = train(settings("b"), resume=True)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["train.stage=sft", "train.max_steps=3"], "data.streaming reads pt corpora; train.stage is sft"),
    (["train.stage=pt"], "data.streaming needs train.max_steps"),
    (["train.stage=pt", "train.max_steps=3", "data.val_ratio=0.1"], "set data.validation to a file"),
    (["train.stage=pt", "train.max_steps=3", "data.packing=true"], "set data.packing=false"),
    (["train.stage=pt", "train.max_steps=3", "strategy.kind=auto"], "strategy.kind=auto"),
])
def test_settings_a_stream_cannot_honour_fail_at_config_time(overrides, message):
    with pytest.raises(SftlabError, match=message):
        load_config(None, ["data.streaming=true", *overrides], base={"model": {"path": "m"}, "data": {"train": "t.jsonl"}})


def test_stream_files_need_one_local_file_type(tmp_path):
    from sftlab.config.schema import DataConfig

    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.txt").write_text("x\n")
    assert stream_files(DataConfig(train="a.jsonl"), tmp_path) == ([str(tmp_path / "a.jsonl")], "json")
    with pytest.raises(SftlabError, match="one file type"):
        stream_files(DataConfig(train=["a.jsonl", "b.txt"]), tmp_path)
    with pytest.raises(SftlabError, match="no such file"):
        stream_files(DataConfig(train="missing.jsonl"), tmp_path)


def test_missing_text_column_names_the_setting(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "x"}\n')
    stream = TokenStream([str(path)], "json", "text", make_tokenizer(), 8, "concat", 2)
    with pytest.raises(SftlabError, match="set data.columns.text"):
        next(stream.rows(StreamPosition()))


def test_max_samples_keeps_the_same_first_documents_every_epoch(tmp_path):
    tokenizer = make_tokenizer()
    stream = TokenStream([str(corpus(tmp_path))], "json", "text", tokenizer, 64, "document", shuffle_buffer=8,
                         max_samples=5)
    epochs: dict[int, list] = {}
    for row, position in stream.rows(StreamPosition(seed=1)):
        epochs.setdefault(position.epoch, []).append(tuple(row["input_ids"]))  # document mode: epoch of the row
        if len(epochs) > 2:
            break
    first_five = sorted(tuple(stream.encode(text)) for text in DOCS[:5])
    assert sorted(epochs[0]) == sorted(epochs[1]) == first_five
