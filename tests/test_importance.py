"""strategy.kind=auto: importance scores find the layer that carries the signal; budget checks."""

from __future__ import annotations

import pytest
import torch

from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tiny_model, make_tokenizer
from sftlab.strategy import select_trainable
from test_strategy import ARCHS, TEMPLATE, check_only_trainable_change, make_batch


def lm_loss(model, batch):
    return model(**batch).loss


def calibration(model, n: int = 2) -> list[dict]:
    return [make_batch(model, seed=100 + i) for i in range(n)]


def planted_llama(signal_layer: int = 2, layers: int = 4):
    """A 4-layer llama where only `signal_layer` writes into the residual stream (others' outputs are zeroed)."""
    model = make_tiny_model("llama", make_tokenizer("llama3"), layers=layers)
    with torch.no_grad():
        for index, block in enumerate(model.model.layers):
            if index != signal_layer:
                block.self_attn.o_proj.weight.zero_()
                block.mlp.down_proj.weight.zero_()
    return model


def layer_size(model, index: int) -> int:
    return sum(p.numel() for p in model.model.layers[index].parameters())


def test_auto_picks_the_layer_that_carries_the_signal():
    model = planted_llama(signal_layer=2)
    budget = layer_size(model, 2) + 100  # room for one block (plus a norm), not for the embeddings
    cfg = {"kind": "auto", "auto": {"budget": budget, "score": "grad_weight", "granularity": "layer", "batches": 2}}
    model, trainable = select_trainable(model, cfg, calibration(model), lm_loss)
    chosen_layers = [u for u in trainable.details["chosen"] if u.startswith("model.layers.")]
    assert chosen_layers == ["model.layers.2"]  # "last:1" would have been model.layers.3
    scores = {u["name"]: u["score"] for u in trainable.details["units"]}
    assert scores["model.layers.2"] > 0
    assert all(scores[f"model.layers.{i}"] == 0 for i in (0, 1, 3))
    assert trainable.trainable <= budget
    assert all(not n.startswith(("model.layers.0.", "model.layers.1.", "model.layers.3.")) for n in trainable.names)


def test_auto_fisher_linear_scores_only_the_signal_layer_inner_modules():
    model = planted_llama(signal_layer=1)
    cfg = {"kind": "auto", "auto": {"budget": 0.1, "score": "fisher", "granularity": "linear", "batches": 2}}
    model, trainable = select_trainable(model, cfg, calibration(model), lm_loss)
    scores = {u["name"]: u["score"] for u in trainable.details["units"]}
    for index in range(4):
        inner = scores[f"model.layers.{index}.self_attn.q_proj"]
        assert (inner > 0) == (index == 1), (index, inner)
    details = trainable.details
    assert details["budget_params"] == round(0.1 * trainable.total) and details["chosen_params"] == trainable.trainable
    assert set(details) >= {"units", "seconds", "budget", "chosen", "batches"}
    assert all(set(u) == {"name", "score", "size", "chosen"} for u in details["units"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("granularity", ["block"])
def test_auto_trains_only_chosen_units(arch, granularity):
    model = make_tiny_model(arch, make_tokenizer(TEMPLATE[arch]), num_labels=3)
    cfg = {"kind": "auto", "auto": {"budget": 0.3, "granularity": granularity, "batches": 2}}
    model, trainable = select_trainable(model, cfg, calibration(model), lm_loss)
    assert 0 < trainable.trainable <= 0.3 * trainable.total + 1
    assert trainable.details["batches"] == 2
    check_only_trainable_change(model, trainable)


@pytest.mark.parametrize("budget, message", [
    (0, "budget"), (1.5, "whole parameter count"), (10**9, "more than the model's"), (3, "less than the smallest"),
])
def test_auto_bad_budget(budget, message):
    model = planted_llama()
    cfg = {"kind": "auto", "auto": {"budget": budget, "granularity": "layer"}}
    with pytest.raises(SftlabError, match=message):
        select_trainable(model, cfg, calibration(model), lm_loss)


def test_auto_needs_calibration():
    model = planted_llama()
    with pytest.raises(SftlabError, match="needs calibration batches"):
        select_trainable(model, {"kind": "auto"})
    with pytest.raises(SftlabError, match="gave no batch"):
        select_trainable(model, {"kind": "auto"}, [], lm_loss)


def test_auto_restores_grad_flags_and_mode_on_failure():
    model = planted_llama()
    model.train()

    def broken(model, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        select_trainable(model, {"kind": "auto"}, calibration(model), broken)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_auto_reports_tied_embedding():
    model = make_tiny_model("gemma3", make_tokenizer("gemma"))  # lm_head shares the embedding matrix
    cfg = {"kind": "auto", "auto": {"budget": 0.99, "granularity": "layer", "batches": 1}}
    model, trainable = select_trainable(model, cfg, calibration(model, 1), lm_loss)
    assert "model.embed_tokens" in trainable.details["chosen"]
    assert any("model.embed_tokens.weight is tied to lm_head.weight" in note for note in trainable.notes)


@pytest.mark.parametrize("granularity", ["linear", "layer"])
def test_a_budget_below_the_smallest_unit_fails_before_scoring_with_advice_that_applies(granularity):
    """The budget is checked against the unit sizes before any calibration batch runs (scoring a real model takes
    minutes); the advice names granularity=linear only where another granularity is set."""
    model = planted_llama()
    calls = []

    def counting_loss(model, batch):
        calls.append(1)
        return lm_loss(model, batch)

    cfg = {"kind": "auto", "auto": {"budget": 3, "granularity": granularity}}
    with pytest.raises(SftlabError, match=f"less than the smallest {granularity} unit") as error:
        select_trainable(model, cfg, calibration(model), counting_loss)
    assert ("granularity=linear" in str(error.value)) == (granularity != "linear")
    assert calls == []
