"""The training loop: token-normalised accumulation, frozen weights, NaN stop, Ctrl-C checkpoint, eval + best."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftlab.config import load_config
from sftlab.models.tiny import save_tiny

SFT_ROWS = [  # answers of clearly different lengths so padding and token counts differ per micro-batch
    {"messages": [{"role": "user", "content": f"question {i}"},
                  {"role": "assistant", "content": "answer " + "word " * (1 + (i * 7) % 13)}]}
    for i in range(8)
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_run(tmp_path: Path, arch: str = "llama", rows: list[dict] | None = None, name: str = "run",
             task: str = "causal_lm", **groups) -> dict:
    """A run config dict for a tiny saved model and a small jsonl file, overridable per group."""
    model_dir = tmp_path / f"base-{arch}-{task}"
    if not model_dir.exists():
        save_tiny(arch, model_dir, task=task, hidden=32, layers=1)
    data = write_jsonl(tmp_path / "train.jsonl", rows or SFT_ROWS)
    raw = {"model": {"path": str(model_dir)},
           "data": {"train": str(data), "cache_dir": str(tmp_path / "cache")},
           "train": {"stage": "sft", "max_steps": 2, "batch_size": 4, "lr": 1e-3, "max_length": 64},
           "output": {"dir": str(tmp_path / name), "tensorboard": False}}
    for group, values in groups.items():
        raw.setdefault(group, {}).update(values)
    return raw


def train(raw: dict, **kwargs):
    from sftlab.train import run_training

    return run_training(load_config(None, [], base=raw), show_progress=False, **kwargs)


def model_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def test_batch8_equals_batch2_times_accumulation4(tmp_path):
    big = train(tiny_run(tmp_path, name="b8", train={"batch_size": 8, "grad_accum": 1, "max_steps": 1}))
    small = train(tiny_run(tmp_path, name="b2x4", train={"batch_size": 2, "grad_accum": 4, "max_steps": 1}))
    assert big.losses[0] == pytest.approx(small.losses[0], rel=1e-5)
    norms = [json.loads((r.out_dir / "metrics.jsonl").read_text().splitlines()[0])["grad_norm"] for r in (big, small)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)  # same gradient magnitude, not only direction
    a, b = model_weights(big.out_dir), model_weights(small.out_dir)
    base = load_file(tmp_path / "base-llama-causal_lm" / "model.safetensors")
    assert any(not torch.equal(a[key], base[key]) for key in a)  # the step did change the weights
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_frozen_parameters_stay_bit_identical(tmp_path):
    raw = tiny_run(tmp_path, strategy={"kind": "freeze", "freeze": {"layers": "none", "modules": ["lm_head"]}})
    result = train(raw)
    after = model_weights(result.out_dir)
    base = load_file(tmp_path / "base-llama-causal_lm" / "model.safetensors")
    assert not torch.equal(after["lm_head.weight"], base["lm_head.weight"])
    for key, value in base.items():
        if key != "lm_head.weight":
            assert torch.equal(after[key], value), key


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    from sftlab.train import TrainingDiverged

    raw = tiny_run(tmp_path, train={"lr": 1e30, "max_steps": 5, "save_every_n_steps": 1, "max_grad_norm": None})
    with pytest.raises(TrainingDiverged, match=r"at step (\d+); training stopped before that update; "
                                               r"last good checkpoint: .*step-1") as err:
        train(raw)
    assert "\n" not in str(err.value)
    assert (tmp_path / "run" / "checkpoints" / "step-1" / "sftlab_state.json").is_file()
    assert not (tmp_path / "run" / "model").exists()


def test_ctrl_c_saves_a_checkpoint_and_says_where(tmp_path):
    from sftlab.train import TrainingInterrupted

    def interrupt(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="interrupted at step 2") as err:
        train(tiny_run(tmp_path, train={"max_steps": 4}), callbacks=[interrupt])
    state = json.loads((err.value.checkpoint / "sftlab_state.json").read_text())
    assert err.value.checkpoint.name == "step-2" and state["step"] == 2 and len(state["losses"]) == 2
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pt", "model.safetensors", "tokenizer.json"):
        assert (err.value.checkpoint / name).is_file(), name


def test_eval_keeps_best_and_early_stops(tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", SFT_ROWS[:3])
    raw = tiny_run(tmp_path, data={"validation": str(val)},
                   train={"max_steps": 8, "lr": 1e-30, "scheduler": "constant"},  # lr ~0: loss never improves
                   eval={"every_n_steps": 1, "patience": 2}, output={"dir": str(tmp_path / "run"), "tensorboard": True})
    result = train(raw)
    assert result.stopped == "early_stopping" and len(result.losses) == 3
    rows = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row.get("eval")]
    assert [row["step"] for row in evals] == [1, 2, 3] and all("perplexity" in row for row in evals)
    assert json.loads((result.out_dir / "best" / "sftlab_state.json").read_text())["best"]["step"] == 1
    assert result.metrics["best_step"] == 1 and "eval_loss" in result.metrics
    assert any(p.name.startswith("events.out.tfevents") for p in (result.out_dir / "tensorboard").iterdir())


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])  # Ctrl-C; kill, a job scheduler, a container runtime
def test_real_signal_stops_at_the_next_step_boundary(tmp_path, capsys, signame):
    import os
    import signal

    from sftlab.train import TrainingInterrupted

    number = getattr(signal, signame)

    def send(step, loss):
        if step == 1:
            os.kill(os.getpid(), number)  # the handler only sets a flag; the step finishes first

    before = signal.getsignal(number)  # default_int_handler, or SIG_IGN under a background shell job
    with pytest.raises(TrainingInterrupted, match="interrupted at step 1") as err:
        train(tiny_run(tmp_path, train={"max_steps": 3}), callbacks=[send])
    assert json.loads((err.value.checkpoint / "sftlab_state.json").read_text())["position"]["batches_done"] == 1
    assert signal.getsignal(number) is before  # handler restored
    said = "Ctrl-C again to stop at once" if signame == "SIGINT" else "SIGTERM; Ctrl-C stops at once"
    assert f"stopping after this step to save a checkpoint ({said})" in capsys.readouterr().err



@pytest.mark.parametrize("precision, expected", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_precision_sets_the_compute_dtype_not_the_weights(tmp_path, precision, expected):
    from sftlab.train.loop import cleanup, optimizer_step
    from sftlab.train.rundir import prepare_output_dir
    from sftlab.train.setup import build_session

    checkpointing = True if precision == "bf16" else "selective"  # one case of each reaches the model
    cfg = load_config(None, [], base=tiny_run(tmp_path, train={"precision": precision,
                                                              "gradient_checkpointing": checkpointing}))
    prepare_output_dir(Path(cfg.output.dir), resume=False, overwrite=False)
    session, _ = build_session(cfg, Path(cfg.output.dir), None, None)
    seen = []
    # the output head's weight is used directly by the fused head loss (no module call): watch the last MLP
    session.model.model.layers[-1].mlp.down_proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        loss, stats = optimizer_step(session, [[0, 1], [2, 3]])
    finally:
        cleanup(session)
    assert seen == [expected, expected] and stats["supervised_tokens"] > 0
    assert session.model.lm_head.weight.dtype == torch.float32
    assert session.model.is_activation_checkpointing


@pytest.mark.parametrize("kind, hf_name", [("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("warmup, total", [(0, 10), (3, 10), (12, 10)])
def test_schedules_follow_transformers(kind, hf_name, warmup, total):
    from transformers import get_scheduler

    from sftlab.train.optim import build_scheduler

    def lrs(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler = make(optimizer)
        seen = []
        for _ in range(total + 2):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    ours = lrs(lambda opt: build_scheduler(opt, kind, warmup, total))
    theirs = lrs(lambda opt: get_scheduler(hf_name, opt, num_warmup_steps=warmup, num_training_steps=total))
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert len(set(ours)) > 1 or (kind == "constant" and warmup == 0)
