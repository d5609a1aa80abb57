"""QLoRA where it meets other features: an adapter on a base of its own code (model.trust_remote_code) served with
--trust-remote-code, and a classification adapter evaluated on the 4-bit base it trained on (not the full-precision
one), so `sftlab eval RUN` and a merged export give the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from sftlab.config.schema import LoraConfig, ModelConfig
from sftlab.errors import SftlabError
from sftlab.infer.loading import load_classifier_adapter, load_served
from sftlab.models.load import load_model
from sftlab.models.nf4 import write_record
from sftlab.models.tiny import save_tiny
from sftlab.strategy.lora import apply_lora
from test_walk_model_load import make_custom_code_model

pytest.importorskip("bitsandbytes")


def _qlora_adapter(base_dir, out_dir, stage="sft", trust=False, **load_kwargs):
    """A QLoRA adapter as training saves it (4-bit base, adapter with non-zero B, its sftlab_qlora.json), and the
    peft model it came from, in eval mode."""
    torch.manual_seed(0)
    base = load_model(ModelConfig(path=str(base_dir), trust_remote_code=trust), stage, quantize_4bit=True,
                      **load_kwargs)
    model, _, _ = apply_lora(base, LoraConfig(rank=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # the adapter changes the logits
    model.save_pretrained(out_dir)
    write_record(out_dir, model)
    return model.eval()


def _ids():
    return torch.tensor([[5, 17, 42, 9, 33, 8]])


def test_a_qlora_adapter_on_a_custom_code_base_serves_with_trust_remote_code(tmp_path):
    custom = make_custom_code_model(save_tiny("qwen2", tmp_path / "custom", hidden=32, layers=1))
    trained = _qlora_adapter(custom, tmp_path / "adapter", trust=True)
    with torch.no_grad():
        expected = trained(input_ids=_ids()).logits
    with pytest.raises(SftlabError, match=r"custom code shipped in .*--trust-remote-code"):
        load_served(tmp_path / "adapter")
    served = load_served(tmp_path / "adapter", trust_remote_code=True)
    assert type(served.model.get_base_model()).__name__ == "WalkModel"
    with torch.no_grad():
        assert torch.allclose(served.model(input_ids=_ids()).logits, expected, atol=1e-5)


def test_a_qlora_classifier_is_evaluated_on_its_4bit_base(tmp_path):
    base = save_tiny("llama", tmp_path / "llama", hidden=64, layers=1)
    labels = ["neg", "pos", "mid"]
    trained = _qlora_adapter(base, tmp_path / "adapter", stage="cls", label_names=labels)
    (tmp_path / "adapter" / "sftlab_labels.json").write_text(json.dumps({"labels": labels}))
    with torch.no_grad():
        expected = trained(input_ids=_ids()).logits
    model, _, loaded_labels = load_classifier_adapter(tmp_path / "adapter")
    assert loaded_labels == labels
    with torch.no_grad():
        got = model(input_ids=_ids()).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    with pytest.raises(SftlabError, match="--dtype bfloat16: .* is a QLoRA adapter"):
        load_classifier_adapter(tmp_path / "adapter", dtype="bfloat16")


def test_a_bert_classifier_keeps_its_head_out_of_the_4bit_weights(tmp_path):
    """transformers left BERT's `classifier` (a head with a bias) 4-bit: re-initialising it for the data's labels
    crashed on its packed codes, and a head that fitted would have trained as a 4-bit copy."""
    from torch import nn
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from sftlab.models.nf4 import quantizable_weights, quantized_weights

    base = save_tiny("bert", tmp_path / "bert", task="cls", num_labels=3)
    for labels in (["LABEL_0", "LABEL_1", "LABEL_2"], ["neg", "pos", "mid"]):  # the saved head, one re-initialised
        model = load_model(ModelConfig(path=str(base)), "cls", label_names=labels, quantize_4bit=True)
        assert type(model.classifier) is nn.Linear and model.classifier.weight.dtype == torch.float32
        assert quantized_weights(model) and not any(name.startswith("classifier") for name in quantized_weights(model))
    with torch.device("meta"):
        meta = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(base))
    assert set(quantizable_weights(meta)) == set(quantized_weights(model))
