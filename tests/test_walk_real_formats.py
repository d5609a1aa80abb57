"""A data.format that does not fit the file says what the rows look like (found training Gemma on alpaca_zh_demo).

`data.format=sharegpt` on an alpaca file said only `missing required field 'messages'`, which names neither the
setting at fault nor the format the file is in."""

from __future__ import annotations

import json

import pytest

from sftlab.cli import main
from sftlab.data.formats import to_canonical
from sftlab.errors import SftlabError
from sftlab.models.tiny import save_tiny

ALPACA = {"instruction": "列出三种水果。", "input": "", "output": "苹果、香蕉、橙子。", "_src": "a.json:1[#0]"}


@pytest.mark.parametrize("fmt", ["sharegpt", "messages", "prompt_completion"])
def test_a_wrong_format_names_the_format_the_row_looks_like(fmt):
    with pytest.raises(SftlabError) as caught:
        to_canonical([dict(ALPACA)], fmt)
    message = str(caught.value)
    assert message.startswith("a.json:1[#0]: missing required field ") and "\n" not in message
    assert message.endswith(f"(data.format is {fmt!r}, but the row looks like 'alpaca': set data.format to alpaca "
                            "or auto)")


def test_a_bad_row_of_the_right_format_gets_no_hint():
    with pytest.raises(SftlabError) as caught:
        to_canonical([{"instruction": "x", "output": 3, "_src": "a.json:1"}], "alpaca")
    assert str(caught.value) == "a.json:1: field 'output' must be str, got int"


def test_train_prints_the_hint_on_one_line(tmp_path, capsys):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{k: v for k, v in ALPACA.items() if k != "_src"}], ensure_ascii=False), "utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {save_tiny('qwen2', tmp_path / 'm', hidden=32, layers=1)}}}\n"
                      f"data: {{train: {data.name}, format: sharegpt, cache_dir: {tmp_path / 'cache'}}}\n"
                      f"train: {{stage: sft, max_steps: 1}}\noutput: {{dir: {tmp_path / 'out'}}}\n", "utf-8")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "looks like 'alpaca': set data.format to alpaca or auto" in err[-1]
    assert not (tmp_path / "out").exists()
