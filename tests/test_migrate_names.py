"""LLaMA-Factory and TRL config names (resources/peer_names.yaml) are answered with the sftlab key that does that job."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from sftlab.config import load_config
from sftlab.config.load import PeerName, _model_in, peer_names
from sftlab.config.schema import RunConfig
from sftlab.errors import SftlabError

BASE = {"model": {"path": "m"}, "data": {"train": "a.jsonl"}}
RAW = yaml.safe_load(resources.files("sftlab").joinpath("resources", "peer_names.yaml").read_text(encoding="utf-8"))
DOC = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"


def _schema_has(key: str) -> bool:
    """Whether `group.name` (or group.sub.name) is a field of RunConfig."""
    model: type[BaseModel] | None = RunConfig
    for part in key.split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _model_in(model.model_fields[part].annotation)
    return True


def _error(overrides: list[str], base: dict | None = BASE) -> str:
    with pytest.raises(SftlabError) as err:
        load_config(None, overrides, base=base)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name", sorted(RAW))
def test_every_entry_validates_and_names_a_real_sftlab_key(name):
    entry = PeerName.model_validate(RAW[name])
    assert _schema_has(entry.key), f"{name}: {entry.key} is not a run-config key"


@pytest.mark.parametrize("name", sorted(RAW))
def test_every_name_at_the_top_level_or_in_a_group_gets_the_sftlab_key(name):
    peer = peer_names()[name]
    tools = " and ".join(f"{tool}'s" for tool in peer.tools)
    group = next(group for group in ("train", "model", "output") if not _schema_has(f"{group}.{name}"))
    for where in (name, f"{group}.{name}"):
        message = _error([f"{where}=1"])
        assert message.startswith(f"config: unknown key {where!r}; did you mean {peer.key!r}? "
                                  f"(sftlab's name for {tools} {name}"), message
        assert (peer.note or "") in message and message.endswith("; docs/migrating.md)")


@pytest.mark.parametrize("override, message", [
    ("cutoff_len=1024", "unknown key 'cutoff_len'; did you mean 'train.max_length'? (sftlab's name for "
                        "LLaMA-Factory's cutoff_len; docs/migrating.md)"),
    ("strategy.lora.lora_target=all", "unknown key 'strategy.lora.lora_target'; did you mean 'strategy.lora.target_modules'? "
                                      "(sftlab's name for LLaMA-Factory's lora_target; all is all-linear"),
    ("bf16=true", "did you mean 'train.precision'? (sftlab's name for LLaMA-Factory's and TRL's bf16; bf16: true is "
                  "train.precision: bf16"),
    ("data.max_length=64", "unknown key 'data.max_length'; did you mean 'train.max_length'? (sftlab's name for TRL's max_length"),
    ("train.warmup_ratio=0.1", "unknown key 'train.warmup_ratio'; did you mean 'train.warmup_steps'?"),
])
def test_examples_of_the_message(override, message):
    assert message in _error([override])


@pytest.mark.parametrize("override, message", [
    ("lr=1e-4", "config: unknown key 'lr'; did you mean 'train.lr'?"),            # a key of another group
    ("strategy.rank=8", "config: unknown key 'strategy.rank'; did you mean 'strategy.lora.rank'?"),  # of a sub-group
    ("data.batch_size=2", "config: unknown key 'data.batch_size'; did you mean 'train.batch_size' or 'eval.batch_size'?"),
    ("train.lrr=1", "config: unknown key 'train.lrr'; did you mean 'train.lr'?"),  # spelling, as before
    ("do_train=true", "config: unknown key 'do_train'; known keys here: model, data, strategy, train, eval, output"),
    ("eval_strategy=steps", "config: unknown key 'eval_strategy'; known keys here: model, data, strategy, train, eval, output"),
    ("trian.lr=1", "config: unknown key 'trian'; did you mean 'train'?"),       # a misspelt group holds a mapping
])
def test_other_unknown_keys_keep_their_suggestions(override, message):
    assert _error([override]) == message


def test_a_whole_llama_factory_config_is_answered_by_its_names_not_by_missing_groups(tmp_path):
    config = tmp_path / "lf.yaml"
    config.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
                      "lora_target: all\ndataset: identity\ntemplate: qwen\ncutoff_len: 1024\nbf16: true\n", encoding="utf-8")
    with pytest.raises(SftlabError) as err:
        load_config(config)
    assert str(err.value) == (f"{config}: unknown key 'model_name_or_path'; did you mean 'model.path'? (sftlab's name for "
                              "LLaMA-Factory's and TRL's model_name_or_path; docs/migrating.md); 7 more LLaMA-Factory/TRL "
                              "name(s) in it")
    assert _error([], base={}) == "config: missing required key 'model'"  # no peer name: as before


def test_the_migration_guide_lists_every_name_with_its_key():
    rows = re.findall(r"^\| `(\w+)` \| `([\w.]+)` \| ([^|]+) \| ([^|]*) \|$", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert rows == [(name, entry["key"], ", ".join(entry["tools"]), entry.get("note", "")) for name, entry in RAW.items()]
