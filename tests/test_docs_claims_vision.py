"""docs/vision.md: image rows cannot be packed (`data.packing: true` is an error) and `data.balance` resampling is
refused, both before the processor loads."""

from __future__ import annotations

import json

import pytest

from sftlab.config.schema import RunConfig
from sftlab.errors import SftlabError
from sftlab.vision.pipeline import prepare_vision_data


@pytest.mark.parametrize("data, message", [
    ({"packing": True}, "data.packing is not supported for image+text data; set data.packing: false"),
    ({"balance": "oversample"}, "data.balance=oversample needs labels; image+text sft data has none"),
    ({"balance": "undersample"}, "data.balance=undersample needs labels; image+text sft data has none"),
])
def test_packing_and_balance_are_refused_for_image_rows(tmp_path, data, message):
    rows = tmp_path / "d.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>hi"},
                                             {"role": "assistant", "content": "a"}], "images": ["x.png"]}) + "\n")
    cfg = RunConfig.model_validate({"model": {"path": str(tmp_path / "no-model")},
                                    "data": {"train": str(rows), **data}, "train": {"stage": "sft"}})
    with pytest.raises(SftlabError) as refused:
        prepare_vision_data(cfg, tmp_path)
    assert str(refused.value) == message  # before the processor (here: no model directory at all) is loaded
