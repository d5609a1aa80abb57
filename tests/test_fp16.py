"""train.precision: fp16: fp16 autocast with dynamic loss scaling (sftlab.train.scaling), on CPU.

The model is a tiny llama (hidden 32, 2 layers): fp16 matmuls run in software on CPUs without AVX-512 FP16.
The tolerance against fp32 is rel 1e-3 on the losses (measured: about 1e-5).
"""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sftlab.config import load_config
from sftlab.errors import SftlabError
from sftlab.models.tiny import save_tiny
from sftlab.plan.memory import ModelShape, Workload, estimate_memory
from sftlab.train import TrainingDiverged, TrainingInterrupted, precision, scaling, setup, validate
from sftlab.train.precision import low_precision_settings, precision_line, resolve_precision, resolve_setting
from test_train_loop import SFT_ROWS, train, write_jsonl

REPO = Path(__file__).resolve().parents[1]
FREEZE = {"kind": "freeze", "freeze": {"layers": "last:1"}}  # only the second of the 2 decoder layers trains


def run_config(tmp_path: Path, name: str, make_model: bool = True, **groups) -> dict:
    """An fp16 run of a tiny 2-layer llama (hidden 32) on 8 short chats, overridable per group."""
    model_dir = tmp_path / "base"
    if make_model and not model_dir.exists():
        save_tiny("llama", model_dir, hidden=32, layers=2)
    data = write_jsonl(tmp_path / "train.jsonl", SFT_ROWS)
    raw = {"model": {"path": str(model_dir)}, "data": {"train": str(data), "cache_dir": str(tmp_path / "cache")},
           "train": {"stage": "sft", "max_steps": 4, "batch_size": 4, "lr": 1e-3, "max_length": 64, "precision": "fp16"},
           "output": {"dir": str(tmp_path / name), "tensorboard": False}}
    for group, values in groups.items():
        raw.setdefault(group, {}).update(values)
    return raw


def train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if not row.get("eval")]


def _recording(real, calls: list):
    """`real` (a loss_sum), noting the autocast dtype each call runs under (None: no autocast)."""
    def loss_sum(*args, **kwargs):
        calls.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(*args, **kwargs)
    return loss_sum


@pytest.fixture(scope="module")
def fp16_and_fp32(tmp_path_factory):
    """The same freeze run in fp16 and fp32, with evaluation every 2 steps; the autocast every loss ran under."""
    tmp_path = tmp_path_factory.mktemp("fp16")
    validation = write_jsonl(tmp_path / "val.jsonl", SFT_ROWS[:3])
    runs, seen = {}, {}
    for kind in ("fp16", "fp32"):
        seen[kind] = {"train": [], "eval": []}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(setup, "loss_sum", _recording(setup.loss_sum, seen[kind]["train"]))
            patch.setattr(validate, "loss_sum", _recording(validate.loss_sum, seen[kind]["eval"]))
            runs[kind] = train(run_config(tmp_path, kind, train={"precision": kind}, strategy=FREEZE,
                                          data={"validation": str(validation)}, eval={"every_n_steps": 2}))
    return tmp_path, runs, seen


def test_fp16_steps_follow_fp32_and_train_only_the_trainable_weights(fp16_and_fp32):
    tmp_path, runs, seen = fp16_and_fp32
    half, full = runs["fp16"], runs["fp32"]
    assert len(half.losses) == 4 and all(math.isfinite(loss) for loss in half.losses)
    assert half.losses == pytest.approx(full.losses, rel=1e-3)
    assert half.losses != full.losses  # the matmuls did run in fp16
    assert set(seen["fp16"]["train"]) == {torch.float16} and set(seen["fp32"]["train"]) == {None}
    base = load_file(tmp_path / "base" / "model.safetensors")
    after = load_file(half.out_dir / "model" / "model.safetensors")
    trained = {key for key in base if ".layers.1." in key}
    assert trained and all(not torch.equal(after[key], base[key]) for key in trained)
    assert all(torch.equal(after[key], base[key]) for key in base.keys() - trained)  # frozen: bit-identical
    assert all(tensor.dtype == torch.float32 for tensor in after.values())  # fp16 autocast over fp32 weights
    rows = train_rows(half.out_dir)
    assert [(row["loss_scale"], row["skipped"]) for row in rows] == [(scaling.INIT_SCALE, False)] * 4
    norms = [[row["grad_norm"] for row in train_rows(run.out_dir)] for run in (half, full)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-2)  # unscaled before they were measured and clipped
    assert half.metrics["skipped_steps"] == 0
    assert "loss_scale" not in train_rows(full.out_dir)[0] and "skipped_steps" not in full.metrics
    assert "precision fp16" in (half.out_dir / "model" / "README.md").read_text()


