"""16-bit training on a CPU without 16-bit matmul hardware: the run log and `sftlab plan` say so."""

import torch
from safetensors.torch import load_file

from sftlab.config import load_config
from sftlab.plan.planner import build_plan
from sftlab.plan.recommend import load_thresholds
from sftlab.plan.table import render_plan
from sftlab.train import precision
from sftlab.train.precision import cpu_runs_in_hardware, precision_line

from test_plan import tiny_config


def _config(tmp_path, **groups):
    base = tiny_config(tmp_path, hidden=32)
    for group, values in groups.items():
        base[group] = {**base[group], **values}
    return load_config(None, [], base=base)


def test_hardware_check_needs_onednn_and_the_instructions():
    found = torch.cpu.get_capabilities()
    for kind, onednn, names in [("bf16", torch.ops.mkldnn._is_mkldnn_bf16_supported, ("avx512_bf16", "amx_bf16")),
                                ("fp16", torch.ops.mkldnn._is_mkldnn_fp16_supported, ("avx512_fp16", "amx_fp16"))]:
        assert cpu_runs_in_hardware(kind) is (bool(onednn()) and any(found[name] for name in names))


def test_avx512_without_bf16_is_not_hardware(monkeypatch):
    """oneDNN calls bf16 supported on any AVX-512 CPU and converts in software where the CPU lacks AVX-512 BF16
    and AMX (a Xeon whose VM hides AMX ran bf16 matmuls 5x slower than fp32): auto must not pick bf16 there."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    flags = {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False, "avx512_fp16": False, "amx_fp16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert not cpu_runs_in_hardware("bf16")
    flags["amx_bf16"] = True
    assert cpu_runs_in_hardware("bf16")
    flags.update(amx_bf16=False, avx512_bf16=True)
    assert cpu_runs_in_hardware("bf16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not cpu_runs_in_hardware("bf16")  # the instructions without oneDNN's kernels are no help


def test_line_names_every_slow_setting_and_only_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: False)
    both = _config(tmp_path, train={"precision": "bf16"}, model={"dtype": "bfloat16"})
    line = precision_line(both, torch.device("cpu"))
    assert line.startswith("warning: train.precision: bf16 and model.dtype: bfloat16 on a CPU without 16-bit")
    assert "train.precision: auto or fp32 and model.dtype: float32 are faster here" in line and "\n" not in line
    assert precision_line(both, "cuda:0") is None and precision_line(both, torch.device("cuda", 1)) is None
    half = _config(tmp_path, model={"dtype": "float16"})
    assert precision_line(half, "cpu").startswith("warning: model.dtype: float16 on a CPU")
    assert precision_line(_config(tmp_path), "cpu") is None  # fp32 has hardware everywhere


def test_no_line_where_the_cpu_has_the_instructions(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: seen.append(kind) or kind == "bf16")
    assert precision_line(_config(tmp_path, train={"precision": "bf16"}, model={"dtype": "bfloat16"}), "cpu") is None
    assert seen == ["bf16", "bf16"]
    assert "model.dtype: float16" in precision_line(_config(tmp_path, model={"dtype": "float16"}), "cpu")


def test_plan_and_training_log_carry_the_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: False)
    cfg = _config(tmp_path, train={"precision": "bf16", "max_steps": 1})
    plan = build_plan(cfg, None, load_thresholds(), ("full", "lora"))
    assert plan["precision_warning"] == precision_line(cfg, "cpu")
    assert plan["precision_warning"] in render_plan(plan).splitlines()
    from sftlab.train import run_training

    run_training(cfg, show_progress=False)
    assert precision_line(cfg, "cpu") in capsys.readouterr().err.splitlines()
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: True)
    assert build_plan(cfg, None, load_thresholds(), ("full",))["precision_warning"] is None


def test_plan_resolves_auto_precision_as_training_will(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: False)
    cfg = _config(tmp_path, train={"precision": "auto"})
    fp32 = build_plan(cfg, None, load_thresholds(), ("full",))
    assert fp32["precision_warning"] is None  # auto never picks bf16 where it has no hardware
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: True)
    bf16 = build_plan(cfg, None, load_thresholds(), ("full",))
    assert bf16["rows"]["full"]["estimate"]["activations"] < fp32["rows"]["full"]["estimate"]["activations"]


def test_sessions_built_directly_resolve_auto_too(tmp_path, monkeypatch):
    """`sftlab compare` and the plan probe build sessions without run_training: auto is resolved there as well."""
    from sftlab.train.loop import cleanup
    from sftlab.train.setup import build_session

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = _config(tmp_path, train={"precision": "auto"})
    for hardware, expected in ((False, "no"), (True, "bf16")):
        monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: hardware)
        session, _ = build_session(cfg, tmp_path / f"run-{hardware}", None, None)
        try:
            assert session.cfg.train.precision == {"no": "fp32", "bf16": "bf16"}[expected]
            assert session.accelerator.mixed_precision == expected
        finally:
            cleanup(session)


def test_model_dtype_auto_follows_the_resolved_precision(tmp_path, monkeypatch, capsys):
    """bf16 weights (fp32 master copies) where bf16 runs in hardware, fp32 weights elsewhere; the plan counts the
    weights in that dtype and the run records it."""
    from sftlab.train import run_training
    from sftlab.train.precision import resolve_precision

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = _config(tmp_path, model={"dtype": "auto"}, train={"precision": "auto", "max_steps": 1})
    for hardware, dtype in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: hardware)
        resolved, line = resolve_precision(cfg)
        assert resolved.model.dtype == dtype and line.endswith(f"model.dtype: auto -> {dtype} "
                                                               f"(train.precision {'bf16' if hardware else 'fp32'})")
        plan = build_plan(cfg, None, load_thresholds(), ("full",))
        assert plan["rows"]["full"]["param_dtype"] == dtype
    explicit = _config(tmp_path, model={"dtype": "auto"}, train={"precision": "fp32"})
    assert resolve_precision(explicit)[0].model.dtype == "float32"  # follows an explicit precision too
    capsys.readouterr()
    result = run_training(cfg, show_progress=False)  # the bf16 machine of the last loop round
    assert "model.dtype: auto -> bfloat16 (train.precision bf16)" in capsys.readouterr().err
    assert "dtype: bfloat16" in (result.out_dir / "config.yaml").read_text()
    weights = load_file(result.out_dir / "model" / "model.safetensors")
    assert all(tensor.dtype == torch.bfloat16 for tensor in weights.values())


def test_auto_scores_its_calibration_batches_in_the_precision_the_run_trains_in(tmp_path, monkeypatch):
    """strategy.kind=auto's importance pass runs under bf16 autocast where the run trains in bf16 (2-3x faster on
    CPUs with bf16 instructions), and in fp32 otherwise; it picks the same units here either way."""
    import sftlab.train.setup as setup
    from sftlab.strategy import importance

    seen: list[bool] = []
    real_loss_sum = setup.loss_sum

    def recording_loss_sum(model, batch, stage):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_loss_sum(model, batch, stage)

    monkeypatch.setattr(setup, "loss_sum", recording_loss_sum)
    chosen = {}
    real_apply = importance.apply_auto
    monkeypatch.setattr(importance, "apply_auto", lambda *a: chosen.setdefault(len(chosen), real_apply(*a)))
    for setting in ("bf16", "fp32", "fp16"):
        seen.clear()
        (tmp_path / setting).mkdir()
        cfg = load_config(None, [], base={**tiny_config(tmp_path / setting, precision=setting),
                                          "strategy": {"kind": "auto"}})
        build_plan(cfg, None, load_thresholds(), ("auto",))
        assert seen and all(flag == (setting == "bf16") for flag in seen), (setting, seen)
    assert chosen[0][0]["chosen"] == chosen[1][0]["chosen"]
