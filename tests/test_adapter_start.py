"""model.adapter: a LoRA run's OUT/model as the start of a new run (trained further, or merged for other kinds)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftlab.config import load_config
from sftlab.config.schema import ModelConfig
from sftlab.errors import SftlabError
from sftlab.models.load import load_model
from test_train_loop import tiny_run, train

LORA = {"kind": "lora", "lora": {"rank": 4, "alpha": 8}}


@pytest.fixture
def first_run(tmp_path) -> Path:
    """A finished tiny LoRA sft run; its OUT/model is an adapter with the tokenizer beside it."""
    result = train(tiny_run(tmp_path, name="first", strategy=LORA))
    assert (result.out_dir / "model" / "adapter_config.json").is_file()
    return result.out_dir / "model"


def test_adapter_path_becomes_model_adapter_with_its_base_and_tokenizer(tmp_path, first_run):
    cfg = load_config(None, [f"model.path={first_run}"], base=tiny_run(tmp_path, name="second", strategy=LORA))
    base = json.loads((first_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert (cfg.model.path, cfg.model.adapter, cfg.model.tokenizer) == (base, str(first_run), str(first_run))
    again = load_config(None, [], base=cfg.model_dump(mode="json"))  # a saved config.yaml validates to the same
    assert again.model == cfg.model


def test_lora_trains_the_same_adapter_further(tmp_path, first_run, capsys):
    raw = tiny_run(tmp_path, name="second", strategy={"kind": "lora", "lora": {"rank": 16}},
                   model={"path": str(first_run)})
    saved = load_file(first_run / "adapter_model.safetensors")
    peft_model = load_model(load_config(None, [], base=raw).model, "sft", keep_adapter=True)
    loaded = {name: param for name, param in peft_model.named_parameters() if "lora_" in name}
    assert loaded and all(param.requires_grad for param in loaded.values())
    for key, tensor in saved.items():  # the run starts from the first run's adapter, not a fresh one
        name = next(name for name in loaded if name.replace(".default", "") == key)
        assert torch.equal(loaded[name], tensor)
    capsys.readouterr()
    result = train(raw)
    assert "the adapter of model.adapter, trained further" in capsys.readouterr().err
    config = json.loads((result.out_dir / "model" / "adapter_config.json").read_text())
    assert config["r"] == 4  # the adapter's own rank, not strategy.lora.rank
    assert config["base_model_name_or_path"] == json.loads((first_run / "adapter_config.json").read_text())[
        "base_model_name_or_path"]
    further = load_file(result.out_dir / "model" / "adapter_model.safetensors")
    assert further.keys() == saved.keys() and any(not torch.equal(further[k], saved[k]) for k in saved)


def test_other_kinds_train_the_base_with_the_adapter_merged_in(tmp_path, first_run):
    raw = tiny_run(tmp_path, name="full", strategy={"kind": "full"}, model={"path": str(first_run)})
    cfg = load_config(None, [], base=raw)
    merged = load_model(cfg.model, "sft")
    attached = load_model(cfg.model, "sft", keep_adapter=True)
    plain = load_model(cfg.model.model_copy(update={"adapter": None}), "sft")
    ids = torch.randint(5, 200, (1, 12))
    with torch.no_grad():
        logits = [model(input_ids=ids).logits for model in (merged, attached, plain)]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[0], logits[2], atol=1e-4)  # the trained adapter changed the outputs
    assert not any("lora" in name for name, _ in merged.named_parameters())
    result = train(raw)
    assert (result.out_dir / "model" / "config.json").is_file()  # a full model, not an adapter


def test_adapter_errors_name_the_file(tmp_path, first_run):
    raw = tiny_run(tmp_path, name="second", strategy=LORA)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"r": 4}', encoding="utf-8")
    with pytest.raises(SftlabError, match=f"{broken / 'adapter_config.json'}: base_model_name_or_path is missing"):
        load_config(None, [f"model.path={broken}"], base=raw)
    (broken / "adapter_config.json").write_text('{"r": 4,', encoding="utf-8")
    with pytest.raises(SftlabError, match="adapter_config.json:1: not valid JSON"):
        load_config(None, [f"model.path={broken}"], base=raw)
    (broken / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(first_run)}))
    with pytest.raises(SftlabError, match="is itself an adapter; merge that one first"):
        load_config(None, [f"model.path={broken}"], base=raw)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SftlabError, match=f"model.adapter '{empty}': not a PEFT adapter directory"):
        load_model(ModelConfig(path=str(tmp_path / "base-llama-causal_lm"), adapter=str(empty)), "sft")
    with pytest.raises(SftlabError, match="continuing an adapter on a 4-bit base"):
        load_config(None, [f"model.path={first_run}", "strategy.lora.quantize_4bit=true"], base=raw)


def test_an_adapter_trained_from_a_relative_model_path_records_its_base_absolutely(tmp_path, monkeypatch):
    """A LoRA run given `model.path: tiny-llama` (relative) wrote that string as the adapter's base, so its model/
    loaded only from the directory the run started in."""
    raw = tiny_run(tmp_path, name="relative", strategy=LORA)
    base = Path(raw["model"]["path"])
    monkeypatch.chdir(base.parent)
    result = train({**raw, "model": {**raw["model"], "path": base.name}})
    recorded = json.loads((result.out_dir / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded).is_absolute() and Path(recorded) == base.absolute()
    monkeypatch.chdir(tmp_path.parent)
    load_model(ModelConfig(path=str(result.out_dir / "model")), "sft")  # loads from another directory
