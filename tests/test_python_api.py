"""sftlab.api: bad input raises SftlabError with the line the CLI prints after `error: ` (nothing printed, no exit);
values the CLI's argparse limits are checked for Python callers too; configs given as RunConfig; a cheap import."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftlab import api
from sftlab.cli import main
from sftlab.commands.train import run_config
from sftlab.models.tiny import save_tiny


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("m") / "qwen2", hidden=32, layers=1)


@pytest.fixture
def config(tmp_path, lm_dir):
    path = tmp_path / "cfg" / "run.yaml"
    path.parent.mkdir()
    (path.parent / "train.jsonl").write_text('{"text": "a b c"}\n', encoding="utf-8")
    path.write_text(yaml.safe_dump({"model": {"path": str(lm_dir)}, "data": {"train": "train.jsonl", "format": "text"},
                                    "train": {"stage": "pt", "max_steps": 1},
                                    "output": {"dir": str(tmp_path / "run")}}), encoding="utf-8")
    return path


def cases(config, lm_dir, tmp_path):
    """(command line, the same call through sftlab.api) pairs that must fail with the same line."""
    missing = str(tmp_path / "nope.yaml")
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"prompt": "x"}\n', encoding="utf-8")
    return [
        (["train", str(config), "train.lrr=1"], lambda: api.train(config, ["train.lrr=1"])),
        (["train", str(config), "train.lrr=1"], lambda: api.load_config(config, ["train.lrr=1"])),
        (["train", missing], lambda: api.train(missing)),
        (["train", str(config), "--resume", "--overwrite"], lambda: api.train(config, resume=True, overwrite=True)),
        (["plan", str(config), "--strategies", "full,fast"], lambda: api.plan(config, strategies=["full", "fast"])),
        (["plan", missing], lambda: api.plan(missing)),
        (["eval", str(lm_dir), "--data", str(tmp_path / "none.jsonl"), "--task", "labels", "--out", str(tmp_path / "e")],
         lambda: api.evaluate(lm_dir, data=tmp_path / "none.jsonl", task="labels", out=tmp_path / "e")),
        (["eval", str(lm_dir), "--data", str(prompts), "--task", "labels", "--k", "0"],
         lambda: api.evaluate(lm_dir, data=prompts, task="labels", k=[0])),
        (["eval", str(lm_dir), "--data", str(prompts), "--task", "labels", "--labels", "a, a"],
         lambda: api.evaluate(lm_dir, data=prompts, task="labels", labels="a, a")),
        (["generate", str(tmp_path / "nope"), "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")],
         lambda: api.generate(tmp_path / "nope", ["x"])),
        (["generate", str(lm_dir), "--input", str(prompts), "--output", str(tmp_path / "o.jsonl"), "--max-new-tokens",
          "0"], lambda: api.generate(lm_dir, ["x"], max_new_tokens=0)),
    ]


def test_errors_are_raised_with_the_line_the_cli_prints(config, lm_dir, tmp_path, capsys):
    for argv, call in cases(config, lm_dir, tmp_path):
        assert main(argv) == 2, argv
        printed = capsys.readouterr().err.strip().splitlines()[-1]
        with pytest.raises(api.SftlabError) as raised:
            call()
        assert f"error: {raised.value}" == printed, argv
        assert "error:" not in "".join(capsys.readouterr()), argv


@pytest.mark.parametrize("call, message", [
    (lambda d: api.generate(d, "hello"), "prompts: expected a list of prompts, got one string (write [prompt])"),
    (lambda d: api.generate(d, [["hi"]]), "prompts[0]: expected a string or a row (a dict), got list"),
    (lambda d: api.generate(d, [{"messages": [{"role": "assistant", "content": "only"}]}]),
     "prompts[0]: no prompt left after removing the assistant answer"),
    (lambda d: api.train("run.yaml", "train.lr=1"),
     "overrides: expected a list of key.sub=value strings, got one string (write ['train.lr=1'])"),
    (lambda d: api.generate(d, ["hi"], dtype="fp32"), "--dtype 'fp32': expected one of float32, bfloat16, float16, auto"),
    (lambda d: api.evaluate(d, data="x.jsonl", task="labels", label_method="vote"),
     "--label-method 'vote': expected one of likelihood, generate, head"),
    (lambda d: api.evaluate(d, data="x.jsonl", task="labels", mask="answers"),
     "--mask 'answers': expected one of assistant, last_assistant, each_assistant, all"),
])
def test_python_only_inputs_fail_in_one_line_before_any_model_loads(lm_dir, monkeypatch, call, message):
    """What argparse refuses on the command line (choices) and what only Python can pass (a string for a list)."""
    from sftlab.infer import loading

    if "prompts" in message:
        monkeypatch.setattr(loading, "load_served", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(api.SftlabError) as raised:
        call(lm_dir)
    assert str(raised.value) == message


def test_a_run_config_takes_overrides_and_its_data_paths_are_relative_to_base_dir(config, tmp_path):
    cfg, base = run_config(config, ["train.lr=0.5"])
    assert base == config.parent and cfg.train.lr == 0.5  # a file: its directory, as `sftlab train` resolves
    again, none = run_config(cfg, ["train.max_steps=7"])
    assert none is None and again.train.max_steps == 7 and again.train.lr == 0.5 and cfg.train.max_steps == 1
    assert run_config(cfg, base_dir=tmp_path) == (cfg, tmp_path)
    with pytest.raises(api.SftlabError, match=r"^config: unknown key 'train.lrr'; did you mean 'train.lr'\?$"):
        run_config(cfg, ["train.lrr=1"])


def test_a_run_config_trains_with_base_dir_and_fails_in_one_line_without(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = api.load_config(config)
    with pytest.raises(api.SftlabError, match=r"train\.jsonl"):  # relative to the working directory: not there
        api.train(cfg, show_progress=False)
    random.seed(12345)
    result = api.train(cfg, base_dir=config.parent, show_progress=False)
    assert random.random() == random.Random(cfg.train.seed).random()  # left seeded by the run (docs/python-api.md)
    assert result.stopped == "completed" and result.metrics["step"] == 1 and (result.out_dir / "model").is_dir()


def test_importing_the_api_does_not_import_torch():
    code = "import sys, sftlab.api; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_call_makes_the_clis_library_settings_where_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(api.SftlabError, match="^config file not found"):
        api.train(tmp_path / "nope.yaml")
    assert os.environ["HF_HUB_OFFLINE"] == "0"  # the caller's own value is kept
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] == "1"


def test_a_plan_without_progress_prints_no_progress_lines(config, capsys):
    plan = api.plan(config, strategies="full", show_progress=False)
    assert list(plan["rows"]) == ["full"] and plan["rows"]["full"]["trainable"] > 0
    assert "plan:" not in capsys.readouterr().err


def test_one_stop_string_is_one_stop_string(lm_dir, monkeypatch):
    from sftlab.infer import engine

    seen = []
    monkeypatch.setattr(engine, "generate_all", lambda served, ids, params, *a, **k: seen.append(params) or [
        {"type": "done", "text": "", "finish_reason": "stop", "completion_tokens": 0}] * len(ids))
    assert api.generate(lm_dir, ["hi", "ho"], stop="</s>", seed=5)[1]["src"] == "prompts[1]"
    assert [(p.stop, p.seed) for p in seen[0]] == [(("</s>",), 5), (("</s>",), 6)]


def test_loading_a_config_sets_hf_hub_offline_where_unset():
    """docs/python-api.md: importing the API does not set it; loading a config does."""
    code = ("import os, sftlab.api as a; assert 'HF_HUB_OFFLINE' not in os.environ; "
            "a.load_config('examples/sft_tiny.yaml'); print(os.environ['HF_HUB_OFFLINE'])")
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
