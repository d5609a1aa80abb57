"""Leaner RMSNorm and gated MLP for training: autograd functions that keep only their inputs for backward.

A transformers RMSNorm, run as written, leaves autograd an fp32 copy of its input and the normalised
tensor (the norm upcasts to fp32, then casts back); a gated MLP, `down(act(gate(x)) * up(x))`, leaves four
tensors of the intermediate width: gate(x), act(gate(x)), up(x) and their product. The functions here
compute the same forward and keep only the input (and the fp32 reciprocal norm per row) or gate(x) and
up(x), recomputing the cheap element-wise rest in backward. On the W1 benchmark model (Qwen2, hidden 512,
intermediate 1408, bf16) that is 312 MiB of the 896 MiB autograd kept per step.

`fuse_layers(model)` swaps the forward of the modules whose classes `fused_layers.yaml` lists (Llama,
Mistral, Qwen2/3, Phi-3, Gemma 1-3); every other module runs as before. The MLP's down projection is
folded in only when it is a plain `nn.Linear` without hooks (a LoRA or 4-bit layer is called as usual and
keeps its own input). Weights, state dicts and saved models are untouched.
"""

from __future__ import annotations

import functools
from importlib import resources

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from sftlab.models import kernels


@functools.cache
def fused_classes() -> dict:
    """fused_layers.yaml: {'rmsnorm': {style: [class names]}, 'gated_mlp': [class names]}."""
    return yaml.safe_load(resources.files("sftlab.models").joinpath("fused_layers.yaml").read_text(encoding="utf-8"))


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm keeping its input and the fp32 reciprocal RMS per row.

    style `weight_after_cast`: weight * (x32 * rstd).to(x.dtype) (Llama, Qwen); `one_plus_weight`:
    ((x32 * rstd) * (1 + weight.float())).to(x.dtype) (Gemma). The math is `sftlab.models.kernels`'
    (`rms_forward`, `rms_backward`), compiled there in CPU training when model.compiled_kernels says so."""

    @staticmethod
    def forward(ctx, x, weight, eps, style):
        rows = x.reshape(-1, x.shape[-1])
        forward = kernels.kernel("rms_forward", x) if any(ctx.needs_input_grad) else kernels.rms_forward
        out, rstd = forward(rows, weight, eps, style == "one_plus_weight")
        ctx.save_for_backward(x, weight, rstd)
        ctx.style = style
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        grad_x, grad_weight = kernels.kernel("rms_backward", x)(grad.reshape(rows.shape), rows, weight, rstd,
                                                                ctx.style == "one_plus_weight",
                                                                need_weight=ctx.needs_input_grad[1],
                                                                need_input=ctx.needs_input_grad[0])
        return (grad_x.view(x.shape) if ctx.needs_input_grad[0] else None,
                grad_weight if ctx.needs_input_grad[1] else None, None, None)


class GatedMLPFunction(torch.autograd.Function):
    """act(gate) * up, then (when `weight` is given) the down projection, keeping only gate and up.

    Under autocast the projection runs in the autocast dtype, as `nn.Linear` would."""

    @staticmethod
    def forward(ctx, gate, up, kind, weight, bias):
        hidden = kernels.activation(gate, kind == "silu") * up
        ctx.kind, ctx.dtype = kind, None
        ctx.save_for_backward(gate, up, weight, bias)
        if weight is None:
            return hidden
        device = hidden.device.type
        ctx.dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            return F.linear(hidden.to(ctx.dtype), weight.to(ctx.dtype), None if bias is None else bias.to(ctx.dtype))

    @staticmethod
    def backward(ctx, grad):
        gate, up, weight, bias = ctx.saved_tensors
        grad_weight = grad_bias = None
        if weight is None:
            grad_hidden = grad
        else:
            grad_hidden = (grad @ weight.to(ctx.dtype)).to(torch.result_type(gate, up))
        width, want_weight = gate.shape[-1], weight is not None and ctx.needs_input_grad[3]
        grad_gate, grad_up, hidden = kernels.kernel("gated_backward", gate)(
            grad_hidden.reshape(-1, width), gate.reshape(-1, width), up.reshape(-1, width), ctx.kind == "silu",
            need_hidden=want_weight)
        if want_weight:
            grad_weight = (grad.reshape(-1, grad.shape[-1]).T @ hidden.to(ctx.dtype)).to(weight.dtype)
        if bias is not None and ctx.needs_input_grad[4]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(bias.dtype)
        return (grad_gate.view(gate.shape) if ctx.needs_input_grad[0] else None,
                grad_up.view(up.shape) if ctx.needs_input_grad[1] else None, None, grad_weight, grad_bias)


def _rmsnorm_forward(self, x):
    return RMSNormFunction.apply(x, self.weight, self._fused_eps, self._fused_style)


def _gated_mlp_forward(self, x):
    gate, up = self.gate_proj(x), self.up_proj(x)
    down = self.down_proj
    if _plain_linear(down):
        return GatedMLPFunction.apply(gate, up, self._fused_activation, down.weight, down.bias)
    return down(GatedMLPFunction.apply(gate, up, self._fused_activation, None, None))


def _plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear` itself (not a LoRA, 4-bit or sharded one), with no hooks that expect to be called."""
    return (type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks
            and type(module.weight.data) is torch.Tensor)


