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
