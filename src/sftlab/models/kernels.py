"""Compiled element-wise kernels for the fused RMSNorm and gated MLP in CPU training (model.compiled_kernels).

Run eagerly, an RMSNorm makes about six passes over the hidden states forward (fp32 copy, square, mean,
scale, cast, weight) and twelve backward, and the gated MLP's backward five over the intermediate width.
On a W1 step (bf16, 2 cores) that is 17 norms of 4 MiB rows and 8 MLPs of 11 MiB: memory traffic, not
arithmetic. `torch.compile` (Inductor's C++ backend) turns each of these functions into one vectorised
loop nest per reduction.

The functions below are the eager math of `sftlab.models.fused`, compiled with Inductor's
`emulate_precision_casts`, so they round to bf16 wherever the eager code rounds: the gated MLP's gradients
are bit-identical to eager ones with SiLU; with Gemma's tanh GELU the gate's gradient differs by one unit in
the last place in about 2 elements in 10,000 (another tanh). The RMSNorm's row sums (the mean of squares, the backward's dot product
and the weight gradient's sum over rows) are added in another order, so about 1 element in 100,000 of
its bf16 output and input gradient differs, by less than one unit in the last place of its row's largest
value (`tests/test_kernels.py`).

`prepare_kernels` compiles them once at setup, before the clock of any training step, by running the
model's own first fused modules on a small batch in the training precision (W1 on 2 cores: about 12 s the first time on
a machine, about 3 s once Inductor's cache holds them). That cache lives in `$SFTLAB_HOME/inductor`
(`~/.cache/sftlab/inductor`) unless `TORCHINDUCTOR_CACHE_DIR` says otherwise, not in Inductor's default under
/tmp, which many systems empty at boot. They are then used for every call on the CPU with
gradients; other calls (eval, generation, a GPU) run the eager code. Should compiling fail (no C++
compiler, say), the run goes on eagerly and the log says why.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from sftlab.models.load import sftlab_home

_OPTIONS = {"emulate_precision_casts": True}
AUTO_MIN_HIDDEN = 256  # `auto` compiles for models at least this wide; below, compiling outlasts the steps it speeds up
_OFF = "compiled kernels: off (model.compiled_kernels)"
_state = {"on": False, "line": _OFF}
_compiled: dict = {}


def rms_forward(x, weight, eps: float, one_plus: bool):
    """RMSNorm output and the fp32 reciprocal RMS per row (as `RMSNormFunction.forward`)."""
    x32 = x.float()
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if one_plus:
        return (x32 * rstd * (1.0 + weight.float())).to(x.dtype), rstd
    return weight * (x32 * rstd).to(x.dtype), rstd


def rms_backward(grad, x, weight, rstd, one_plus: bool, need_weight: bool = True, need_input: bool = True):
    """Input gradient (None unless `need_input`) and weight gradient (None unless `need_weight`) of `rms_forward`
    (as `RMSNormFunction.backward`). The lowest trainable block's norm needs only its weight gradient."""
    x32 = x.float()
    grad_weight = None
    if need_weight:
        if one_plus:
            grad_weight = (grad.float() * (x32 * rstd)).sum_to_size(weight.shape).to(weight.dtype)
        else:
            grad_weight = (grad * (x32 * rstd).to(x.dtype)).sum_to_size(weight.shape).to(weight.dtype)
    if not need_input:
        return None, grad_weight
    grad_normed32 = grad.float() * (1.0 + weight.float()) if one_plus else (grad * weight).to(x.dtype).float()
    dot = (grad_normed32 * x32).sum(-1, keepdim=True)
    grad_x = grad_normed32 * rstd - x32 * (rstd.pow(3) * dot / x32.shape[-1])
    return grad_x.to(x.dtype), grad_weight


def activation(gate, silu: bool):
    """act(gate) of a gated MLP: SiLU, or GELU with the tanh approximation."""
    return F.silu(gate) if silu else F.gelu(gate, approximate="tanh")


def gated_backward(grad_hidden, gate, up, silu: bool, need_hidden: bool = True):
    """Gradients of act(gate) * up for gate and up, and act(gate) * up itself (None unless `need_hidden`;
    as `GatedMLPFunction.backward`)."""
    activated = activation(gate, silu)
    hidden = activated * up if need_hidden else None
    grad_up = (grad_hidden * activated).to(up.dtype)
    grad_activated = (grad_hidden * up).to(gate.dtype)
    if silu:
        grad_gate = torch.ops.aten.silu_backward(grad_activated, gate)
    else:
        grad_gate = torch.ops.aten.gelu_backward(grad_activated, gate, approximate="tanh")
    return grad_gate, grad_up, hidden


