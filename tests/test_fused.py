"""sftlab.models.fused: the same forward and gradients as the transformers modules, with less kept for backward."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from transformers import AutoConfig

from sftlab.models.fused import fuse_layers, fused_classes, fused_counts, fused_down_projections, fused_summary
from sftlab.models.tiny import make_tiny_model, make_tokenizer

MODEL_TYPES = {"Llama": "llama", "Mistral": "mistral", "Qwen2": "qwen2", "Qwen3": "qwen3", "Qwen3Moe": "qwen3_moe",
               "Phi3": "phi3", "Gemma": "gemma", "Gemma2": "gemma2", "Gemma3": "gemma3_text"}


def transformers_class(name: str):
    family = name.removesuffix("RMSNorm").removesuffix("MLP")
    model_type = MODEL_TYPES[family]
    module = importlib.import_module(f"transformers.models.{model_type.removesuffix('_text')}.modeling_"
                                     f"{model_type.removesuffix('_text')}")
    return getattr(module, name), model_type


def forward_and_grads(module, inputs: list[torch.Tensor], autocast: bool = False):
    """Output and the gradients of inputs and parameters for a fixed random upstream gradient."""
    module.zero_grad()
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(*leaves)
    torch.manual_seed(1)
    out.backward(torch.randn_like(out))
    grads = [x.grad for x in leaves] + [p.grad for p in module.parameters() if p.requires_grad]
    return out.detach(), grads


def assert_same(expected, actual, dtype):
    tolerance = {"atol": 0, "rtol": 0} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}
    (out0, grads0), (out1, grads1) = expected, actual
    torch.testing.assert_close(out1, out0, **tolerance)
    assert len(grads0) == len(grads1)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g1, g0, **tolerance)


NORMS = [(name, style) for style, names in fused_classes()["rmsnorm"].items() for name in names]


@pytest.mark.parametrize("name, style", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_listed_rmsnorm_matches_its_transformers_forward(name, style, dtype):
    cls, _ = transformers_class(name)
    torch.manual_seed(0)
    module = cls(32, eps=1e-6).to(dtype)
    with torch.no_grad():
        module.weight.normal_(0.5, 0.3)
    x = torch.randn(3, 5, 32, dtype=dtype) * 4
    expected = forward_and_grads(module, [x])
    fused = copy.deepcopy(module)
    assert fuse_layers(fused) == {"rmsnorm": 1, "gated_mlp": 0}
    assert_same(expected, forward_and_grads(fused, [x]), dtype)


MLPS = fused_classes()["gated_mlp"]


@pytest.mark.parametrize("name", MLPS)
@pytest.mark.parametrize("dtype, autocast", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_every_listed_gated_mlp_matches_its_transformers_forward(name, dtype, autocast):
    cls, model_type = transformers_class(name)
    config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=48)
    torch.manual_seed(0)
    module = cls(config).to(dtype)
    x = torch.randn(3, 5, 32, dtype=dtype)
    expected = forward_and_grads(module, [x], autocast)
    fused = copy.deepcopy(module)
    assert fuse_layers(fused) == {"rmsnorm": 0, "gated_mlp": 1}
    assert_same(expected, forward_and_grads(fused, [x], autocast), torch.bfloat16 if autocast else dtype)


def saved_bytes(model, ids, autocast=False) -> int:
    """Bytes autograd keeps for backward in one forward (parameters excluded, each storage once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("dtype, autocast", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_tiny_models_same_loss_and_gradients_with_less_kept(arch, dtype, autocast):
    torch.manual_seed(0)
    reference = make_tiny_model(arch, make_tokenizer()).to(dtype).train()
    fused = copy.deepcopy(reference)
    counts = fuse_layers(fused)
    assert counts["gated_mlp"] == 2 and counts["rmsnorm"] >= 5  # 2 per block + final (gemma3: q/k norms too)
    ids = torch.randint(5, 500, (2, 24))
    results = []
    for model in (reference, fused):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert_same(results[0], results[1], dtype)
    kept, kept_fused = saved_bytes(reference, ids, autocast), saved_bytes(fused, ids, autocast)
    # per block the MLP keeps 2 of its 4 intermediate-width tensors, each norm its input only
    assert kept_fused < 0.8 * kept, (kept_fused, kept)


def test_lora_down_projection_is_called_as_a_module_and_trains_the_same():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = make_tiny_model("qwen2", make_tokenizer())
    config = LoraConfig(r=4, target_modules=["down_proj", "gate_proj"], init_lora_weights=False)
    reference = get_peft_model(base, config)
    fused = copy.deepcopy(reference)
    assert fuse_layers(fused)["gated_mlp"] == 2
    assert fused_down_projections(fused) == 0  # the LoRA layer keeps its own input; the planner counts that
    ids = torch.randint(5, 500, (2, 16))
    grads = []
    for model in (reference, fused):
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any("down_proj.lora_A" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5)


def test_frozen_weights_get_no_gradient_and_inputs_still_do():
    torch.manual_seed(0)
    model = make_tiny_model("llama", make_tokenizer())
    fuse_layers(model)
    for name, param in model.named_parameters():
        param.requires_grad_("layers.1." in name)
    ids = torch.randint(5, 500, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all((p.grad is None) != ("layers.1." in n) for n, p in model.named_parameters())


def test_loaded_models_stay_fused_through_train_and_eval(tmp_path):
    """transformers' hub-kernel mode would reset module forwards on every train()/eval(); load_model turns it off."""
    from sftlab.config.schema import ModelConfig
    from sftlab.models.load import load_model
    from sftlab.models.tiny import save_tiny

    save_tiny("qwen2", tmp_path / "m")
    model = load_model(ModelConfig(path=str(tmp_path / "m")), "sft")
    before = fuse_layers(model)
    model.eval()
    model.train()
    assert fused_counts(model) == before == {"rmsnorm": 5, "gated_mlp": 2}
    assert fused_down_projections(model) == 2
    assert fused_summary(model).startswith("fused layers: 5 RMSNorm, 2 gated MLP (model.fused_layers); compiled kernels: ")


def test_unlisted_models_are_left_alone():
    model = make_tiny_model("gpt2", make_tokenizer())
    assert fuse_layers(model) == {"rmsnorm": 0, "gated_mlp": 0}
    assert fused_summary(model) == ("fused layers: none (the model has no RMSNorm or gated MLP of a class sftlab "
                                    "fuses; LayerNorm models such as BERT and GPT-2 run as transformers writes them)")
    assert fused_summary(model, enabled=False) == "fused layers: none (model.fused_layers is off)"


def test_lowest_trainable_norm_skips_its_input_gradient_and_trains_the_same(monkeypatch):
    """Blocks below layers.1 are frozen: its first norm's input needs no gradient, and the eager backward
    computes only the norm's weight gradient; every gradient equals transformers' unfused model's."""
    from sftlab.models import kernels

    calls = []
    eager = kernels.EAGER["rms_backward"]
    monkeypatch.setitem(kernels.EAGER, "rms_backward",
                        lambda *args, **flags: calls.append(flags["need_input"]) or eager(*args, **flags))
    torch.manual_seed(0)
    reference = make_tiny_model("llama", make_tokenizer())
    fused = copy.deepcopy(reference)
    fuse_layers(fused)
    ids = torch.randint(5, 500, (2, 16))
    grads = []
    for model in (reference, fused):
        for name, param in model.named_parameters():
            param.requires_grad_("layers.1." in name)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert calls.count(False) == 1 and calls.count(True) == 2  # layers.1's input norm; its MLP norm, the final norm
    assert grads[0].keys() == grads[1].keys() and any("input_layernorm" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5)
