"""--resume continues the latest checkpoint exactly; a changed config or a missing checkpoint is refused."""

import json
from pathlib import Path

import pytest

from sftlab.errors import SftlabError
from test_train_loop import tiny_run, train


def _interrupt_at(step_to_stop):
    def callback(step, loss):
        if step == step_to_stop:
            raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize("arch, extra", [
    ("gpt2", {}),  # full fine-tuning; gpt2 has dropout, so the restored RNG state matters
    ("qwen2", {"precision": "bf16", "gradient_checkpointing": True, "lora": True}),  # adapter checkpoints, autocast
    ("llama", {"precision": "bf16", "bf16_weights": True}),  # bf16 weights: the fp32 master copies must be restored
])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, arch, extra):
    from sftlab.train import TrainingInterrupted

    settings = dict(train={"max_steps": 6, "batch_size": 3, "grad_accum": 1, "scheduler": "cosine", "warmup_steps": 2},
                    output={"dir": str(tmp_path / "a"), "keep_checkpoints": 2, "tensorboard": False})
    if extra.pop("lora", False):
        settings["strategy"] = {"kind": "lora", "lora": {"rank": 4, "dropout": 0.1}}
    if extra.pop("bf16_weights", False):
        settings["model"] = {"dtype": "bfloat16"}
    settings["train"].update(extra)
    straight = train(tiny_run(tmp_path, arch, **settings))
    settings["output"]["dir"] = str(tmp_path / "b")
    with pytest.raises(TrainingInterrupted):  # 8 rows / batch 3: step 3 stops mid-epoch 2
        train(tiny_run(tmp_path, arch, **settings), callbacks=[_interrupt_at(4)])
    resumed = train(tiny_run(tmp_path, arch, **settings), resume=True)
    assert len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    if "strategy" in settings:  # the final adapter loads with peft on top of its base model
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base-qwen2-causal_lm")
        assert isinstance(PeftModel.from_pretrained(base, resumed.out_dir / "model"), PeftModel)


def test_resume_with_changed_schedule_names_the_keys(tmp_path):
    from sftlab.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(tiny_run(tmp_path, train={"max_steps": 3}), callbacks=[_interrupt_at(1)])
    with pytest.raises(SftlabError, match=r"differs from the checkpoint's run in train\.lr \(0\.001 -> 0\.0005\); resume with the same "
                                          r"settings \(train\.max_steps and train\.epochs may change\)"):
        train(tiny_run(tmp_path, train={"max_steps": 5, "lr": 5e-4}), resume=True)  # the length alone may change
    # how freed memory is kept, and by which malloc, changes no arithmetic: it may differ on resume
    resumed = train(tiny_run(tmp_path, train={"max_steps": 3, "keep_freed_memory": False, "allocator": "system"}),
                    resume=True)
    assert len(resumed.losses) == 3


def test_existing_output_needs_overwrite_or_resume(tmp_path):
    train(tiny_run(tmp_path, train={"max_steps": 1}))
    with pytest.raises(SftlabError, match="already exists and is not empty; pass --overwrite"):
        train(tiny_run(tmp_path, train={"max_steps": 1}))
    with pytest.raises(SftlabError, match="--resume: no checkpoint"):
        train(tiny_run(tmp_path, train={"max_steps": 1}), resume=True)
    again = train(tiny_run(tmp_path, train={"max_steps": 1}), overwrite=True)
    assert (again.out_dir / "model" / "config.json").is_file()


