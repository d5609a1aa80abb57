"""data.streaming: documents cut to train.max_length are counted as the in-memory path counts them, across a resume;
a .csv header and its text cells are read as the in-memory reader reads them."""

import json
from pathlib import Path

import pytest

from sftlab.config.schema import DataConfig, TrainConfig
from sftlab.data.readers import read_rows
from sftlab.data.streaming import StreamCounts, StreamPosition, TokenStream, stream_files
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer
from test_streaming import corpus as streamed_corpus
from test_train_loop import tiny_run, train

DOCS = [" ".join(f"w{i}x{j}" for j in range(i % 9 + 1)) for i in range(23)]  # some longer than 16 tokens, some not


def corpus(tmp_path: Path) -> Path:
    return streamed_corpus(tmp_path, DOCS)


def test_one_epoch_counts_equal_the_in_memory_truncation_counts(tmp_path):
    from sftlab.data.tokenize import tokenize_examples

    tokenizer = make_tokenizer()
    stream = TokenStream([str(corpus(tmp_path))], "json", "text", tokenizer, 16, "document", shuffle_buffer=4)
    last = None
    for _, position in stream.rows(StreamPosition(seed=2)):
        if position.epoch == 1:
            break
        last = position
    _, stats = tokenize_examples([{"text": t} for t in DOCS], tokenizer,
                                 DataConfig(train="x", cache_dir=str(tmp_path / "cache"), pt_mode="document"),
                                 TrainConfig(stage="pt", max_length=16))
    assert 0 < stats.truncated < len(DOCS)  # the corpus has documents cut and documents kept whole
    assert last.counts == StreamCounts(len(DOCS), stats.truncated, stats.truncated_tokens)


def test_counts_go_on_from_a_restart_position_and_into_the_next_epoch(tmp_path):
    stream = TokenStream([str(corpus(tmp_path))], "json", "text", make_tokenizer(), 16, "document", shuffle_buffer=5)
    straight = []
    for row, position in stream.rows(StreamPosition(seed=3)):
        straight.append(position)
        if position.epoch == 2:
            break
    assert straight[-1].counts.documents == 2 * len(DOCS) + 1  # a document trained in two epochs counts twice
    for k in (0, 7, len(DOCS) - 1, len(DOCS) + 4):
        restart = StreamPosition(**straight[k].to_dict(), counts=StreamCounts.from_dict(straight[k].counts.to_dict()))
        again = stream.rows(restart)
        assert [next(again)[1].counts for _ in range(len(straight) - k - 1)] == [p.counts for p in straight[k + 1:]]


def settings(tmp_path: Path, name: str, mode: str = "document") -> dict:
    return tiny_run(tmp_path, name=name, data={"train": str(corpus(tmp_path)), "streaming": True, "shuffle_buffer": 4,
                                               "pt_mode": mode},
                    train={"stage": "pt", "max_steps": 4, "batch_size": 2, "grad_accum": 2, "max_length": 16,
                           "save_every_n_steps": 1},
                    output={"dir": str(tmp_path / name), "tensorboard": False})


def stop_at_2(step, loss):
    if step == 2:
        raise KeyboardInterrupt


def test_a_resumed_stream_reports_the_totals_of_an_uninterrupted_one(tmp_path, capsys):
    from sftlab.train import TrainingInterrupted

    straight = train(settings(tmp_path, "a"))
    counts = {key: straight.metrics[key] for key in ("streamed_documents", "truncated", "truncated_tokens")}
    assert counts["streamed_documents"] == 4 * 2 * 2 and 0 < counts["truncated"] < 16 and counts["truncated_tokens"]
    line = (f"data: truncated {counts['truncated']} of 16 streamed train documents to train.max_length=16 "
            f"({counts['truncated_tokens']} tokens cut); metrics.json counts them")
    assert line in capsys.readouterr().err
    with pytest.raises(TrainingInterrupted):
        train(settings(tmp_path, "b"), callbacks=[stop_at_2])
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-2" / "sftlab_state.json").read_text())
    assert state["stream_counts"]["documents"] == 8
    capsys.readouterr()
    resumed = train(settings(tmp_path, "b"), resume=True)
    assert {key: resumed.metrics[key] for key in counts} == counts
    assert line in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["truncated"] == counts["truncated"]
    card = (tmp_path / "b" / "model" / "README.md").read_text()
    assert f"| truncated_tokens | {counts['truncated_tokens']} |" in card


