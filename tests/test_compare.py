"""sftlab compare: same data/seed/budget per strategy, files written, trainable counts equal each run's log."""

import json
import re

import pytest
import yaml

from sftlab.errors import SftlabError
from sftlab.plan.compare import parse_budget

ROWS = [{"messages": [{"role": "user", "content": f"question {i}"},
                      {"role": "assistant", "content": "answer " + "word " * (3 + i % 5)}]} for i in range(12)]


def test_parse_budget():
    assert parse_budget("20steps") == ("steps", 20)
    assert parse_budget("7") == ("steps", 7)
    assert parse_budget("60s") == ("seconds", 60.0)
    assert parse_budget("2m") == ("seconds", 120.0)
    for bad in ("fast", "1.5steps", "0s", "-3"):
        with pytest.raises(SftlabError, match="--budget"):
            parse_budget(bad)


def write_config(tmp_path, arch="llama"):
    from sftlab.models.tiny import save_tiny

    save_tiny(arch, tmp_path / "base", hidden=32, layers=2)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    raw = {"model": {"path": str(tmp_path / "base")},
           "data": {"train": "train.jsonl", "val_ratio": 0.25, "cache_dir": "cache"},
           "train": {"stage": "sft", "batch_size": 4, "max_length": 64, "lr": 1e-3, "epochs": 5},
           "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return config


@pytest.mark.slow  # three training processes (about 30-40 s each on 2 shared cores)
def test_compare_end_to_end(tmp_path, capsys):
    from sftlab.cli import main
    from sftlab.jemalloc import find_jemalloc

    config = write_config(tmp_path)
    out = tmp_path / "cmp"
    code = main(["compare", str(config), "--strategies", "full,freeze,lora", "--budget", "3steps", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "compare.json").read_text())
    assert [row["kind"] for row in summary["rows"]] == ["full", "freeze", "lora"]
    for row in summary["rows"]:
        log = (out / row["kind"] / "train.log").read_text()
        logged = re.search(r"trainable ([\d,]+) / ([\d,]+)", log)
        assert ("allocator: jemalloc (" in log) == (find_jemalloc() is not None)  # as sftlab train would run
        assert int(logged.group(1).replace(",", "")) == row["trainable"]
        assert row["steps"] == 3 and row["stopped"] == "completed"
        assert row["final_val_loss"] == json.loads((out / row["kind"] / "metrics.json").read_text())["eval_loss"]
        assert row["peak_bytes"] > 0
        run_cfg = yaml.safe_load((out / row["kind"] / "config.yaml").read_text())
        assert run_cfg["train"]["seed"] == 0 and run_cfg["train"]["max_steps"] == 3
        assert run_cfg["strategy"]["kind"] == row["kind"]
    trainable = [row["trainable"] for row in summary["rows"]]
    assert trainable[0] > trainable[1] and trainable[0] > trainable[2]
    table = (out / "compare.md").read_text()
    assert "| full |" in table and "val loss" in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(config), "--strategies", "lora", "--budget", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["compare", str(config), "--strategies", "lora", "--budget", "1", "--out", str(out), "--overwrite"]) == 0
    assert [row["kind"] for row in json.loads((out / "compare.json").read_text())["rows"]] == ["lora"]
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md", "compare.png", "lora", "notes.txt"]


def test_an_overwritten_comparison_removes_only_the_run_directories_of_strategies_it_drops(tmp_path):
    from sftlab.plan.compare import stale_strategy_dirs

    for name in ("full", "lora", "freeze"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("{}", encoding="utf-8")
    (tmp_path / "auto").mkdir()  # no config.yaml: not a run directory of ours
    assert stale_strategy_dirs(tmp_path, ("lora",)) == [tmp_path / "full", tmp_path / "freeze"]
    assert stale_strategy_dirs(tmp_path / "absent", ("lora",)) == []


def test_time_budget_stops_after_the_step_that_spends_it(tmp_path):
    from sftlab.config import load_config
    from sftlab.plan.compare import train_with_budget

    config = write_config(tmp_path)
    cfg = load_config(config, ["train.max_steps=50", f"output.dir={tmp_path / 'timed'}", "strategy.kind=lora"])
    result = train_with_budget(cfg, 0.001, config.parent)
    assert result["steps"] == 1 and result["stopped"] == "time_budget"
    assert (tmp_path / "timed" / "model").is_dir() and "eval_loss" in result["metrics"]
