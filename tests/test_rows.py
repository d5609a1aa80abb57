"""TokenRows (sftlab.data.rows): columns, saving and memory-mapped loading, errors; and that a training
process (tokenising, packing, training, saving) never imports `datasets`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sftlab.data.rows import TokenRows
from sftlab.errors import SftlabError

LM = {"input_ids": [[5, 6, 7], [8], [9, 10]], "labels": [[-100, 6, 7], [8], [-100, 10]]}


def test_rows_read_as_plain_lists_and_ints():
    rows = TokenRows.from_dict(LM)
    assert len(rows) == 3 and rows.column_names == ["input_ids", "labels"]
    assert rows[0] == {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]} and rows[-1]["input_ids"] == [9, 10]
    assert rows["labels"] == LM["labels"] and rows.to_dict() == LM
    assert list(rows) == [rows[0], rows[1], rows[2]]
    assert type(rows[0]["input_ids"][0]) is int
    assert rows.lengths() == [3, 1, 2]
    assert rows.select([2, 0]).to_dict() == {"input_ids": [[9, 10], [5, 6, 7]], "labels": [[-100, 10], [-100, 6, 7]]}


def test_scalar_column_and_from_list():
    rows = TokenRows.from_list([{"input_ids": [1, 2], "label": 3}, {"input_ids": [4], "label": 0}])
    assert rows[0] == {"input_ids": [1, 2], "label": 3} and type(rows[1]["label"]) is int
    assert rows["label"] == [3, 0]
    with pytest.raises(SftlabError, match="one value per row"):
        rows.lengths("label")


def test_save_and_load_round_trip_memory_mapped(tmp_path):
    rows = TokenRows.from_dict(LM | {"position_ids": [[0, 1, 2], [0], [0, 1]]})
    rows.save(tmp_path / "rows")
    loaded = TokenRows.load(tmp_path / "rows")
    assert loaded.to_dict() == rows.to_dict() and loaded.column_names == rows.column_names
    assert isinstance(loaded._columns["input_ids"][0], np.memmap)
    assert json.loads((tmp_path / "rows" / "rows.json").read_text())["rows"] == 3


def test_bad_access_and_bad_files_name_what_is_wrong(tmp_path):
    rows = TokenRows.from_dict(LM)
    with pytest.raises(IndexError, match="row 3 is out of range for 3"):
        rows[3]
    with pytest.raises(KeyError, match="no column 'label'"):
        rows["label"]
    with pytest.raises(SftlabError, match="different row counts"):
        TokenRows.from_dict({"input_ids": [[1], [2]], "labels": [[1]]})
    with pytest.raises(SftlabError, match=r"rows\.json: cannot read the token rows"):
        TokenRows.load(tmp_path / "missing")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "rows.json").write_text('{"format": "other"}')
    with pytest.raises(SftlabError, match="format 'other' is not"):
        TokenRows.load(tmp_path / "old")


NO_DATASETS = """
import sys
from sftlab.cli import main
assert main(["train", sys.argv[1], "--no-progress"]) == 0
loaded = sorted(name for name in ("datasets", "pyarrow", "pandas") if name in sys.modules)
print("loaded:", loaded)
"""


def test_a_packed_sft_run_never_imports_datasets(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_loop import tiny_run

    raw = tiny_run(tmp_path, "qwen2", data={"packing": True})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    for attempt in ("tokenised", "from the cache"):
        done = subprocess.run([sys.executable, "-c", NO_DATASETS, str(config)], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "loaded: []" in done.stdout, (attempt, done.stdout)
        raw["output"]["dir"] = str(tmp_path / "run2")
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert (tmp_path / "run2" / "model" / "model.safetensors").is_file()