def test_a_checkpoint_without_counts_resumes_with_a_note(tmp_path, capsys):
    from sftlab.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(settings(tmp_path, "old"), callbacks=[stop_at_2])
    for state_file in (tmp_path / "old" / "checkpoints").glob("step-*/sftlab_state.json"):  # as written before counts
        state = json.loads(state_file.read_text())
        del state["stream_counts"]
        state_file.write_text(json.dumps(state))
    resumed = train(settings(tmp_path, "old"), resume=True)
    assert "has no stream_counts; the truncated-document counts at the end cover the steps after 2 only" in \
        capsys.readouterr().err
    assert resumed.metrics["streamed_documents"] == 8
    from sftlab.eval.report import write_report

    page = write_report([tmp_path / "old"], tmp_path / "report").read_text()
    assert "<th>streamed_documents</th>" in page and "<th>truncated_tokens</th>" in page


def test_concat_runs_report_no_truncation(tmp_path):
    metrics = train(settings(tmp_path, "c", mode="concat")).metrics
    assert not {"streamed_documents", "truncated", "truncated_tokens"} & set(metrics)


def csv_texts(*paths: Path) -> list[str]:
    files = [str(path) for path in paths]
    stream_files(DataConfig(train=files if len(files) > 1 else files[0]), None)
    return list(TokenStream(files, "csv", "text", make_tokenizer(), 16, "document", 1).documents(0, 0))


def test_csv_header_names_count_without_their_spaces(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id, text ,label\n1,first doc,a\n2, second doc,b\n", encoding="utf-8")
    assert csv_texts(path) == [row["text"] for row in read_rows(path)] == ["first doc", " second doc"]


@pytest.mark.parametrize("second", [" text , id \n", " id , text\n", "text,source,id\n", "text\n"])
def test_csv_files_whose_headers_differ_are_read_as_in_memory(tmp_path, second):
    first, other = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("text,id\nfirst doc,1\nsecond doc,2\n", encoding="utf-8")
    names = [name.strip() for name in second.split(",")]
    rows = [{"text": "third doc", "id": "3", "source": "x"}, {"text": "fourth doc", "id": "4", "source": "y"}]
    other.write_text(second + "".join(",".join(row[name] for name in names) + "\n" for row in rows), encoding="utf-8")
    in_memory = [row["text"] for path in (first, other) for row in read_rows(path)]  # the stream shuffles files
    assert sorted(csv_texts(first, other)) == sorted(in_memory) == ["first doc", "fourth doc", "second doc", "third doc"]


@pytest.mark.parametrize("header", ["text,text", "text, text", "id,text ,text"])
def test_a_csv_header_naming_a_column_twice_is_refused_as_in_memory(tmp_path, header):
    path = tmp_path / "c.csv"
    path.write_text(f"{header}\n" + ",".join(["x"] * len(header.split(","))) + "\n", encoding="utf-8")
    with pytest.raises(SftlabError) as in_memory:
        read_rows(path)
    assert str(in_memory.value).startswith(f"{path}:1: the header names column 'text' twice")
    with pytest.raises(SftlabError) as streamed:
        stream_files(DataConfig(train=str(path)), None)
    assert str(streamed.value) == str(in_memory.value)


def test_csv_text_cells_are_read_as_written(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,n\n123,1\nNA,2\n , \nnull,\n", encoding="utf-8")  # a row of blank fields is skipped
    assert csv_texts(path) == [row["text"] for row in read_rows(path) if row["text"].strip()] == ["123", "NA", "null"]