EAGER = {"rms_forward": rms_forward, "rms_backward": rms_backward, "gated_backward": gated_backward}


def kernel(name: str, probe: torch.Tensor):
    """The compiled `name` where compiled kernels are on and `probe` is a CPU tensor, else the eager function.

    The eager functions skip the outputs their `need_*` flags decline; the compiled ones compute them all
    (one graph per function, the one the warm-up built), and the caller drops what it does not need."""
    if _state["on"] and probe.device.type == "cpu":
        return _call_compiled(name)
    return EAGER[name]


def _call_compiled(name: str):
    def call(*args, **flags):
        tensors = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]  # no requires_grad guards
        try:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):  # one global state for the guards
                return _compiled[name](*tensors)  # every output: `flags` keep their defaults (True)
        except Exception as error:  # noqa: BLE001 - a compiler failure must not end a training run
            _state.update(on=False, line=f"compiled kernels: off after an error ({type(error).__name__}: "
                                         f"{str(error).splitlines()[0] if str(error) else ''}); eager from then on")
            return EAGER[name](*args, **flags)
    return call


def off_reason(setting, model, device: torch.device) -> str | None:
    """Why `model.compiled_kernels` (true, false or auto) leaves the kernels off on `device`, or None."""
    if setting is False:
        return "model.compiled_kernels"
    if device.type != "cpu":
        return f"for CPU training; this run is on {device.type}"
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or getattr(getattr(config, "text_config", None), "hidden_size", 0)
    if setting == "auto" and hidden < AUTO_MIN_HIDDEN:
        return f"model.compiled_kernels: auto, hidden size under {AUTO_MIN_HIDDEN}"
    return None


def prepare_kernels(model, setting, device: torch.device, precision_context) -> str:
    """Compile the kernels for `model`'s fused modules (unless `off_reason` gives one) and return the log line.

    `precision_context()` is the training step's autocast context; the model's first fused RMSNorm and
    gated MLP run forward and backward once in it on a [2, 8, hidden] batch, and their parameters'
    gradients are cleared again."""
    from sftlab.models.fused import first_fused_modules

    release()
    modules = first_fused_modules(model)
    reason = off_reason(setting, model, device)
    if not modules or reason:
        if modules:
            _state["line"] = f"compiled kernels: off ({reason})"
        return _state["line"]
    started = time.perf_counter()
    use_sftlab_cache_dir()
    try:
        for name, function in EAGER.items():
            _compiled.setdefault(name, torch.compile(function, dynamic=True, options=_OPTIONS))
        _state["on"] = True
        _warm_up(modules, precision_context)
    except Exception as error:  # noqa: BLE001 - no compiler, an unsupported platform: train eagerly
        _state.update(on=False, line=f"compiled kernels: off ({type(error).__name__}: {str(error).splitlines()[0]})")
        return _state["line"]
    if _state["on"]:
        _state["line"] = f"compiled kernels: RMSNorm and gated MLP, ready in {time.perf_counter() - started:.1f} s"
    return _state["line"]


def use_sftlab_cache_dir() -> None:
    """Point Inductor's cache at `$SFTLAB_HOME/inductor` unless the user chose a directory of their own.

    Inductor reads `TORCHINDUCTOR_CACHE_DIR` at every compile and writes its default (under /tmp) into it
    the first time it looks, which importing `torch._dynamo` already does; so a value equal to that default
    counts as not chosen."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch layout: only an unset variable is ours to set
        default_cache_dir = None
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or (default_cache_dir and os.path.abspath(current) == os.path.abspath(default_cache_dir())):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(sftlab_home() / "inductor")


def _warm_up(modules, precision_context) -> None:
    """One forward and backward of each module on a small batch, then their gradients as they were."""
    for module in modules:
        params = [p for p in module.parameters() if p.requires_grad]
        before = [p.grad for p in params]
        weight = next(p for p in module.parameters() if p.is_floating_point())  # not a 4-bit (QLoRA) uint8 weight
        width = module.gate_proj.in_features if hasattr(module, "gate_proj") else module.weight.shape[-1]
        x = torch.randn(2, 8, width, generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
        x = x.to(weight.dtype).to(weight.device).requires_grad_()
        with precision_context():
            out = module(x)
        out.float().sum().backward()
        for p, grad in zip(params, before):
            p.grad = grad


def status_line() -> str:
    """The log line: whether compiled kernels are in use, and how long compiling took."""
    return _state["line"]


def release() -> None:
    """Back to the eager code (the end of a run: the compiled kernels stay cached for the next one)."""
    _state.update(on=False, line=_OFF)