def _activation_kind(act: nn.Module) -> str | None:
    """'silu' or 'gelu_tanh' for the activation modules transformers builds for those names, else None."""
    if isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation":
        return "silu"
    inner = getattr(act, "act", None)
    if (type(act).__name__ == "GELUTanh" and isinstance(inner, functools.partial)
            and inner.func is F.gelu and inner.keywords == {"approximate": "tanh"}):
        return "gelu_tanh"
    return None


def fuse_layers(model: nn.Module) -> dict[str, int]:
    """Run the model's listed RMSNorm and gated-MLP modules through the functions above.

    Returns `fused_counts(model)`."""
    classes = fused_classes()
    styles = {name: style for style, names in classes["rmsnorm"].items() for name in names}
    mlps = set(classes["gated_mlp"])
    for module in model.modules():
        name = type(module).__name__
        if name in styles:
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            if eps is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
                continue
            module._fused_eps, module._fused_style = float(eps), styles[name]
            module.forward = _rmsnorm_forward.__get__(module)
        elif name in mlps and all(hasattr(module, key) for key in ("gate_proj", "up_proj", "down_proj")):
            kind = _activation_kind(getattr(module, "act_fn", None))
            if kind is None:
                continue
            module._fused_activation = kind
            module.forward = _gated_mlp_forward.__get__(module)
    return fused_counts(model)


def _forward_function(module: nn.Module):
    """The function behind `module.forward` (one of ours once `fuse_layers` swapped it in)."""
    return getattr(getattr(module, "forward", None), "__func__", None)


def fused_counts(model: nn.Module) -> dict[str, int]:
    """How many RMSNorm and gated-MLP modules of `model` run fused now ({'rmsnorm': n, 'gated_mlp': m})."""
    forwards = [_forward_function(m) for m in model.modules()]
    return {"rmsnorm": forwards.count(_rmsnorm_forward), "gated_mlp": forwards.count(_gated_mlp_forward)}


def fused_down_projections(model: nn.Module) -> int:
    """How many of the fused gated MLPs also fold in their down projection (a plain `nn.Linear`)."""
    return sum(1 for m in model.modules() if _forward_function(m) is _gated_mlp_forward and _plain_linear(m.down_proj))


def first_fused_modules(model: nn.Module) -> list[nn.Module]:
    """The first fused RMSNorm and the first fused gated MLP of `model` (those it has)."""
    found = {}
    for module in model.modules():
        function = _forward_function(module)
        if function in (_rmsnorm_forward, _gated_mlp_forward):
            found.setdefault(function, module)
    return list(found.values())


def fused_summary(model: nn.Module, enabled: bool = True) -> str:
    """One log line: how many RMSNorm and gated-MLP modules of `model` run fused, or why none does (`enabled`:
    the run's model.fused_layers)."""
    counts = fused_counts(model)
    if not enabled:
        return "fused layers: none (model.fused_layers is off)"
    if not any(counts.values()):
        return ("fused layers: none (the model has no RMSNorm or gated MLP of a class sftlab fuses; LayerNorm models "
                "such as BERT and GPT-2 run as transformers writes them)")
    return (f"fused layers: {counts['rmsnorm']} RMSNorm, {counts['gated_mlp']} gated MLP (model.fused_layers); "
            f"{kernels.status_line()}")
