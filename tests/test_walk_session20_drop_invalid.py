"""Acceptance walk of `sftlab data clean --drop-invalid` (session 20): rows that lack a column named by
`--columns` are rows that do not convert, so the option leaves them out and lists them, as it does a missing
field; `data build validate` flags the same rows."""

from __future__ import annotations

import json

from sftlab.cli import main

ROWS = [
    '{"q": "What is two plus two", "a": "Four", "id": 1}',
    '{"q": "A question without an answer", "id": 2}',        # line 2: the mapped column 'a' is missing
    '{"q": "Name a colour", "a": "Blue", "id": 3}',
    '{"q": "A list for an answer", "a": ["x"], "id": 4}',     # line 4: 'a' holds a list
]
COLUMNS = ["--format", "alpaca", "--columns", "instruction=q", "output=a"]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_row_without_a_mapped_column_is_left_out_and_listed(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    assert main(["data", "clean", str(data), str(out), *COLUMNS, "--drop-invalid"]) == 0
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in kept] == [1, 3]  # the kept rows keep their extra fields
    listed = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))["sections"]["invalid rows"]
    assert [item["src"] for item in listed] == [f"{data}:2", f"{data}:4"]
    assert "column 'a' (--columns output=a) not found" in listed[0]["error"]
    assert "must be str, got list" in listed[1]["error"]
    capsys.readouterr()
    assert main(["data", "build", "validate", str(data), *COLUMNS]) == 1  # validate flags the same two rows
    flagged = [line.split(": ")[0] for line in capsys.readouterr().out.splitlines() if ": schema:" in line]
    assert flagged == [f"{data}:2", f"{data}:4"]


def test_without_the_option_the_missing_column_stops_the_command_and_names_the_option(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", ROWS)
    assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl"), *COLUMNS]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{data}:2: column 'a' (--columns output=a) not found" in err
    assert "--drop-invalid" in err and not (tmp_path / "out.jsonl").exists()


def test_a_file_where_no_row_has_the_mapped_column_is_an_error(tmp_path, capsys):
    data = _write(tmp_path / "in.jsonl", [ROWS[1], ROWS[1].replace('"id": 2', '"id": 5')])
    assert main(["data", "clean", str(data), str(tmp_path / "out.jsonl"), *COLUMNS, "--drop-invalid"]) == 2
    err = capsys.readouterr().err
    assert "none of its 2 rows converts" in err and f"(first: {data}:1: column 'a' (--columns output=a) not found" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_training_on_such_a_file_counts_the_rows_and_points_at_the_option(tmp_path):
    import pytest

    from sftlab.config.schema import DataConfig
    from sftlab.data.sources import resolve_dataset
    from sftlab.errors import SftlabError

    data = _write(tmp_path / "in.jsonl", ROWS)
    cfg = DataConfig(train=str(data), format="alpaca", columns={"instruction": "q", "output": "a"})
    with pytest.raises(SftlabError) as caught:
        resolve_dataset(str(data), cfg, "sft", None, None, None)
    message = str(caught.value)
    assert message.startswith(f"{data}:2: column 'a' (data.columns.output) not found")
    assert message.endswith("(2 of 4 rows do not convert; `sftlab data build convert FILE OUT --drop-invalid` "
                            "writes a copy without them and changes nothing else)")
