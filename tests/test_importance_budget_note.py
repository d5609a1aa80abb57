"""auto at a coarse granularity with a budget below one layer: the run says it trains far less than the budget.

A budget of 10% at `granularity: layer` on a 2-layer model (each layer about 25%) chose only the final norm,
0.04% of the parameters, and the log said nothing about the 10% asked for."""

from __future__ import annotations

from sftlab.models.tiny import make_tiny_model, make_tokenizer
from sftlab.strategy import select_trainable
from test_importance import calibration, lm_loss


def test_a_budget_the_chosen_units_fill_less_than_half_of_is_named_in_the_notes():
    model = make_tiny_model("llama", make_tokenizer("llama3"), layers=2)
    cfg = {"kind": "auto", "auto": {"budget": 0.1, "granularity": "layer", "batches": 1}}
    model, trainable = select_trainable(model, cfg, calibration(model, 1), lm_loss)
    budget = trainable.details["budget_params"]
    assert trainable.trainable * 2 < budget  # only what is smaller than a layer fits
    note = [line for line in trainable.notes if line.startswith("auto: chose ")]
    assert note == [note[0]] and f"{trainable.trainable:,} of the budget's {budget:,} parameters" in note[0]
    assert "granularity=linear fills it more closely" in note[0] and note[0] in trainable.summary()


def test_a_budget_filled_closely_adds_no_note():
    model = make_tiny_model("llama", make_tokenizer("llama3"), layers=2)
    cfg = {"kind": "auto", "auto": {"budget": 0.1, "granularity": "linear", "batches": 1}}
    model, trainable = select_trainable(model, cfg, calibration(model, 1), lm_loss)
    assert trainable.trainable * 2 >= trainable.details["budget_params"]
    assert not any(line.startswith("auto: chose ") for line in trainable.notes)


def test_sftlab_train_reports_autos_scoring_batches(tmp_path, capsys):
    # training with strategy.kind auto was silent while scoring (about 90 s on Gemma 3 270M)
    from test_train_loop import tiny_run, train

    raw = tiny_run(tmp_path, "llama", strategy={"kind": "auto", "auto": {"budget": 0.3, "batches": 2}},
                   train={"max_steps": 1, "batch_size": 2})
    train(raw)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("auto: scored")]
    assert [line.split(" (")[0] for line in lines] == ["auto: scored calibration batch 1/2",
                                                       "auto: scored calibration batch 2/2"]


def test_fewer_calibration_batches_than_asked_are_reported(tmp_path, capsys):
    # scoring used what the data had without a word
    from test_train_loop import tiny_run, train

    raw = tiny_run(tmp_path, "llama", strategy={"kind": "auto", "auto": {"budget": 0.3, "batches": 50}},
                   train={"max_steps": 1, "batch_size": 2})
    train(raw)
    err = capsys.readouterr().err
    scored = sum(line.startswith("auto: scored calibration batch") for line in err.splitlines())
    assert 0 < scored < 50
    assert (f"auto: the training data gave {scored} calibration batches, fewer than strategy.auto.batches=50; the "
            "scores rest on those") in err
