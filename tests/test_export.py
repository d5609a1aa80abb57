"""`sftlab export RUN --merge OUT`: merged model equals base + adapter on probe inputs."""

from __future__ import annotations

import json

import pytest
import torch

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.models.tiny import ARCH_TEMPLATE, make_tokenizer, save_tiny
from sftlab.strategy import select_trainable


def lora_run(tmp_path, arch: str, task: str) -> tuple:
    """A run dir whose model/ holds a trained-looking LoRA adapter (non-zero B) plus the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    base = save_tiny(arch, tmp_path / "base", task=task, num_labels=3)
    auto = AutoModelForSequenceClassification if task == "cls" else AutoModelForCausalLM
    model, _ = select_trainable(auto.from_pretrained(base), {"kind": "lora", "lora": {"rank": 4, "dora": arch == "qwen2"}})
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.1)
    run = tmp_path / "run"
    model.save_pretrained(run / "model")
    make_tokenizer(ARCH_TEMPLATE[arch]).save_pretrained(run / "model")
    return run, model.eval()


@pytest.mark.parametrize("arch, task", [("llama", "causal_lm"), ("qwen2", "causal_lm"), ("bert", "cls")])
def test_merge_matches_unmerged(tmp_path, capsys, arch, task):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run, peft_model = lora_run(tmp_path, arch, task)
    if task == "cls":
        (run / "data_stats.json").write_text(json.dumps({"label_names": ["a", "b", "c"]}))
    assert main(["export", str(run), "--merge", str(tmp_path / "merged"), "--probe", "hello world"]) == 0
    assert "max |merged - unmerged| logit difference on 1 probe inputs" in capsys.readouterr().out
    record = json.loads((tmp_path / "merged" / "sftlab_export.json").read_text())
    assert record["max_abs_logit_diff"] < 1e-4
    auto = AutoModelForSequenceClassification if task == "cls" else AutoModelForCausalLM
    merged = auto.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-4)
    if task == "cls":
        assert merged.config.id2label[2] == "c"


def test_export_errors(tmp_path, capsys):
    from sftlab.commands.export import merge_adapter

    save_tiny("llama", tmp_path / "full" / "model")
    with pytest.raises(SftlabError, match="holds a full model, with no adapter to merge"):
        merge_adapter(tmp_path / "full", tmp_path / "out", merge_base="original")
    with pytest.raises(SftlabError, match="not a run directory or model directory"):
        merge_adapter(tmp_path, tmp_path / "out")
    assert main(["export", str(tmp_path / "full")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: sftlab export needs --merge OUT: the directory it writes the merged model to"
    assert not (tmp_path / "out").exists()


def test_export_never_replaces_its_inputs(tmp_path, capsys):
    """`--merge RUN --overwrite` replaced the run being exported (its adapter, config, metrics) by the merged model;
    the adapter's base and a directory holding the run were not safe either."""
    run, _ = lora_run(tmp_path, "llama", "causal_lm")
    (run / "metrics.json").write_text("{}")
    capsys.readouterr()
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    for out in (run, run / "model", tmp_path / "base", tmp_path):
        assert main(["export", str(run), "--merge", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: output directory {out} is or holds the input ") and err.count("\n") == 1
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before
    (tmp_path / "file").write_text("x")
    assert main(["export", str(run), "--merge", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"error: output directory {tmp_path / 'file'} is a file; expected a directory\n"


@pytest.mark.parametrize("record, warned", [
    ({"adapter": "a", "max_abs_logit_diff": 3e-7}, False),
    ({"adapter": "a", "max_abs_logit_diff": 0.6}, True),                      # a merge that changed the model
    ({"adapter": None, "max_abs_logit_diff": 0.0}, False),                     # a full model copied: nothing merged
    ({"adapter": "a", "qlora": {"quant_type": "nf4"}, "merge_base": "original", "max_abs_logit_diff": 0.9}, False),
    ({"adapter": "a", "qlora": {"quant_type": "nf4"}, "merge_base": "dequantized", "max_abs_logit_diff": 0.9,
      "max_abs_logit_diff_float32_compute": 5e-5}, False),                     # bf16 rounding of the QLoRA model
    ({"adapter": "a", "qlora": {"quant_type": "nf4"}, "merge_base": "dequantized", "max_abs_logit_diff": 0.9,
      "max_abs_logit_diff_float32_compute": 0.2}, True),
])
def test_a_merge_that_changes_the_logits_is_warned(record, warned):
    from sftlab.commands.export import merge_warning

    warning = merge_warning({**record, "out": "merged"})
    assert (warning is not None) is warned
    if warned:
        assert warning.startswith("warning: the merged model's logits differ from the adapter's by ")
        assert warning.endswith("check the adapter before using merged")
