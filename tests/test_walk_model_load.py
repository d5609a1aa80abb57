"""Model directories as in-house weights come: sharded safetensors, pytorch_model.bin, and the broken ones (no
tokenizer, cut-short or missing weight files, a pickle that is not tensors, custom code, a config that does not fit,
a tokenizer larger than the embeddings), each loaded or refused in one line naming the file or setting."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch

from sftlab.cli import main
from sftlab.config.schema import ModelConfig
from sftlab.errors import SftlabError
from sftlab.models.load import load_model, load_tokenizer, resolve_model_path
from sftlab.models.weights import safetensors_complete
from sftlab.models.tiny import save_tiny


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def qwen(tmp_path):
    return save_tiny("qwen2", tmp_path / "qwen2", hidden=32, layers=1)


def _copy(source, target, drop=()):
    shutil.copytree(source, target)
    for name in drop:
        (target / name).unlink()
    return target


def _logits(model, ids=((1, 5, 9, 4),)):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


def test_sharded_safetensors_and_a_bin_load_the_same_weights(tmp_path, qwen):
    original = load_model(ModelConfig(path=str(qwen)), "sft")
    sharded = _copy(qwen, tmp_path / "sharded", drop=["model.safetensors"])
    original.save_pretrained(sharded, max_shard_size="20KB")
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    binary = _copy(qwen, tmp_path / "bin", drop=["model.safetensors"])
    torch.save(original.state_dict(), binary / "pytorch_model.bin")
    for directory in (sharded, binary):
        assert torch.equal(_logits(load_model(ModelConfig(path=str(directory)), "sft")), _logits(original))


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def _break(directory, how):
    weights = directory / "model.safetensors"
    if how == "cut":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage":
        weights.write_bytes(b"not a safetensors file")
    elif how == "none":
        weights.unlink()
    elif how in ("pickle", "cut-bin"):
        state = dict(load_model(ModelConfig(path=str(directory)), "sft").state_dict())
        weights.unlink()
        if how == "pickle":
            state["payload"] = _Payload()
        torch.save(state, directory / "pytorch_model.bin")
        if how == "cut-bin":
            data = (directory / "pytorch_model.bin").read_bytes()
            (directory / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    elif how == "shape":
        config = json.loads((directory / "config.json").read_text())
        config["intermediate_size"] *= 2
        (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("how, message", [
    ("cut", r"^.*model\.safetensors: not a complete safetensors file \(\d+ bytes\); the model was not saved or copied"),
    ("garbage", r"^.*model\.safetensors: not a complete safetensors file \(22 bytes\)"),
    ("none", r"^model\.path '.*broken' has no weights \(model\.safetensors, model\.safetensors\.index\.json"),
    ("pickle", r"^model\.path '.*broken': cannot load as a causal language model \(its pytorch_model\.bin holds "
               r"objects other than tensors, which sftlab does not unpickle"),
    ("cut-bin", r"^model\.path '.*broken': cannot load as a causal language model \(its pytorch_model\.bin is not a "
                r"readable PyTorch file"),
    ("shape", r"^model\.path '.*broken': weight model\.layers\.0\.mlp\.\w+_proj\.weight has shape \[\d+, \d+\] in "
              r"the checkpoint but \[\d+, \d+\] in the model its config\.json describes"),
])
def test_broken_weights_are_one_line_errors(tmp_path, qwen, capsys, how, message):
    broken = _copy(qwen, tmp_path / "broken")
    _break(broken, how)
    capsys.readouterr()
    for stage in ("sft", "cls"):
        with pytest.raises(SftlabError, match=message.replace("causal language model", ".*")) as caught:
            load_model(ModelConfig(path=str(broken)), stage, label_names=["a", "b"] if stage == "cls" else None)
        assert "\n" not in str(caught.value)
    assert "unpickled" not in capsys.readouterr().out  # the pickle's payload never ran


def test_a_missing_shard_names_the_index(tmp_path, qwen):
    sharded = _copy(qwen, tmp_path / "sharded", drop=["model.safetensors"])
    load_model(ModelConfig(path=str(qwen)), "sft").save_pretrained(sharded, max_shard_size="20KB")
    shard = sorted(sharded.glob("model-*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(SftlabError, match=rf"model\.safetensors\.index\.json: names shard {shard.name}, which is not "
                                          r"in '.*sharded'; the model was not copied completely$"):
        load_model(ModelConfig(path=str(sharded)), "sft")


def test_safetensors_complete_checks_the_header_and_the_length(tmp_path, qwen):
    weights = qwen / "model.safetensors"
    assert safetensors_complete(weights)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights.read_bytes()[:-1])
    assert not safetensors_complete(cut)
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(weights.read_bytes() + b"\0")
    assert not safetensors_complete(longer)


def test_a_directory_without_tokenizer_files_is_refused_not_loaded_empty(tmp_path, qwen):
    bare = _copy(qwen, tmp_path / "bare", drop=[p.name for p in qwen.iterdir() if p.name.startswith(("tokenizer",
                                                                                                       "chat_"))])
    with pytest.raises(SftlabError, match=r"^model\.path '.*bare' has no tokenizer \(none of tokenizer\.json, "
                                          r"tokenizer_config\.json, tokenizer\.model\); .* set model\.tokenizer"):
        load_tokenizer(ModelConfig(path=str(bare)))
    tok = load_tokenizer(ModelConfig(path=str(bare), tokenizer=str(qwen)))
    assert tok("hello world", add_special_tokens=False)["input_ids"]
    with pytest.raises(SftlabError, match=r"^model\.tokenizer '.*empty' has no tokenizer"):
        (tmp_path / "empty").mkdir()
        load_tokenizer(ModelConfig(path=str(bare), tokenizer=str(tmp_path / "empty")))


def test_a_tokenizer_config_without_a_vocabulary_is_an_empty_tokenizer(tmp_path, qwen):
    thin = _copy(qwen, tmp_path / "thin", drop=["tokenizer.json"])
    with pytest.raises(SftlabError, match=r"^model\.path '.*thin': the tokenizer it holds is empty"):
        load_tokenizer(ModelConfig(path=str(thin)))


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del config[key]
    (directory / "config.json").write_text(json.dumps(config))


def test_config_problems_name_config_json(tmp_path, qwen, capsys):
    listed = _copy(qwen, tmp_path / "listed")
    (listed / "config.json").write_text("[1, 2]")
    untyped = _copy(qwen, tmp_path / "untyped")
    _edit_config(untyped, model_type=None)
    unknown = _copy(qwen, tmp_path / "unknown")
    _edit_config(unknown, model_type="frobnicator")
    cases = {listed: "expected a JSON object \\(a model config\\), got list",
             untyped: "no model_type; it is not a config.json written by save_pretrained",
             unknown: "model_type 'frobnicator' is not an architecture this transformers version knows"}
    capsys.readouterr()
    for directory, message in cases.items():
        for load in (load_tokenizer, lambda cfg: load_model(cfg, "sft")):
            with pytest.raises(SftlabError, match=f"^.*{directory.name}/config.json: {message}"):
                load(ModelConfig(path=str(directory)))
    assert "You are using a model of type" not in capsys.readouterr().err


def make_custom_code_model(directory):
    """`directory` (a tiny qwen2's copy) turned into a model of its own code, `walkcustom` (config.json auto_map)."""
    _edit_config(directory, model_type="walkcustom", auto_map={"AutoConfig": "configuration_walk.WalkConfig",
                                                               "AutoModelForCausalLM": "modeling_walk.WalkModel"})
    (directory / "configuration_walk.py").write_text(
        "from transformers import Qwen2Config\n\n\nclass WalkConfig(Qwen2Config):\n    model_type = 'walkcustom'\n")
    (directory / "modeling_walk.py").write_text(
        "from transformers import Qwen2ForCausalLM\n\nfrom .configuration_walk import WalkConfig\n\n\n"
        "class WalkModel(Qwen2ForCausalLM):\n    config_class = WalkConfig\n")
    return directory


def test_custom_code_runs_only_with_trust_remote_code(tmp_path, qwen):
    custom = make_custom_code_model(_copy(qwen, tmp_path / "custom"))
    for load in (load_tokenizer, lambda cfg: load_model(cfg, "sft")):
        with pytest.raises(SftlabError, match=r"model_type 'walkcustom' is custom code shipped in '.*custom' "
                                              r"\(auto_map\), which sftlab runs only where a run config sets "
                                              r"model\.trust_remote_code=true"):
            load(ModelConfig(path=str(custom)))
    model = load_model(ModelConfig(path=str(custom), trust_remote_code=True), "sft")
    assert type(model).__name__ == "WalkModel"
    assert torch.equal(_logits(model), _logits(load_model(ModelConfig(path=str(qwen)), "sft")))


def _with_added_tokens(qwen, target, count, pad=False):
    from transformers import AutoTokenizer

    directory = _copy(qwen, target)
    tok = AutoTokenizer.from_pretrained(directory)
    rows = json.loads((directory / "config.json").read_text())["vocab_size"]
    tok.add_tokens([f"<walk_{i}>" for i in range(rows - len(tok) + count)])
    if pad:
        tok.add_special_tokens({"pad_token": "<walk_pad>"})
    tok.save_pretrained(directory)
    return directory, rows


def test_a_tokenizer_larger_than_the_embeddings(tmp_path, qwen):
    added, rows = _with_added_tokens(qwen, tmp_path / "added", 2)
    cfg = ModelConfig(path=str(added))
    tok = load_tokenizer(cfg)
    model = load_model(cfg, "sft", tokenizer=tok)
    assert _logits(model, [tok.encode("hello", add_special_tokens=False)]).shape[-1] == rows  # unused: no harm
    ids = tok.encode("hello <walk_1>", add_special_tokens=False)
    assert max(ids) == rows + 1
    with pytest.raises(SftlabError, match=rf"^model\.path '.*added': token '<walk_1>' \(id {rows + 1}\) is beyond "
                                          rf"the model's {rows} embedding rows \(the tokenizer has {rows + 2} "
                                          r"tokens\); use the tokenizer saved with the model, or resize"):
        _logits(model, [ids])
    padded, rows = _with_added_tokens(qwen, tmp_path / "padded", 0, pad=True)
    cfg = ModelConfig(path=str(padded))
    with pytest.raises(SftlabError, match=rf"token '<walk_pad>' \(id {rows}\) is beyond the model's {rows} embedding"):
        load_model(cfg, "sft", tokenizer=load_tokenizer(cfg))


def test_a_relative_path_that_looks_like_a_hub_id_names_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftlabError) as caught:
        resolve_model_path("models/qwen2")
    assert str(caught.value).endswith(f"; as a path it is taken from the working directory {tmp_path}")
    assert "not found locally; this machine is offline" in str(caught.value)
    with pytest.raises(SftlabError) as caught:
        resolve_model_path(str(tmp_path / "models" / "qwen2"))
    assert "working directory" not in str(caught.value)


def test_generate_says_it_in_one_line(tmp_path, qwen, capsys):
    broken = _copy(qwen, tmp_path / "broken")
    _break(broken, "cut")
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    capsys.readouterr()
    assert main(["generate", str(broken), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.safetensors: not a complete safetensors file" in err
    assert err.count("\n") == 1 and not (tmp_path / "out.jsonl").exists()
