"""Policy application: the example configs validate, and both example forms train through `sftlab train`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.config import load_config
from sftlab.models.tiny import save_tiny
from sftlab.policy.db import open_db
from sftlab.policy.examples import build_data
from sftlab.policy.simulate import WorldSpec, simulate, write_world

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policy"


def test_every_example_config_validates():
    configs = sorted(EXAMPLES.glob("*.yaml"))
    kinds = {(p.name.split("_")[0], load_config(p).strategy.kind) for p in configs}
    assert {(model, kind) for model in ("tiny", "gemma") for kind in ("full", "freeze", "auto", "lora")} <= kinds
    for path in configs:
        cfg = load_config(path)
        assert cfg.train.stage == "sft" and cfg.data.format == "messages"
        assert (path.parent / cfg.data.train).resolve().name in ("yesno_train.jsonl", "category_train.jsonl")


@pytest.mark.parametrize("name", ["tiny_yesno_lora.yaml", "tiny_category_freeze.yaml"])
def test_example_forms_train_through_sftlab_train(name, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "policy_configs"
    data = root / "data"
    if not (data / "manifest.json").is_file():
        engine = open_db(f"sqlite:///{root}/db.sqlite")
        write_world(engine, simulate(WorldSpec(n_enterprises=25, n_policies=40, days=180, seed=4)))
        build_data(engine, data, "2025-05-15", max_train=16, category_limit=20)
        save_tiny("qwen2", root / "tiny-qwen2")
    form = "category" if "category" in name else "yesno"
    out = root / name.removesuffix(".yaml")
    overrides = [f"model.path={root / 'tiny-qwen2'}", f"data.train={data / f'{form}_train.jsonl'}", f"output.dir={out}",
                 "train.max_steps=1", "train.batch_size=2"]
    if form == "yesno":
        overrides.append(f"data.validation={data / 'yesno_valid.jsonl'}")
    assert main(["train", str(EXAMPLES / name), *overrides, "--no-progress"]) == 0
    assert (out / "model").is_dir()


def test_full_demo_plan_trains_like_the_measured_example_config(tmp_path):
    from sftlab.policy.demo import FULL, training_config

    example = load_config(EXAMPLES / "gemma_yesno_freeze.yaml")
    full = training_config(FULL, "gemma-3-270m", tmp_path / "data", tmp_path / "run")
    assert full.strategy.model_dump() == example.strategy.model_dump()
    for key in ("stage", "batch_size", "lr", "warmup_steps", "max_length", "precision", "seed", "scheduler", "grad_accum"):
        assert getattr(full.train, key) == getattr(example.train, key), key
    train_examples = FULL.max_train - round(FULL.max_train * 0.1)  # build-data keeps a tenth for validation
    assert example.train.epochs == 1 and full.train.max_steps == train_examples // example.train.batch_size
    assert full.eval.max_samples == example.eval.max_samples and full.data.template == example.data.template