def test_evaluation_runs_under_fp16_autocast(fp16_and_fp32):
    _, runs, seen = fp16_and_fp32
    assert len(seen["fp16"]["eval"]) >= 2 and set(seen["fp16"]["eval"]) == {torch.float16}
    assert set(seen["fp32"]["eval"]) == {None}
    assert runs["fp16"].metrics["eval_loss"] == pytest.approx(runs["fp32"].metrics["eval_loss"], rel=1e-3)
    assert runs["fp16"].metrics["eval_loss"] != runs["fp32"].metrics["eval_loss"]


def test_an_overflow_skips_the_step_and_halves_the_scale(tmp_path, monkeypatch, capsys):
    """A first scale of 2**24 overflows fp16's gradients (the default 2**16 does not here): those steps leave the
    weights and AdamW state bit-identical, halve the scale and get a row; the schedule and data move on."""
    monkeypatch.setattr(scaling, "INIT_SCALE", 2.0**24)
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: False)
    steps = 8
    result = train(run_config(tmp_path, "run", train={"max_steps": steps, "save_every_n_steps": 1, "log_every_n_steps": 4},
                              output={"keep_checkpoints": steps}))
    checkpoints = [tmp_path / "run" / "checkpoints" / f"step-{k}" for k in range(1, steps + 1)]
    weights = [load_file(tmp_path / "base" / "model.safetensors")] + [load_file(c / "model.safetensors") for c in checkpoints]
    scales = [2.0**24] + [torch.load(c / "scaler.pt", weights_only=True)["scale"] for c in checkpoints]
    skipped = {k for k in range(1, steps + 1) if all(torch.equal(weights[k][n], weights[k - 1][n]) for n in weights[0])}
    assert 1 in skipped and max(set(range(1, steps + 1)) - skipped) == steps  # overflows first, then it trains
    for k in range(1, steps + 1):
        assert scales[k] == (scales[k - 1] / 2 if k in skipped else scales[k - 1]), k
    for k in skipped - {1}:  # AdamW's moments and step counts stay as they were too
        before, now = (torch.load(checkpoints[i] / "optimizer.pt", weights_only=True)["state"] for i in (k - 2, k - 1))
        assert all(torch.equal(before[p][name], now[p][name]) for p in before for name in before[p])
    rows = train_rows(result.out_dir)
    assert {row["step"] for row in rows} == skipped | {4, 8}  # a skipped step always gets its row
    for row in rows:
        assert row["skipped"] == (row["step"] in skipped) and row["loss_scale"] == scales[row["step"] - 1]
        assert (row["grad_norm"] is None) == row["skipped"] and math.isfinite(row["loss"])
        assert row["lr"] == pytest.approx(1e-3 * (steps - row["step"]) / steps)  # the schedule advanced
        assert row["epoch"] == pytest.approx(row["step"] / 2)  # its data was used up (2 micro-batches an epoch)
    assert result.metrics["skipped_steps"] == len(skipped) and len(result.losses) == steps
    warning = "warning: train.precision: fp16 on a CPU without 16-bit matmul instructions"
    assert any(line.startswith(warning) for line in capsys.readouterr().err.splitlines())


@pytest.mark.parametrize("max_grad_norm", [1.0, None])  # without clipping scaler.step finds the overflow itself
def test_a_loss_scale_below_one_stops_the_run(tmp_path, monkeypatch, max_grad_norm):
    monkeypatch.setattr(scaling, "INIT_SCALE", 4.0)
    load_model = setup._load_model

    def poisoned(*args, **kwargs):  # every backward leaves an infinite gradient in one trainable weight
        model, trainable = load_model(*args, **kwargs)
        next(p for p in model.parameters() if p.requires_grad).register_hook(lambda g: torch.full_like(g, math.inf))
        return model, trainable

    monkeypatch.setattr(setup, "_load_model", poisoned)
    raw = run_config(tmp_path, "run", train={"max_steps": 6, "save_every_n_steps": 1, "max_grad_norm": max_grad_norm})
    with pytest.raises(TrainingDiverged) as err:
        train(raw)
    assert str(err.value) == ("the fp16 loss scale fell below 1 (0.5; the gradients overflowed fp16 at every scale "
                              "tried) at step 3; training stopped before that update; last good checkpoint: "
                              f"{tmp_path / 'run' / 'checkpoints' / 'step-2'}; train with train.precision bf16 "
                              "(where the hardware has it) or fp32")
    base = load_file(tmp_path / "base" / "model.safetensors")
    kept = load_file(tmp_path / "run" / "checkpoints" / "step-2" / "model.safetensors")
    assert all(torch.equal(kept[key], base[key]) for key in base)  # two skipped steps: nothing moved
    assert [row["loss_scale"] for row in train_rows(tmp_path / "run")] == [4.0, 2.0]