def test_overwrite_keeps_the_previous_run_until_the_new_one_has_set_up(tmp_path):
    first = train(tiny_run(tmp_path, train={"max_steps": 1}))
    before = {path.relative_to(first.out_dir): path.read_bytes() for path in first.out_dir.rglob("*") if path.is_file()}
    assert (first.out_dir / "trainable.json").is_file() and (first.out_dir / "model" / "config.json").is_file()
    bad = tiny_run(tmp_path, train={"max_steps": 1})
    bad["data"]["train"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(SftlabError, match="data file not found"):
        train(bad, overwrite=True)  # the bad data is found after --overwrite was accepted: nothing of the old run is lost
    after = {path.relative_to(first.out_dir): path.read_bytes() for path in first.out_dir.rglob("*") if path.is_file()}
    assert after == before
    with pytest.raises(SftlabError, match=r"--resume: no checkpoint in .*; start --overwrite instead of --resume"):
        train(tiny_run(tmp_path, train={"max_steps": 1}), resume=True)
    (first.out_dir / "notes.txt").write_text("mine")
    again = train(tiny_run(tmp_path, train={"max_steps": 2}), overwrite=True)
    assert sorted(path.name for path in again.out_dir.iterdir()) == [
        "config.yaml", "data_stats.json", "metrics.json", "metrics.jsonl", "model", "notes.txt", "trainable.json"]
    assert json.loads((again.out_dir / "metrics.json").read_text())["step"] == 2
    fresh = tiny_run(tmp_path, name="fresh", train={"max_steps": 1})
    fresh["data"]["train"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(SftlabError, match="data file not found"):
        train(fresh)
    assert not Path(fresh["output"]["dir"]).exists()  # the failed run leaves no empty directory behind
    Path(fresh["output"]["dir"]).mkdir()  # one the user made stays
    with pytest.raises(SftlabError, match="data file not found"):
        train(fresh)
    assert Path(fresh["output"]["dir"]).is_dir()


def test_a_previous_run_left_aside_by_a_killed_overwrite_is_not_hidden(tmp_path):
    """An --overwrite killed during its setup leaves the old run in .sftlab-previous-run/: a resume or a fresh run
    says so instead of "no checkpoint"; --overwrite discards it."""
    from sftlab.train.rundir import PREVIOUS_RUN

    first = train(tiny_run(tmp_path, train={"max_steps": 1}))
    held = first.out_dir / PREVIOUS_RUN
    held.mkdir()
    for name in ("model", "metrics.json"):
        (first.out_dir / name).replace(held / name)
    for resume in (True, False):
        with pytest.raises(SftlabError, match=rf"{PREVIOUS_RUN}/ holds the entries of a run that an interrupted "
                                              "--overwrite set aside; move them back"):
            train(tiny_run(tmp_path, train={"max_steps": 1}), resume=resume)
    assert sorted(p.name for p in held.iterdir()) == ["metrics.json", "model"]
    train(tiny_run(tmp_path, train={"max_steps": 1}), overwrite=True)
    assert not held.exists()


def test_trained_weights_start_a_new_run_through_model_path(tmp_path):
    first = train(tiny_run(tmp_path, train={"max_steps": 2}))
    raw = tiny_run(tmp_path, name="second", train={"max_steps": 1})
    raw["model"]["path"] = str(first.out_dir / "model")
    second = train(raw)
    assert second.losses[0] < first.losses[0]  # it starts from the trained weights, not the random base
    assert (second.out_dir / "model" / "model.safetensors").is_file()


def test_resume_with_more_steps_extends_the_run(tmp_path, capsys):
    """A constant schedule: stopping at step 2 of 4 and resuming for 6 gives the losses of a 6-step run; a linear
    one: the learning rate after resuming follows the schedule for the new length."""
    from sftlab.config import load_config
    from sftlab.train import TrainingInterrupted
    from sftlab.checkpoints import latest_checkpoint
    from sftlab.train.loop import cleanup
    from sftlab.train.optim import lr_factor
    from sftlab.train.setup import build_session

    def settings(name, steps, schedule):
        return tiny_run(tmp_path, name=name, train={"max_steps": steps, "batch_size": 3, "scheduler": schedule,
                                                     "warmup_steps": 0})

    straight = train(settings("straight", 6, "constant"))
    with pytest.raises(TrainingInterrupted):
        train(settings("extended", 4, "constant"), callbacks=[_interrupt_at(2)])
    capsys.readouterr()
    extended = train(settings("extended", 6, "constant"), resume=True)
    assert extended.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    assert "(step 2 of 6; the run was 4 steps, and the learning-rate schedule now runs to step 6)" in \
        capsys.readouterr().err
    assert "max_steps: 6" in (tmp_path / "extended" / "config.yaml").read_text()

    with pytest.raises(TrainingInterrupted):
        train(settings("linear", 4, "linear"), callbacks=[_interrupt_at(2)])
    cfg = load_config(None, [], base=settings("linear", 8, "linear"))
    session, _ = build_session(cfg, tmp_path / "linear", latest_checkpoint(tmp_path / "linear"), None)
    try:  # step 3 runs at the 8-step schedule's rate, not at the rate the 4-step run had left in the optimizer
        assert session.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor("linear", 2, 0, 8))
    finally:
        cleanup(session)
    train(settings("linear", 8, "linear"), resume=True)
    rows = [json.loads(line) for line in (tmp_path / "linear" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 9))
    for row in rows[2:]:  # steps 3-8 follow the 8-step schedule (the lr logged is the one for the next step)
        assert row["lr"] == pytest.approx(1e-3 * lr_factor("linear", row["step"], 0, 8))
    assert rows[1]["lr"] == pytest.approx(1e-3 * lr_factor("linear", 2, 0, 4))  # before: the 4-step schedule


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path):
    from sftlab.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(tiny_run(tmp_path, train={"max_steps": 4}), callbacks=[_interrupt_at(3)])
    with pytest.raises(SftlabError, match=r"^--resume: train.max_steps / train.epochs now give 3 steps, but the "
                                          r"checkpoint is at step 3; ask for more steps than that$"):
        train(tiny_run(tmp_path, train={"max_steps": 3}), resume=True)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


