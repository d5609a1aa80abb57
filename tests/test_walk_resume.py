"""Checkpoints, resume and export as a demanding user exercises them: a classification LoRA adapter knows its labels
wherever it is saved, a damaged sidecar is one line, a second Ctrl-C inside an optimizer update saves nothing
inconsistent, a killed save's leftovers are cleared, and best/ follows a changed eval.metric."""

import json
import shutil

import pytest
import torch

from sftlab.errors import SftlabError
from test_train_loop import SFT_ROWS, tiny_run, train

CLS_ROWS = [{"text": f"{'refund please' if i % 2 else 'card arrived'} {i}", "label": "refund" if i % 2 else "card"}
            for i in range(10)]
LABELS = ["refund", "card"]  # not sorted: the head's row order is data.labels', which only a record can carry


def _interrupt_at(step_to_stop):
    def callback(step, loss):
        if step == step_to_stop:
            raise KeyboardInterrupt
    return callback


@pytest.fixture(scope="module")
def cls_lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls-lora")
    raw = tiny_run(tmp, "bert", rows=CLS_ROWS, task="cls", data={"labels": LABELS, "val_ratio": 0.2},
                   strategy={"kind": "lora", "lora": {"rank": 4}},
                   train={"stage": "cls", "max_steps": 2, "save_every_n_steps": 1},
                   eval={"every_n_steps": 1, "metric": "accuracy", "mode": "max"}, output={"keep_checkpoints": 2})
    return train(raw).out_dir


def test_cls_lora_adapter_records_its_labels_in_every_saved_directory(cls_lora_run):
    for name in ("model", "best", "checkpoints/step-1", "checkpoints/step-2"):
        assert json.loads((cls_lora_run / name / "sftlab_labels.json").read_text()) == {"labels": LABELS}, name


