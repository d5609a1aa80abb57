"""sftlab.models.kernels: compiled RMSNorm and gated-MLP kernels agree with the eager math, compile once at
setup, and fall back to the eager code when compiling fails."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from sftlab.models import kernels
from sftlab.models.fused import fuse_layers, fused_summary
from sftlab.models.tiny import make_tiny_model, make_tokenizer


@pytest.fixture(autouse=True)
def eager_afterwards():
    yield
    kernels.release()


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 units in the last place apart each pair of elements is (same sign assumed)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("one_plus", [False, True])  # Llama / Qwen style, Gemma style
def test_compiled_rmsnorm_is_within_bf16_rounding_of_the_eager_math(one_plus):
    torch.manual_seed(0)
    x = (torch.randn(512, 512) * 3).to(torch.bfloat16)
    weight = torch.randn(512).mul(0.3).add(0.5).to(torch.bfloat16)
    grad = torch.randn(512, 512).to(torch.bfloat16)
    compiled_forward = torch.compile(kernels.rms_forward, dynamic=True, options=kernels._OPTIONS)
    compiled_backward = torch.compile(kernels.rms_backward, dynamic=True, options=kernels._OPTIONS)
    out, rstd = kernels.rms_forward(x, weight, 1e-6, one_plus)
    out_c, rstd_c = compiled_forward(x, weight, 1e-6, one_plus)
    torch.testing.assert_close(rstd_c, rstd, rtol=1e-6, atol=0)
    assert bf16_ulps(out_c, out).max() <= 1 and (out_c != out).float().mean() < 1e-4
    grad_x, grad_w = kernels.rms_backward(grad, x, weight, rstd, one_plus)
    grad_x_c, grad_w_c = compiled_backward(grad, x, weight, rstd, one_plus)
    # a difference of two row terms: off by less than one bf16 ulp of the row's largest gradient
    row_ulp = grad_x.float().abs().amax(-1, keepdim=True) * 2 ** -8
    assert ((grad_x_c.float() - grad_x.float()).abs() <= row_ulp).all() and (grad_x_c != grad_x).float().mean() < 1e-4
    torch.testing.assert_close(grad_w_c.float(), grad_w.float(), rtol=2 ** -7, atol=1e-2)  # a sum over 512 rows
    grad_x_only, no_weight = kernels.rms_backward(grad, x, weight, rstd, one_plus, need_weight=False)
    assert no_weight is None and torch.equal(grad_x_only, grad_x)  # the eager code skips what is not needed
    no_input, grad_w_only = kernels.rms_backward(grad, x, weight, rstd, one_plus, need_input=False)
    assert no_input is None and torch.equal(grad_w_only, grad_w)


@pytest.mark.parametrize("silu", [True, False])  # SiLU (Llama, Qwen) / tanh GELU (Gemma)
def test_compiled_gated_mlp_backward_matches_the_eager_math(silu):
    """Bit-identical with SiLU; with tanh GELU the gate's gradient may differ by one ulp (another tanh)."""
    torch.manual_seed(0)
    grad_hidden, gate, up = (torch.randn(256, 384).mul(2).to(torch.bfloat16) for _ in range(3))
    compiled = torch.compile(kernels.gated_backward, dynamic=True, options=kernels._OPTIONS)
    got = compiled(grad_hidden, gate, up, silu)
    expected = kernels.gated_backward(grad_hidden, gate, up, silu)
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    assert torch.equal(got[1], expected[1]) and torch.equal(got[2], expected[2])  # grad_up, act(gate) * up
    grad_gate, grad_up, no_hidden = kernels.gated_backward(grad_hidden, gate, up, silu, need_hidden=False)
    assert no_hidden is None and torch.equal(grad_gate, expected[0]) and torch.equal(grad_up, expected[1])
    if silu:
        assert torch.equal(got[0], expected[0])
    else:
        assert bf16_ulps(got[0], expected[0]).max() <= 1 and (got[0] != expected[0]).float().mean() < 0.001


def prepared_tiny_model(arch: str, setting=True):
    torch.manual_seed(0)
    model = make_tiny_model(arch, make_tokenizer()).to(torch.bfloat16).train()
    fuse_layers(model)
    rng = torch.get_rng_state()
    line = kernels.prepare_kernels(model, setting, torch.device("cpu"), nullcontext)
    assert torch.equal(torch.get_rng_state(), rng), "the warm-up leaves the global RNG alone"
    return model, line


def loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_a_prepared_model_trains_with_them_without_compiling_again(arch):
    """prepare_kernels compiles during setup; batches of other shapes (and Gemma 3's per-head q/k norms) then
    reuse those kernels, and loss and gradients stay those of the eager code (bf16 rounding apart)."""
    model, line = prepared_tiny_model(arch)
    assert line.startswith("compiled kernels: RMSNorm and gated MLP, ready in ")
    assert fused_summary(model).endswith(line)
    assert all(p.grad is None for p in model.parameters()), "the warm-up leaves no gradients behind"
    compiled_frames = counters["frames"]["ok"]
    results = []
    for ids in (torch.randint(5, 500, (2, 24)), torch.randint(5, 500, (3, 17))):
        results.append(loss_and_grads(model, ids))
        assert counters["frames"]["ok"] == compiled_frames, "a batch of another shape compiled again"
        kernels._state["on"] = False
        results.append(loss_and_grads(model, ids))
        kernels._state["on"] = True
    for (loss_c, grads_c), (loss_e, grads_e) in zip(results[::2], results[1::2]):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-2, atol=0)
        for got, expected in zip(grads_c, grads_e):
            assert (got - expected).norm() <= 0.02 * expected.norm() + 1e-6


def test_they_are_off_when_set_so_on_a_gpu_and_for_narrow_models_under_auto():
    model, line = prepared_tiny_model("llama", False)
    assert line == "compiled kernels: off (model.compiled_kernels)" and not kernels._state["on"]
    assert kernels.kernel("rms_forward", torch.ones(1)) is kernels.rms_forward
    _, line = prepared_tiny_model("llama", "auto")  # hidden size 64
    assert line == "compiled kernels: off (model.compiled_kernels: auto, hidden size under 256)"
    assert kernels.off_reason(True, model, torch.device("meta")) == "for CPU training; this run is on meta"
    line = kernels.prepare_kernels(model, "auto", torch.device("meta"), nullcontext)
    assert line == "compiled kernels: off (for CPU training; this run is on meta)"
    model.config.hidden_size = 256
    assert kernels.off_reason("auto", model, torch.device("cpu")) is None


def test_a_compiler_failure_leaves_the_run_on_the_eager_code_with_the_reason(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("Compiler: cc not found\nmore")

    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(torch, "compile", no_compiler)
    _, line = prepared_tiny_model("qwen2")
    assert line == "compiled kernels: off (RuntimeError: Compiler: cc not found)"
    assert kernels.kernel("rms_backward", torch.ones(1)) is kernels.rms_backward


def test_an_error_in_a_compiled_call_switches_to_eager_for_the_rest_of_the_run(monkeypatch):
    def broken(*args):
        raise RuntimeError("guard failure")

    monkeypatch.setattr(kernels, "_compiled", {"gated_backward": broken})
    kernels._state["on"] = True
    args = [torch.randn(4, 8) for _ in range(3)]
    got = kernels.kernel("gated_backward", args[0])(*args, True)
    assert all(torch.equal(a, b) for a, b in zip(got, kernels.gated_backward(*args, True)))
    assert not kernels._state["on"]
    assert kernels.status_line() == "compiled kernels: off after an error (RuntimeError: guard failure); eager from then on"


def test_a_training_run_logs_them_and_turns_them_off_at_cleanup(tmp_path, capsys):
    from sftlab.config import load_config
    from sftlab.train import run_training
    from test_plan import tiny_config

    on_at_each_step = []
    cfg = load_config(None, ["model.compiled_kernels=true", "train.precision=bf16"],
                      base=tiny_config(tmp_path, arch="qwen2", hidden=64, max_steps=2))
    run_training(cfg, show_progress=False, callbacks=[lambda step, loss: on_at_each_step.append(kernels._state["on"])])
    assert "compiled kernels: RMSNorm and gated MLP, ready in " in capsys.readouterr().err
    assert on_at_each_step == [True, True] and not kernels._state["on"]


def test_the_compile_cache_goes_under_sftlab_home_unless_inductors_own_variable_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTLAB_HOME", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "set-before")  # recorded, so the test leaves it as it found it
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setattr(kernels, "_compiled", {})
    seen = []
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: seen.append(
        os.environ.get("TORCHINDUCTOR_CACHE_DIR")) or function)
    prepared_tiny_model("qwen2")
    assert seen == [str(tmp_path / "inductor")] * len(kernels.EAGER)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(kernels, "_compiled", {})
    prepared_tiny_model("qwen2")
    assert seen[len(kernels.EAGER):] == [str(tmp_path / "mine")] * len(kernels.EAGER)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._dynamo sets
    kernels.use_sftlab_cache_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")


@pytest.mark.slow
def test_a_real_compile_writes_its_cache_under_sftlab_home(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    code = "from tests.test_kernels import prepared_tiny_model; print(prepared_tiny_model('qwen2')[1])"
    done = subprocess.run([sys.executable, "-c", code], env={**env, "SFTLAB_HOME": str(tmp_path)}, text=True,
                          capture_output=True, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert "compiled kernels: RMSNorm and gated MLP, ready in " in done.stdout, done.stderr[-2000:]
    assert list((tmp_path / "inductor").rglob("*.so")), "no compiled library in $SFTLAB_HOME/inductor"