# what happened to the latest checkpoint's files -> the file the one-line error must name
DAMAGE = {
    "truncated optimizer state": (lambda step: _truncate(step / "optimizer.pt"), "optimizer.pt"),
    "missing scheduler state": (lambda step: (step / "scheduler.pt").unlink(), "scheduler.pt"),
    "garbage random states": (lambda step: (step / "rng_state.pt").write_text("garbage"), "rng_state.pt"),
    "truncated weights": (lambda step: _truncate(step / "model.safetensors"), "model.safetensors"),
    "missing weights": (lambda step: (step / "model.safetensors").unlink(), "model.safetensors"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_from_a_damaged_checkpoint_is_one_line_and_changes_nothing(tmp_path, damage):
    """A checkpoint whose files were cut short or removed after it was written (a full disk, a partial copy) is
    refused with one line naming the file and what to do; the run directory stays as it was."""
    settings = {"train": {"max_steps": 2, "save_every_n_steps": 1}, "output": {"keep_checkpoints": 2}}
    first = train(tiny_run(tmp_path, **settings))
    damage_it, name = DAMAGE[damage]
    damage_it(first.out_dir / "checkpoints" / "step-2")
    before = {path: path.read_bytes() for path in first.out_dir.rglob("*") if path.is_file()}
    settings["train"]["max_steps"] = 3
    with pytest.raises(SftlabError) as error:
        train(tiny_run(tmp_path, **settings), resume=True)
    message = str(error.value)
    assert "\n" not in message and name in message and "step-2" in message, message
    assert "step-1" in message  # where to go instead: the earlier checkpoint
    assert {path: path.read_bytes() for path in first.out_dir.rglob("*") if path.is_file()} == before


def test_resume_on_changed_training_data_is_refused(tmp_path):
    """The same data.train path with other contents: the checkpoint's data position (epoch, batches done) would point
    into other rows, and the run would silently go on with a different order and data; it is refused with one line."""
    from sftlab.train import TrainingInterrupted
    from test_train_loop import SFT_ROWS

    with pytest.raises(TrainingInterrupted):
        train(tiny_run(tmp_path, train={"max_steps": 3}), callbacks=[_interrupt_at(1)])
    run_dir = tmp_path / "run"
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    with pytest.raises(SftlabError, match=r"^--resume: the training data differs from the checkpoint's run "
                                          r"\(rows \d+ -> \d+, tokens"):
        train(tiny_run(tmp_path, rows=SFT_ROWS[:6], train={"max_steps": 3}), resume=True)
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    resumed = train(tiny_run(tmp_path, train={"max_steps": 3}), resume=True)  # the data it trained on: resumes
    assert len(resumed.losses) == 3


def test_resume_names_a_checkpoint_directory_without_its_sidecar(tmp_path):
    """A step directory without sftlab_state.json (copied in part, or its sidecar deleted) is not resumed from; when
    it is the only one, the error names it instead of saying that there is no checkpoint at all."""
    first = train(tiny_run(tmp_path, train={"max_steps": 2, "save_every_n_steps": 2}))
    (first.out_dir / "checkpoints" / "step-2" / "sftlab_state.json").unlink()
    with pytest.raises(SftlabError, match=r"^--resume: no complete checkpoint in .*checkpoints: step-2 has no "
                                          r"sftlab_state.json; start --overwrite instead of --resume"):
        train(tiny_run(tmp_path, train={"max_steps": 3, "save_every_n_steps": 2}), resume=True)


def test_resume_says_which_newer_step_directory_it_skipped(tmp_path, capsys):
    """The newest step directory lacks its sidecar (cut short): the run resumes from the newest complete one and the
    log says which directory it passed over, not only where it resumed."""
    keep = {"keep_checkpoints": 2}
    first = train(tiny_run(tmp_path, train={"max_steps": 2, "save_every_n_steps": 1}, output=keep))
    (first.out_dir / "checkpoints" / "step-2" / "sftlab_state.json").unlink()
    capsys.readouterr()
    train(tiny_run(tmp_path, train={"max_steps": 3, "save_every_n_steps": 1}, output=keep), resume=True)
    err = capsys.readouterr().err
    assert "resuming from " in err and "step-1 (step 1 of 3;" in err
    assert "note: skipped step-2: no sftlab_state.json (a checkpoint cut short or copied in part)" in err