def test_a_non_finite_loss_still_stops_an_fp16_run(tmp_path):
    raw = run_config(tmp_path, "run", train={"lr": 1e30, "max_steps": 3})  # step 1's update overflows fp16's range
    with pytest.raises(TrainingDiverged, match=r"^train loss is (nan|inf) at step 2; training stopped before that "
                                               r"update; no checkpoint was saved .*; start again with a lower train\.lr"):
        train(raw)


def _interrupt_at(stop: int):
    def callback(step, loss):
        if step == stop:
            raise KeyboardInterrupt
    return callback


def test_resume_under_fp16_continues_exactly_with_the_saved_scale(tmp_path, monkeypatch):
    from sftlab.train.loop import cleanup
    from sftlab.train.setup import build_session

    monkeypatch.setattr(scaling, "INIT_SCALE", 2.0**22)  # early overflows: the saved scale is not the first one
    settings = dict(train={"max_steps": 6, "scheduler": "cosine", "warmup_steps": 1}, output={"keep_checkpoints": 2})
    straight = train(run_config(tmp_path, "a", **settings))
    with pytest.raises(TrainingInterrupted):
        train(run_config(tmp_path, "b", **settings), callbacks=[_interrupt_at(3)])
    checkpoint = tmp_path / "b" / "checkpoints" / "step-3"
    saved = torch.load(checkpoint / "scaler.pt", weights_only=True)
    assert saved["scale"] < 2.0**22
    bare = tmp_path / "no-scaler"  # a checkpoint without scaler.pt (not written by an fp16 run) starts a fresh one
    shutil.copytree(checkpoint, bare)
    (bare / "scaler.pt").unlink()
    cfg = load_config(None, [], base=run_config(tmp_path, "b", **settings))
    for directory, scale in ((checkpoint, saved["scale"]), (bare, 2.0**22)):
        session, _ = build_session(cfg, tmp_path / "b", directory, None)
        try:
            assert session.scaler.get_scale() == scale and session.scaler.state_dict()["_growth_tracker"] == (
                saved["_growth_tracker"] if directory == checkpoint else 0)
        finally:
            cleanup(session)
    with pytest.raises(SftlabError, match=r"differs from the checkpoint's run in train\.precision \('fp16' -> 'fp32'\)"):
        train(run_config(tmp_path, "b", train={**settings["train"], "precision": "fp32"}), resume=True)
    resumed = train(run_config(tmp_path, "b", **settings), resume=True)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    final, expected = (load_file(run.out_dir / "model" / "model.safetensors") for run in (resumed, straight))
    assert all(torch.equal(final[key], expected[key]) for key in expected)
    columns = [[(row["step"], row["loss_scale"], row["skipped"]) for row in train_rows(run.out_dir)]
               for run in (resumed, straight)]
    assert columns[0] == columns[1] and any(skipped for _, _, skipped in columns[0])
    assert resumed.metrics["skipped_steps"] == straight.metrics["skipped_steps"] > 0


def test_the_compiled_kernel_warm_up_runs_under_fp16_autocast_and_the_scaler_starts_at_65536(tmp_path, monkeypatch):
    from sftlab.models import kernels
    from sftlab.train.loop import cleanup
    from sftlab.train.setup import build_session

    seen = []

    def prepare_kernels(model, setting, device, precision_context):
        with precision_context():
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return "compiled kernels: off"

    monkeypatch.setattr(kernels, "prepare_kernels", prepare_kernels)
    cfg = load_config(None, [], base=run_config(tmp_path, "run"))
    session, _ = build_session(cfg, tmp_path / "run", None, None)
    try:
        assert seen == [torch.float16] and session.accelerator.mixed_precision == "no"
        assert session.scaler.state_dict() == {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                               "growth_interval": 2000, "_growth_tracker": 0}
    finally:
        cleanup(session)