@pytest.mark.parametrize("where", ["best", "checkpoints/step-1"])
def test_cls_lora_export_from_best_or_a_checkpoint_names_the_labels(cls_lora_run, tmp_path, where):
    """Exported away from the run directory's data_stats.json (which export used to need: given best/ or a checkpoint
    it fell back to LABEL_0, LABEL_1), the merged classifier still names the labels, in the trained row order."""
    from transformers import AutoModelForSequenceClassification

    from sftlab.commands.export import merge_adapter
    from sftlab.infer.loading import load_classifier_adapter

    copy = tmp_path / "copied"
    shutil.copytree(cls_lora_run / where, copy)  # alone: no run directory around it
    record = merge_adapter(copy, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert [merged.config.id2label[i] for i in range(2)] == LABELS and record["labels"] == LABELS
    model, tokenizer, labels = load_classifier_adapter(copy)  # the adapter itself, labels and head as trained
    assert labels == LABELS
    batch = tokenizer(["refund please 3", "card arrived 4"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, merged(**batch).logits, rtol=1e-5, atol=1e-5)


def test_cls_lora_adapter_is_refused_by_generation_in_one_line(cls_lora_run, tmp_path):
    from sftlab.infer.loading import load_classifier_adapter, load_served

    with pytest.raises(SftlabError, match=r"a classification LoRA adapter \(labels refund, card\), not a text "
                                          r"generator; `sftlab export RUN --merge OUT`") as error:
        load_served(cls_lora_run)
    assert "\n" not in str(error.value)
    bare = tmp_path / "bare"
    shutil.copytree(cls_lora_run / "model", bare)
    (bare / "sftlab_labels.json").unlink()  # an adapter saved before the record, away from its run
    with pytest.raises(SftlabError, match=r"label names are not recorded"):
        load_classifier_adapter(bare)
    (bare / "sftlab_labels.json").write_text('{"labels": "refund"}')
    with pytest.raises(SftlabError, match=r"sftlab_labels.json: labels: expected a list of label names"):
        load_classifier_adapter(bare)


def test_sftlab_eval_scores_a_cls_lora_run_with_its_head_and_labels(cls_lora_run, tmp_path):
    from sftlab.cli import main
    from sftlab.infer.loading import load_classifier_adapter

    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in CLS_ROWS), encoding="utf-8")
    assert main(["eval", str(cls_lora_run), "--data", str(data), "--task", "labels", "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    assert metrics["method"] == "head" and metrics["labels"] == LABELS and metrics["n"] == len(CLS_ROWS)
    model, tokenizer, _ = load_classifier_adapter(cls_lora_run)
    with torch.no_grad():
        logits = model(**tokenizer([row["text"] for row in CLS_ROWS], return_tensors="pt", padding=True)).logits
    predicted = [json.loads(line)["prediction"] for line in (tmp_path / "e" / "predictions.jsonl").open()]
    assert predicted == [LABELS[i] for i in logits.argmax(-1).tolist()]


@pytest.mark.parametrize("damage, said", [
    (lambda state: state.pop("bad_evals"), "no field 'bad_evals'"),
    (lambda state: state.pop("position"), "no field 'position'"),
    (lambda state: state.update(losses=None), "field 'losses' is null, expected a JSON array"),
])
def test_a_sidecar_missing_a_field_is_one_line_naming_it(tmp_path, damage, said):
    first = train(tiny_run(tmp_path, train={"max_steps": 2, "save_every_n_steps": 1}, output={"keep_checkpoints": 2}))
    path = first.out_dir / "checkpoints" / "step-2" / "sftlab_state.json"
    state = json.loads(path.read_text())
    damage(state)
    path.write_text(json.dumps(state))
    with pytest.raises(SftlabError) as error:
        train(tiny_run(tmp_path, train={"max_steps": 3, "save_every_n_steps": 1}, output={"keep_checkpoints": 2}),
              resume=True)
    message = str(error.value)
    assert "\n" not in message and f"step-2/sftlab_state.json: {said}" in message, message
    assert "to resume from" in message and "step-1" in message


def test_a_stop_at_once_inside_the_optimizer_update_saves_nothing_and_resume_stays_exact(tmp_path, monkeypatch):
    """A second Ctrl-C can land after the optimizer has updated the weights but before the step is counted: a
    checkpoint then would record step N-1 with step N's weights. None is written; resuming from the latest complete
    checkpoint gives the uninterrupted run's losses."""
    import sftlab.train.loop as loop
    from sftlab.train import TrainingInterrupted

    settings = {"train": {"max_steps": 5, "batch_size": 3, "save_every_n_steps": 2}, "output": {"keep_checkpoints": 2}}
    straight = train(tiny_run(tmp_path, name="straight", **settings))
    real, calls = loop.apply_update, []

    def update_then_ctrl_c(session):
        stats = real(session)
        calls.append(1)
        if len(calls) == 4:  # inside step 4's update, after the weights changed (step 3 was not saved)
            raise KeyboardInterrupt
        return stats

    monkeypatch.setattr(loop, "apply_update", update_then_ctrl_c)
    with pytest.raises(TrainingInterrupted, match=r"during the optimizer update of step 4, which cannot be saved "
                                                  r"half-done; latest checkpoint: .*step-2$") as stop:
        train(tiny_run(tmp_path, **settings))
    assert stop.value.checkpoint is None
    monkeypatch.setattr(loop, "apply_update", real)
    resumed = train(tiny_run(tmp_path, **settings), resume=True)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)


def test_ctrl_c_right_after_a_periodic_checkpoint_does_not_write_it_twice(tmp_path, monkeypatch):
    import sftlab.train.saving as saving
    from sftlab.train import TrainingInterrupted

    real, written = saving.save_checkpoint, []
    monkeypatch.setattr(saving, "save_checkpoint", lambda run_dir, step, *a, **k: written.append(step) or
                        real(run_dir, step, *a, **k))
    with pytest.raises(TrainingInterrupted, match="interrupted at step 2; checkpoint saved in .*step-2"):
        train(tiny_run(tmp_path, train={"max_steps": 3, "save_every_n_steps": 2}), callbacks=[_interrupt_at(2)])
    assert written == [2]


def test_resume_clears_a_killed_save_and_puts_back_a_half_replaced_best(tmp_path, capsys):
    """SIGKILL while a checkpoint is written leaves `.step-N.<random>.tmp` (a partial copy that would pile up on disk);
    killed between atomic_dir's two renames, best/ survives only as `.best.old`. Resume removes the first, puts the
    second back, and resumes from the newest complete checkpoint."""
    settings = {"train": {"max_steps": 2, "save_every_n_steps": 1}, "eval": {"every_n_steps": 1},
                "data": {"val_ratio": 0.25}, "output": {"keep_checkpoints": 2}}
    first = train(tiny_run(tmp_path, **settings))
    partial = first.out_dir / "checkpoints" / ".step-3.k2j4x9qa.tmp"
    shutil.copytree(first.out_dir / "checkpoints" / "step-2", partial)
    (partial / "sftlab_state.json").unlink()
    best = (first.out_dir / "best" / "sftlab_state.json").read_text()
    (first.out_dir / "best").replace(first.out_dir / ".best.old")
    (first.out_dir / ".metrics.json.ab12cd34.tmp").write_text("{")
    capsys.readouterr()
    settings["train"]["max_steps"] = 3
    train(tiny_run(tmp_path, **settings), resume=True)
    err = capsys.readouterr().err
    assert "put back " in err and "from .best.old" in err and "step-2 (step 2 of 3" in err
    leftovers = [path.name for path in (*first.out_dir.iterdir(), *(first.out_dir / "checkpoints").iterdir())
                 if path.name.startswith(".")]
    assert leftovers == []
    assert sorted(path.name for path in (first.out_dir / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert json.loads((first.out_dir / "best" / "sftlab_state.json").read_text())["step"] >= \
        json.loads(best)["step"]


def test_resume_with_another_eval_metric_says_so_and_best_follows_it(tmp_path, capsys):
    """best/ by loss, resumed with eval.metric perplexity: comparing a perplexity with the saved best loss would never
    (or always) improve; the run says best/ is replaced and the next evaluation does."""
    from sftlab.train import TrainingInterrupted

    settings = {"train": {"max_steps": 3}, "eval": {"every_n_steps": 1}, "data": {"val_ratio": 0.25}}
    with pytest.raises(TrainingInterrupted):
        train(tiny_run(tmp_path, rows=SFT_ROWS, **settings), callbacks=[_interrupt_at(1)])
    best = tmp_path / "run" / "best" / "sftlab_state.json"
    assert json.loads(best.read_text())["best"]["metric"] == "loss"
    settings["eval"]["metric"] = "perplexity"
    capsys.readouterr()
    train(tiny_run(tmp_path, rows=SFT_ROWS, **settings), resume=True)
    assert ("note: best/ (step 1) was picked by eval.metric loss (min); this run picks by perplexity (min), so the "
            "next evaluation replaces it") in capsys.readouterr().err
    saved = json.loads(best.read_text())["best"]
    assert saved["metric"] == "perplexity" and saved["step"] >= 2
