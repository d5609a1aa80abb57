"""Every shipped example config starts with its run command and validates; the tiny-model ones train end to end."""

import shlex
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = sorted(EXAMPLES.rglob("*.yaml"))
TINY = ["pt_tiny.yaml", "sft_tiny.yaml", "sft_tiny_lora.yaml", "sft_tiny_auto.yaml", "sft_tiny_fast_cpu.yaml",
        "cls_tiny_bert.yaml"]


def test_there_are_examples_for_every_stage():
    stages = {load_config(path).train.stage for path in CONFIGS}
    assert {"pt", "sft", "cls"} <= stages


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_starts_with_its_run_command_and_validates(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and "sftlab " in first, f"{path.name}: first line must be a comment with the run command"
    load_config(path)


def _commands(path: Path) -> list[list[str]]:
    """The `sftlab ...` commands on the example's first line, split at '&&'."""
    line = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
    return [shlex.split(part)[1:] for part in line.split("&&")]


@pytest.mark.parametrize("name", TINY)
def test_tiny_example_runs_as_its_header_says(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _commands(EXAMPLES / name)
    assert commands[-1][:2] == ["train", f"examples/{name}"]
    for argv in commands[:-1]:
        assert main(argv) == 0
    out = tmp_path / "out"
    assert main(["train", str(EXAMPLES / name), "train.max_steps=2", "eval.every_n_steps=1", f"output.dir={out}"]) == 0
    assert (out / "model" / "README.md").is_file() and (out / "metrics.json").is_file()


SETUP = [path for path in CONFIGS
         if any(argv[:2] in (["model", "tiny"], ["model", "tiny-vlm"]) for argv in _commands(path)[:-1])]


def test_header_setup_commands_run_one_after_another_in_one_directory(tmp_path, monkeypatch):
    """A reader tries the examples in turn from the same directory; several share a test model (runs/tiny-qwen2),
    so each header's set-up must also succeed where an earlier example already wrote it."""
    monkeypatch.chdir(tmp_path)
    assert len(SETUP) >= 2
    for path in SETUP + SETUP[:1]:
        for argv in _commands(path)[:-1]:
            assert main(argv) == 0, f"{path.relative_to(EXAMPLES)}: `sftlab {shlex.join(argv)}` failed on the second go"
