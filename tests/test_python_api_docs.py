"""docs/python-api.md runs: every code block of the page, in order, in a temporary directory laid out as the
repository root (examples/ configs, tiny models written by the page's own `sftlab model tiny` lines); then what the
page says they print and return is checked."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python-api.md"


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of a Markdown page."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M)


def run_page(tmp_path: Path, monkeypatch) -> dict:
    from sftlab.cli import main

    (tmp_path / "examples").mkdir()
    for name in ("sft_tiny.yaml", "cls_tiny_bert.yaml"):
        shutil.copy(ROOT / "examples" / name, tmp_path / "examples" / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "python_api_page"}
    blocks = code_blocks(PAGE.read_text(encoding="utf-8"))
    assert [language for language, _ in blocks].count("python") >= 5
    for language, code in blocks:
        if language == "python":
            exec(compile(code, str(PAGE), "exec"), namespace)
            continue
        for line in code.splitlines():
            assert line.startswith("sftlab "), line
            assert main(shlex.split(line)[1:]) == 0, line
    return namespace


def test_every_example_on_the_page_runs_and_gives_what_it_says(tmp_path, monkeypatch, capsys):
    page = run_page(tmp_path, monkeypatch)
    out, err = capsys.readouterr()
    assert "0.0005 freeze runs/sft-tiny\n" in out
    result = page["result"]
    assert result.stopped == "completed" and result.metrics["step"] == 4 and len(result.losses) == 4
    assert (page["model_dir"] / "config.json").is_file() and page["model_dir"] == Path("runs/sft-tiny/model")
    assert page["full"].strategy.kind == "full" and page["result_full"].metrics["step"] == 2
    assert "trainable 149,696 / 149,696 (100.00%) [full]" in err  # the run log, on stderr as `sftlab train` writes it
    assert re.search(r"^interrupted at step 2; checkpoint saved in runs/sft-stopped/checkpoints/\S+$", out, re.M)
    assert page["resumed"].metrics["step"] == 4 and page["resumed"].stopped == "completed"
    summary = page["summary"]
    assert summary["task"] == "labels" and summary["metrics"]["n"] == 12 and summary["options"]["max_length"] == 384
    assert (tmp_path / "runs/sft-tiny/eval-labels/metrics.json").is_file()
    answers = page["answers"]
    assert [a["src"] for a in answers] == ["prompts[0]", "prompts[1]"]
    assert all(a["finish_reason"] in ("length", "stop") and a["completion_tokens"] <= 8 for a in answers)
    assert list(page["plan"]["rows"]) == ["full", "freeze"] and page["plan"]["recommendation"]["kind"]
    assert "plan: freeze (2/2): building its model" in err  # progress lines on stderr by default
    scores = page["scores"]
    assert scores["metrics"]["method"] == "head" and scores["metrics"]["labels"][:2] == ["card_arrival",
                                                                                      "cash_withdrawal_charge"]
    assert "examples/sft_tiny.yaml: unknown key 'train.lrr'; did you mean 'train.lr'?\n" in out
    assert "error:" not in out + err
