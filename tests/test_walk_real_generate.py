"""`sftlab generate` printed transformers' FutureWarning ``past_key_values` is deprecated and will be removed in
version 5.40.0 ... Use `cache` instead` on every run (found generating with Gemma 3 270M): the decode batch passed
the KV cache under the old keyword name. It now uses the name the model's forward declares."""

from __future__ import annotations

import json
import warnings

import torch

from sftlab.cli import main
from sftlab.infer.batch import DecodeBatch, Row
from sftlab.infer.sampling import SamplingParams
from sftlab.models.tiny import make_tiny_model, make_tokenizer, save_tiny


def test_decoding_passes_the_cache_under_the_forwards_own_name():
    torch.set_num_threads(1)
    tok = make_tokenizer("chatml")
    model = make_tiny_model("qwen2", tok, hidden=32, layers=1)
    batch = DecodeBatch(model, tok.pad_token_id, set(), 256)
    row = Row(tok("hello there")["input_ids"], SamplingParams(max_new_tokens=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated keyword would raise here
        batch.admit([row])
        while row.finish_reason is None:
            batch.step()
    assert len(row.generated) == 4


def test_generate_cli_raises_no_deprecation_warning(tmp_path):
    model_dir = save_tiny("qwen2", tmp_path / "m", hidden=32, layers=1)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "列出三种水果。"}, ensure_ascii=False) + "\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["generate", str(model_dir), "--input", str(prompts), "--output", str(tmp_path / "o.jsonl"),
                     "--max-new-tokens", "3"]) == 0
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]
