"""data.streaming on bad or odd pt files: the same documents and the same one-line `file:line` errors as the
in-memory reader (`sftlab.data.readers` / `formats`), found while the run is set up where the start of the corpus
is at fault (acceptance walk of continued pretraining, 2026-12-07)."""

import json
from pathlib import Path

import pytest

from sftlab.data.readers import read_rows
from sftlab.data.streaming import StreamPosition, TokenStream, stream_files
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer
from test_train_loop import tiny_run, train

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def stream_of(path: Path, buffer: int = 1) -> TokenStream:
    return TokenStream([str(path)], BUILDERS[path.suffix], "text", make_tokenizer(), 16, "document", buffer)


def streamed_texts(path: Path) -> list[str]:
    return list(stream_of(path).documents(0, 0))


def in_memory_error(path: Path) -> str:
    """The one-line error the in-memory path gives for `path` (reader, then the text format's field checks)."""
    from sftlab.data.formats import to_canonical

    with pytest.raises(SftlabError) as caught:
        to_canonical(read_rows(path), "text", "pt", {})
    return str(caught.value)


def test_blank_txt_lines_are_not_documents(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first line\n\n   \nsecond line\n\t\nthird\n", encoding="utf-8")
    assert streamed_texts(path) == [row["text"] for row in read_rows(path)] == ["first line", "second line", "third"]


CASES = {  # file name -> bytes: each wrong in one place
    "bad_utf8.txt": b"hello\n\xff\xfe bad\n",
    "bad_utf8.jsonl": b'{"text": "ok"}\n{"text": "\xff"}\n',
    "bad_utf8.csv": b"text\nhello\n\xff\n",
    "malformed.jsonl": b'{"text": "a"}\n{"text": "b"}\n{"text": "broken\n{"text": "c"}\n',
    "missing.jsonl": b'{"text": "a doc"}\n{"body": "no text"}\n',
    "null.jsonl": b'{"text": "a"}\n{"text": null}\n',
    "empty_text.jsonl": b'{"text": "a"}\n{"text": "  "}\n',
    "number.jsonl": b'{"text": 1}\n{"text": 2}\n',
    "empty_cell.csv": b"text,x\nhello,1\n,2\n",
    "empty_list.json": b'[{"text": "a"},\n {"text": ""}]\n',
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_record_fails_in_one_line_naming_its_file_and_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(CASES[name])
    expected = in_memory_error(path)
    assert f"{path}:" in expected  # the in-memory error names the file and line
    with pytest.raises(SftlabError) as caught:
        streamed_texts(path)
    assert str(caught.value) == expected


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_an_empty_or_blank_file_is_refused_before_reading_it(tmp_path, suffix, content):
    from sftlab.config.schema import DataConfig

    path = tmp_path / f"c{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SftlabError, match=r"^" + str(path).replace(".", r"\.") + r": empty dataset \(no rows\)$"):
        stream_files(DataConfig(train=str(path)), None)


def test_a_bad_record_after_the_start_fails_in_one_line_during_training_reads(tmp_path):
    path = tmp_path / "c.jsonl"
    good = [json.dumps({"text": f"document number {i}"}) for i in range(30)]
    path.write_text("\n".join(good + ['{"body": "x"}']) + "\n", encoding="utf-8")
    rows = stream_of(path, buffer=2).rows(StreamPosition())
    with pytest.raises(SftlabError, match=rf"^{path}:31: missing required field 'text'$"):
        for _ in range(100):
            next(rows)


def test_a_run_on_a_corpus_bad_at_its_start_fails_at_setup_leaving_no_output(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a document"}\n{"content": "no text field"}\n', encoding="utf-8")
    raw = tiny_run(tmp_path, name="out", data={"train": str(path), "streaming": True},
                   train={"stage": "pt", "max_steps": 2, "batch_size": 2, "max_length": 16})
    with pytest.raises(SftlabError, match=rf"^{path}:2: missing required field 'text'$"):
        train(raw)
    assert not (tmp_path / "out").exists()