def test_accelerates_own_fp16_does_nothing_on_a_cpu():
    """Why sftlab owns fp16's autocast and scaler: accelerate, told fp16 on a CPU, uses neither."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    try:
        accelerator = Accelerator(mixed_precision="fp16", cpu=True)
        with accelerator.autocast():
            assert not torch.is_autocast_enabled("cpu")
        assert accelerator.scaler is None
    finally:
        AcceleratorState._reset_state()


@pytest.mark.parametrize("groups, message", [
    ({"model": {"dtype": "bfloat16"}}, "model.dtype float32 (or auto), not bfloat16"),
    ({"model": {"dtype": "float16"}}, "model.dtype float32 (or auto), not float16"),
    ({"train": {"distributed": "fsdp"}}, "fsdp"),
    ({"train": {"distributed": "zero2"}}, "zero2"),
    ({"train": {"distributed": "zero3"}}, "zero3"),
])
def test_config_refuses_what_fp16_cannot_train(tmp_path, groups, message):
    if "model" in groups:
        message = (f"config: train.precision=fp16 needs {message}: fp16 autocast with loss scaling trains fp32 "
                   "weights only (the gradient scaler refuses fp16 gradients); bfloat16 weights train with "
                   "train.precision bf16")
    else:
        message = (f"config: train.precision=fp16 runs in one process or under train.distributed=ddp, not {message} "
                   f"(its gradient scaler is sftlab's own); use ddp, or train.precision bf16 or fp32 with {message}")
    raw = run_config(tmp_path, "run", make_model=False, **groups)
    with pytest.raises(SftlabError) as err:
        load_config(None, [], base=raw)
    assert str(err.value) == message


def test_model_dtype_auto_is_float32_under_fp16_and_auto_never_picks_fp16(tmp_path, monkeypatch):
    cfg = load_config(None, [], base=run_config(tmp_path, "run", make_model=False, model={"dtype": "auto"}))
    resolved, line = resolve_precision(cfg)
    assert resolved.model.dtype == "float32" and resolved.train.precision == "fp16"
    assert line == "model.dtype: auto -> float32 (train.precision fp16)"
    assert resolve_setting("fp16") == ("fp16", None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    # a T4 or V100: torch says bf16 is supported, by emulation
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_setting("auto") == ("fp32", "precision: auto -> fp32 (this GPU has no bf16 matmul instructions; "
                                               "train.precision: fp16 trains with fp16 autocast and loss scaling)")
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert resolve_setting("auto") == ("bf16", "precision: auto -> bf16 (this GPU runs bf16 matmuls in hardware)")


def test_cpu_warning_and_memory_estimate_count_fp16_as_16_bit(tmp_path, monkeypatch):
    cfg = load_config(None, [], base=run_config(tmp_path, "run", make_model=False))
    assert low_precision_settings(cfg) == {"train.precision: fp16": "fp16"}
    asked = []
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: asked.append(kind) or kind == "bf16")
    line = precision_line(cfg, "cpu")  # a CPU with bf16 instructions but none for fp16
    assert asked == ["fp16"] and "\n" not in line
    assert line.startswith("warning: train.precision: fp16 on a CPU without 16-bit matmul instructions (no AMX or "
                           "AVX-512 BF16/FP16): its matmuls run in software")
    assert precision_line(cfg, "cuda:0") is None
    monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind: True)
    assert precision_line(cfg, "cpu") is None
    shape = ModelShape(layers=4, hidden=256, intermediate=512, heads=4, vocab=600)
    estimates = {kind: estimate_memory(shape, 10**6, 10**6, 4, Workload(batch=4, seq=128, precision=kind))
                 for kind in ("fp32", "bf16", "fp16")}
    assert Workload(batch=1, seq=1, precision="fp16").activation_bytes == 2
    assert estimates["fp16"] == estimates["bf16"] and estimates["fp16"].activations < estimates["fp32"].activations


WORKER = textwrap.dedent('''
    """Train a config in 2 processes (torchrun) with the first loss scale given on the command line."""
    import os, sys
    from sftlab.config import load_config

    if "WORLD_SIZE" not in os.environ:  # the launcher
        from sftlab.train.distributed import launch
        launch([__file__, *sys.argv[1:]], 2)
        sys.exit(0)
    from sftlab.train import run_training, scaling

    scaling.INIT_SCALE = float(sys.argv[2])
    run_training(load_config(sys.argv[1], []), show_progress=False)
''')


@pytest.mark.slow
def test_fp16_under_ddp_equals_one_process_with_twice_the_batch(tmp_path, monkeypatch):
    """2 CPU processes (gloo) overflow and skip the same steps as 1 process with batch 2B (every rank's scaler
    sees the same all-reduced gradients), with the same losses."""
    raw = run_config(tmp_path, "two", train={"batch_size": 2, "grad_accum": 2, "max_steps": 6})
    config, worker = tmp_path / "two.yaml", tmp_path / "worker.py"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    worker.write_text(WORKER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, str(worker), str(config), str(2.0**22)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setattr(scaling, "INIT_SCALE", 2.0**22)
    single = train(run_config(tmp_path, "one", train={"batch_size": 4, "grad_accum": 2, "max_steps": 6}))
    two, one = train_rows(tmp_path / "two"), train_rows(single.out_dir)
    assert [(r["loss_scale"], r["skipped"]) for r in two] == [(r["loss_scale"], r["skipped"]) for r in one]
    assert any(r["skipped"] for r in one) and not all(r["skipped"] for r in one)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-3)
