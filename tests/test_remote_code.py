"""A model with its own code (config.json's `auto_map`, as ChatGLM, Baichuan and InternLM ship) through the commands
that use a trained model: generate, chat, eval, serve and export run it only with --trust-remote-code, and say so in
one line without it; their errors about the model directory name their own argument (MODEL, MODEL_DIR, RUN_DIR), not
the run config's model.path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sftlab.cli import main
from sftlab.config.schema import ModelConfig
from sftlab.errors import SftlabError
from sftlab.infer.loading import load_served
from sftlab.models.load import load_model, load_tokenizer
from sftlab.models.tiny import save_tiny
from test_walk_model_load import make_custom_code_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _refusal(directory, flag="with --trust-remote-code", what="model_type 'walkcustom'", file="config.json"):
    return (f"{directory}/{file}: {what} is custom code shipped in '{directory}' (auto_map), which sftlab runs only "
            f"{flag} (only for a directory you trust)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny qwen2, the same weights as a model of its own code (`walkcustom`), and a LoRA adapter on the latter."""
    root = tmp_path_factory.mktemp("remote")
    qwen = save_tiny("qwen2", root / "qwen2", hidden=32, layers=1)
    custom = root / "custom"
    shutil.copytree(qwen, custom)
    make_custom_code_model(custom)
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = load_model(ModelConfig(path=str(custom), trust_remote_code=True), "sft")
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                      init_lora_weights=False)  # B is not zero: the adapter changes the logits
    get_peft_model(base, lora).save_pretrained(root / "adapter")
    return {"qwen": qwen, "custom": custom, "adapter": root / "adapter", "root": root}


@pytest.mark.parametrize("command", ["generate", "chat", "eval", "serve", "export"])
def test_every_deployment_command_has_the_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--trust-remote-code" in out and "only for a directory you trust" in " ".join(out.split())


