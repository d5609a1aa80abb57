"""One reader of a saved model's trained settings (`sftlab.models.trained`): serve / generate, eval and export take the
template from the model's sftlab_template.json over the run's config.yaml, find that config.yaml from model/, best/
and checkpoints/step-N/, and report a malformed file in the same one line."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest

from sftlab.cli import main
from sftlab.models.chat_files import TEMPLATE_RECORD
from sftlab.models.tiny import save_tiny
from sftlab.models.trained import TrainedSettings, trained_settings
from test_export import lora_run

CONFIG = "data: {template: plain, mask: last_assistant}\ntrain: {stage: sft, max_length: 77}\n"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A LoRA run dir (qwen2, chatml tokenizer) whose model/ records chatml while its config.yaml says plain."""
    run, _ = lora_run(tmp_path_factory.mktemp("recorded"), "qwen2", "causal_lm")
    (run / "model" / TEMPLATE_RECORD).write_text(json.dumps({"template": "chatml", "chat_template_matches": True,
                                                             "stop_token_ids": []}))
    (run / "config.yaml").write_text(CONFIG, encoding="utf-8")
    (run.parent / "chat.jsonl").write_text(json.dumps(CHAT) + "\n", encoding="utf-8")
    return run


def test_the_record_wins_over_a_disagreeing_config_everywhere(recorded_run, tmp_path, capsys):
    from sftlab.infer.loading import describe_source, load_served

    run = recorded_run
    for directory in (run, run / "model"):
        assert trained_settings(directory) == TrainedSettings("chatml", "last_assistant", 77, run / "config.yaml")
        assert describe_source(directory).template == "chatml"
    assert load_served(run).template == "chatml"  # what serve, generate and chat render and stop with
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--data", str(run.parent / "chat.jsonl"), "--task", "lm", "--out", str(out)]) == 0
    options = json.loads((out / "metrics.json").read_text())["options"]
    assert (options["template"], options["mask"], options["max_length"]) == ("chatml", "last_assistant", 77)
    assert main(["export", str(run), "--merge", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "sftlab_export.json").read_text())["template"] == "chatml"
    assert json.loads((tmp_path / "merged" / TEMPLATE_RECORD).read_text())["template"] == "chatml"
    capsys.readouterr()


def _entry_points(run, tmp_path, monkeypatch) -> dict:
    """Each CLI command that reads a model's trained settings, as argv; serve is stopped before it would listen."""
    import sftlab.serve.server

    monkeypatch.setattr(sftlab.serve.server, "build_server", lambda *a, **k: pytest.fail("served a broken run"))
    data = str(run.parent / "chat.jsonl")
    return {"serve": ["serve", str(run), "--port", "0"],
            "generate": ["generate", str(run / "model"), "--input", data, "--output", str(tmp_path / "answers.jsonl")],
            "chat": ["chat", str(run)],
            "eval": ["eval", str(run / "model"), "--data", data, "--task", "lm", "--out", str(tmp_path / "eval")],
            "export": ["export", str(run), "--merge", str(tmp_path / "merged")]}


@pytest.mark.parametrize("name, text, message", [
    ("config.yaml", "data: {template: [chatml\n", r"config\.yaml:2: not valid YAML \(.+\)"),
    ("config.yaml", "- data\n- train\n", r"config\.yaml: expected a run config \(a mapping of groups: .*\), got list"),
    ("config.yaml", "data: chatml\n", r"config\.yaml: data: expected a mapping, got str"),
    ("config.yaml", "train: {max_length: 1.5}\n", r"config\.yaml: train\.max_length: expected a whole number, got 1\.5"),
    ("model/" + TEMPLATE_RECORD, '{"template": ', r"sftlab_template\.json:1: not valid JSON \(.+\)"),
])
def test_a_malformed_file_is_the_same_one_line_error_from_every_entry_point(recorded_run, tmp_path, monkeypatch,
                                                                            capsys, name, text, message):
    run = shutil.copytree(recorded_run, tmp_path / "run")  # the record stays: nobody may return before the config
    shutil.copy(recorded_run.parent / "chat.jsonl", tmp_path / "chat.jsonl")
    broken = run / name
    broken.write_text(text, encoding="utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO("/exit\n"))  # chat would end at once
    errors = {}
    for command, argv in _entry_points(run, tmp_path, monkeypatch).items():
        assert main(argv) == 2, command
        errors[command] = capsys.readouterr().err
    assert len(set(errors.values())) == 1, errors
    line = errors["eval"]
    assert line.startswith(f"error: {broken}") and line.count("\n") == 1
    assert re.fullmatch(rf"error: .*{message}\n", line), line
    assert not (tmp_path / "eval").exists() and not (tmp_path / "merged").exists()


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_search_order_from_model_best_and_checkpoints(tmp_path):
    from sftlab.infer.loading import describe_source

    run = tmp_path / "runs" / "exp"
    _write(run / "config.yaml", CONFIG)
    for where in ("model", "best", "checkpoints/step-4"):
        (run / where).mkdir(parents=True)
    _write(run / "best" / TEMPLATE_RECORD, json.dumps({"template": "chatml"}))
    from_config = TrainedSettings("plain", "last_assistant", 77, run / "config.yaml")
    assert trained_settings(run) == trained_settings(run / "model") == from_config  # a run dir stands for its model/
    assert trained_settings(run / "checkpoints" / "step-4") == from_config  # two levels up, under checkpoints/ only
    assert trained_settings(run / "best") == TrainedSettings("chatml", "last_assistant", 77, run / "config.yaml")
    _write(run / "checkpoints" / "step-4" / "config.yaml", "data: {template: gemma}\n")  # the nearest wins
    assert trained_settings(run / "checkpoints" / "step-4") == TrainedSettings(
        "gemma", config_file=run / "checkpoints" / "step-4" / "config.yaml")
    # outside checkpoints/, a config.yaml two levels up belongs to something else
    _write(tmp_path / "config.yaml", CONFIG)
    (tmp_path / "exports" / "merged").mkdir(parents=True)
    assert trained_settings(tmp_path / "exports" / "merged") == TrainedSettings()
    assert trained_settings(tmp_path / "no-such-dir") == TrainedSettings()
    # the infer loader reads the same run config for a checkpoint given on its own
    save_tiny("qwen2", run / "checkpoints" / "step-2", hidden=32, layers=1)
    assert describe_source(run / "checkpoints" / "step-2").template == "plain"


@pytest.mark.parametrize("config, template", [
    ("train: {stage: sft}\n", "auto"), ("", "auto"), ("train: {stage: pt}\n", None),
    ("train: {stage: pt}\ndata: {template: chatml}\n", "chatml"),
    ("train: {stage: cls}\ndata: {template: chatml}\n", None),
])
def test_the_run_config_template_follows_the_stage(tmp_path, config, template):
    _write(tmp_path / "run" / "config.yaml", config)
    (tmp_path / "run" / "model").mkdir()
    assert trained_settings(tmp_path / "run").template == template
