"""Config loading: typed groups, dotted overrides, one-line errors with suggestions."""

import pytest

from sftlab.config import dump_config, load_config
from sftlab.errors import SftlabError

BASE = {"model": {"path": "m"}, "data": {"train": "a.jsonl"}}


def test_overrides_apply_with_types():
    cfg = load_config(None, ["train.lr=2e-5", "strategy.kind=lora", "train.max_steps=3"], base=BASE)
    assert cfg.train.lr == 2e-5 and cfg.strategy.kind == "lora" and cfg.train.max_steps == 3


def test_public_key_names_exist():
    cfg = load_config(None, [], base=BASE)
    for group, key in [("model", "path"), ("data", "train"), ("data", "format"), ("data", "validation"),
                       ("strategy", "kind"), ("train", "max_steps"), ("train", "epochs"), ("train", "batch_size"),
                       ("train", "lr"), ("train", "max_length"), ("output", "dir")]:
        assert hasattr(getattr(cfg, group), key)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown key 'train.lrr'; did you mean 'train.lr'?"),
    ("trian.lr=1", "unknown key 'trian'; did you mean 'train'?"),
    ("train.lr=abc", "train.lr: Input should be a valid number"),
    ("strategy.kind=foo", "strategy.kind: got 'foo', expected one of 'full', 'freeze', 'lora' or 'auto'"),
    ("strategy.kind=lorra", "strategy.kind: got 'lorra', expected one of 'full', 'freeze', 'lora' or 'auto'; "
                            "did you mean 'lora'?"),
    ("strategy.auto.budget=0", "strategy.auto.budget: Input should be greater than 0"),
    ("train.batch_size=2.5", "train.batch_size: Input should be a valid integer"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(SftlabError) as err:
        load_config(None, [override], base=BASE)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_grad_norm_must_be_positive_or_null(value):
    # a negative clip norm flipped every gradient's sign (torch scales by max_norm / norm) and 0 zeroed them
    with pytest.raises(SftlabError, match="train.max_grad_norm: Input should be greater than 0"):
        load_config(None, [f"train.max_grad_norm={value}"], base=BASE)
    assert load_config(None, ["train.max_grad_norm=null"], base=BASE).train.max_grad_norm is None


def test_overrides_leave_the_base_dict_as_it_was():
    base = {"model": {"path": "m"}, "data": {"train": "a.jsonl"}, "train": {"lr": 1e-3}}
    cfg = load_config(None, ["train.lr=5e-4", "data.train=b.jsonl", "eval.every_n_steps=2"], base=base)
    assert (cfg.train.lr, cfg.data.train, cfg.eval.every_n_steps) == (5e-4, "b.jsonl", 2)
    assert base == {"model": {"path": "m"}, "data": {"train": "a.jsonl"}, "train": {"lr": 1e-3}}


@pytest.mark.parametrize("override, message", [
    ("data.train=[a, {path: b, weight: 0}]", "data.train.1.weight: Input should be greater than 0 (got 0)"),
    ("data.train=[{path: a, wieght: 2}]", "unknown key 'data.train.0.wieght'; did you mean 'data.train.0.weight'?"),
    ("strategy.freeze.layers=[1, x]", "strategy.freeze.layers.1: Input should be a valid integer"),
])
def test_errors_inside_a_union_name_the_deepest_key(override, message):
    # data.train (str or list) reported its first union member: "data.train.str: Input should be a valid string"
    with pytest.raises(SftlabError) as err:
        load_config(None, [override], base=BASE)
    assert str(err.value).startswith(f"config: {message}")


def test_qlora_needs_bitsandbytes_and_on_cpu_its_cpu_backend(monkeypatch):
    import importlib.metadata
    import importlib.util

    import torch

    qlora = ["strategy.kind=lora", "strategy.lora.quantize_4bit=true"]
    assert load_config(None, qlora, base=BASE).strategy.lora.quantize_4bit  # bitsandbytes 0.50.2 (the test extra)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(SftlabError, match=r"quantize_4bit \(QLoRA\) needs bitsandbytes: `pip install bitsandbytes`$"):
        load_config(None, qlora, base=BASE)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.45.5")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, where any bitsandbytes version is taken")
    with pytest.raises(SftlabError, match=r"on a CPU needs bitsandbytes >= 0.50 \(its CPU backend\); this machine has "
                                          r"0.45.5: `pip install -U 'bitsandbytes>=0.50'`"):
        load_config(None, qlora, base=BASE)


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: m\n data: [\n")
    with pytest.raises(SftlabError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    with pytest.raises(SftlabError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_missing_required_key():
    with pytest.raises(SftlabError, match="missing required key 'model.path'"):
        load_config(None, [], base={"model": {}, "data": {"train": "x"}})


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4"], base=BASE)
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_docs_reference_matches_the_schema():
    from pathlib import Path

    from sftlab.config.reference import embed

    doc = Path(__file__).resolve().parent.parent / "docs" / "train.md"
    text = doc.read_text(encoding="utf-8")
    assert embed(text) == text, "docs/train.md is stale: run python -m sftlab.config.reference docs/train.md"


@pytest.mark.parametrize("layers", ['"[1"', "last:0", "first:x", "middle:2", "last", "[]", "3", "{first: 3}"])
def test_a_malformed_freeze_layer_spec_is_refused_when_the_config_is_loaded(tmp_path, capsys, layers):
    """`layers: "[1"` passed config loading, `sftlab plan` and the board's Check, and failed only when training began."""
    from sftlab.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  path: m\ndata:\n  train: a.jsonl\nstrategy:\n  kind: freeze\n  freeze:\n"
                      f"    layers: {layers}\n", encoding="utf-8")
    with pytest.raises(SftlabError) as err:
        load_config(config)
    message = str(err.value)
    assert message.startswith(f"{config}: strategy.freeze.layers: ") and "\n" not in message
    expected = ("empty list; use 'none' to train no block" if layers == "[]" else
                "expected 'last:N' or 'first:N' (N at least 1), a non-empty list of indices, 'all' or 'none'")
    assert message.endswith(expected), message
    assert main(["plan", str(config)]) == 2  # the planner loads the config first: refused before any model is read
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("layers, value", [("last:2", "last:2"), ("first:3", "first:3"), ("[0, -1]", [0, -1]),
                                           ("all", "all"), ("none", "none")])
def test_well_formed_freeze_layer_specs_load_as_given(layers, value):
    assert load_config(None, [f"strategy.freeze.layers={layers}"], base=BASE).strategy.freeze.layers == value