def test_generate_runs_custom_code_only_with_the_flag(models, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n{"text": "a b c"}\n', encoding="utf-8")
    common = ["--input", str(tmp_path / "in.jsonl"), "--max-new-tokens", "4"]
    out = tmp_path / "custom.jsonl"
    assert main(["generate", str(models["custom"]), *common, "--output", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    assert not out.exists()
    assert main(["generate", str(models["custom"]), *common, "--output", str(out), "--trust-remote-code"]) == 0
    assert main(["generate", str(models["qwen"]), *common, "--output", str(tmp_path / "plain.jsonl")]) == 0
    answers = [json.loads(line)["output"] for line in out.read_text().splitlines()]
    plain = [json.loads(line)["output"] for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert answers == plain and len(answers) == 2  # the same weights, run by the directory's own model class
    assert type(load_served(models["custom"], trust_remote_code=True).model).__name__ == "WalkModel"


def test_chat_runs_custom_code_only_with_the_flag(models, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["chat", str(models["custom"]), "--max-new-tokens", "3"]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["chat", str(models["custom"]), "--max-new-tokens", "3", "--trust-remote-code"]) == 0
    answer = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["chat", str(models["qwen"]), "--max-new-tokens", "3"]) == 0
    assert answer.strip() and answer == capsys.readouterr().out


def test_eval_runs_custom_code_only_with_the_flag(models, tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a {i}"}]}
            for i in range(3)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    common = ["--data", str(tmp_path / "data.jsonl"), "--task", "lm", "--device", "cpu"]
    assert main(["eval", str(models["custom"]), *common, "--out", str(tmp_path / "custom")]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    assert not (tmp_path / "custom").exists()
    assert main(["eval", str(models["custom"]), *common, "--out", str(tmp_path / "custom"), "--trust-remote-code"]) == 0
    assert main(["eval", str(models["qwen"]), *common, "--out", str(tmp_path / "plain")]) == 0
    custom = json.loads((tmp_path / "custom" / "metrics.json").read_text())["metrics"]
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())["metrics"]
    assert custom["loss"] == pytest.approx(plain["loss"], abs=1e-5) and custom["loss"] > 0


def test_serve_loads_custom_code_only_with_the_flag(models, monkeypatch, capsys):
    from sftlab.serve import server

    monkeypatch.delenv("SFTLAB_API_KEYS", raising=False)
    served = []

    class Server:
        def run(self, sockets):
            pass

    monkeypatch.setattr(server, "build_server", lambda model, settings: served.append(model) or Server())
    assert main(["serve", str(models["custom"]), "--port", "0"]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    assert main(["serve", str(models["custom"]), "--port", "0", "--trust-remote-code"]) == 0
    assert [type(model.model).__name__ for model in served] == ["WalkModel"]


def test_export_merges_a_lora_adapter_on_a_custom_base_only_with_the_flag(models, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", str(models["adapter"]), "--merge", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    assert not out.exists()
    assert main(["export", str(models["adapter"]), "--merge", str(out), "--trust-remote-code"]) == 0
    record = json.loads((out / "sftlab_export.json").read_text())
    assert record["max_abs_logit_diff"] < 1e-4
    assert (out / "modeling_walk.py").is_file() and (out / "configuration_walk.py").is_file()  # OUT loads alone
    with pytest.raises(SftlabError, match=r"^.*merged/config.json: model_type 'walkcustom' is custom code"):
        load_served(out)
    merged = load_served(out, trust_remote_code=True).model
    adapter = load_served(models["adapter"], trust_remote_code=True).model
    base = load_served(models["custom"], trust_remote_code=True).model
    ids = torch.tensor([[1, 5, 9, 4]])
    with torch.no_grad():
        assert type(merged).__name__ == "WalkModel"
        assert torch.allclose(merged(ids).logits, adapter(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-4)  # the adapter is in it


def test_export_copies_a_full_custom_model_only_with_the_flag(models, tmp_path, capsys):
    out = tmp_path / "copy"
    assert main(["export", str(models["custom"]), "--merge", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {_refusal(models['custom'])}\n"
    assert main(["export", str(models["custom"]), "--merge", str(out), "--trust-remote-code"]) == 0
    assert (out / "modeling_walk.py").is_file()
    assert type(load_served(out, trust_remote_code=True).model).__name__ == "WalkModel"


def test_training_keeps_naming_its_setting(models):
    """The run config's loaders still name model.trust_remote_code, the setting a run config has."""
    for load in (load_tokenizer, lambda cfg: load_model(cfg, "sft")):
        with pytest.raises(SftlabError) as error:
            load(ModelConfig(path=str(models["custom"])))
        assert str(error.value) == _refusal(models["custom"], "where a run config sets model.trust_remote_code=true")


def test_a_tokenizer_of_its_own_code_is_refused_without_the_flag(models, tmp_path):
    """A tokenizer_class transformers lacks (ChatGLMTokenizer, say) was replaced, without a word, by the tokenizer of
    the config's model_type."""
    directory = shutil.copytree(models["qwen"], tmp_path / "tok")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="WalkTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_walk.WalkTokenizer"]})
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "tokenization_walk.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\nclass WalkTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    with pytest.raises(SftlabError) as error:
        load_served(directory)
    assert str(error.value) == _refusal(directory, what="tokenizer_class 'WalkTokenizer'", file="tokenizer_config.json")
    assert type(load_served(directory, trust_remote_code=True).tokenizer).__name__ == "WalkTokenizer"


def test_directory_errors_name_the_commands_argument(models, tmp_path, capsys):
    """They named model.path (and suggested model.tokenizer), settings that generate, eval and export do not have."""
    bare = shutil.copytree(models["qwen"], tmp_path / "bare", ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n', encoding="utf-8")
    (tmp_path / "data.jsonl").write_text('{"text": "a b"}\n', encoding="utf-8")
    told = (f"'{bare}' has no tokenizer (none of tokenizer.json, tokenizer_config.json, tokenizer.model); copy the "
            "tokenizer saved with the model into it\n")
    assert main(["generate", str(bare), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: MODEL {told}"
    assert main(["eval", str(bare), "--data", str(tmp_path / "data.jsonl"), "--task", "lm", "--out",
                 str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == f"error: MODEL_DIR {told}"
    missing = tmp_path / "missing"  # found by the vision check, the first to look at MODEL_DIR
    assert main(["eval", str(missing), "--data", str(tmp_path / "data.jsonl"), "--task", "lm", "--out",
                 str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == f"error: MODEL_DIR '{missing}': no such directory\n"
    assert main(["export", str(bare), "--merge", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"error: RUN_DIR {told}"
    weightless = shutil.copytree(models["qwen"], tmp_path / "weightless", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(SftlabError, match=rf"^MODEL '{weightless}' has no weights \("):
        load_served(weightless)
    with pytest.raises(SftlabError, match=rf"^model\.path '{weightless}' has no weights \("):  # training: its setting
        load_model(ModelConfig(path=str(weightless)), "sft")


def test_an_adapters_base_is_named_by_its_adapter_config(models, tmp_path):
    bare = shutil.copytree(models["qwen"], tmp_path / "bare", ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    adapter = shutil.copytree(models["adapter"], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(bare)}))
    with pytest.raises(SftlabError, match=rf"^{adapter}/adapter_config.json: base_model_name_or_path '{bare}' has no "
                                          "tokenizer .*; copy the tokenizer saved with the model into it$"):
        load_served(adapter)
