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


def _earlier_comparison(out):
    """What an earlier `sftlab compare` left in `out`: a lora run directory with its log, and the report."""
    (out / "lora").mkdir(parents=True)
    (out / "lora" / "config.yaml").write_text("{}", encoding="utf-8")
    (out / "lora" / "train.log").write_text("the earlier lora run's log", encoding="utf-8")
    (out / "compare.json").write_text("{}", encoding="utf-8")
    return {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}


def test_a_strategy_that_cannot_be_set_up_fails_before_any_strategy_trains(tmp_path):
    """A LoRA target, freeze glob or auto budget that matches nothing is found before full trains for the budget,
    and the earlier comparison in OUT stays as it was (before: full trained into OUT/full, then lora failed)."""
    from sftlab.config import load_config
    from sftlab.plan.compare import compare, parse_budget
    from sftlab.plan.recommend import load_thresholds

    config = write_config(tmp_path)
    out = tmp_path / "cmp"
    before = _earlier_comparison(out)
    for override, key in [("strategy.lora.target_modules=[nope]", "strategy.lora.target_modules"),
                          ("strategy.freeze.modules=[nothing*]", "strategy.freeze.modules"),
                          ("strategy.auto.budget=1e12", "strategy.auto.budget"),
                          ("strategy.auto.budget=3", "strategy.auto.budget: 3 parameters is less than the smallest")]:
        cfg = load_config(config, [override])
        with pytest.raises(SftlabError, match=re.escape(key)):
            compare(cfg, ("full", "freeze", "lora", "auto"), parse_budget("1"), out, config.parent, load_thresholds(),
                    overwrite=True)
        assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_strategy_whose_setup_fails_keeps_the_earlier_runs_log(tmp_path):
    """A run that fails while it sets up puts the earlier run back (as `sftlab train --overwrite` does); its
    train.log is not replaced by the failed attempt's."""
    from sftlab.config import load_config
    from sftlab.plan.compare import compare, parse_budget
    from sftlab.plan.recommend import load_thresholds

    config = write_config(tmp_path)
    out = tmp_path / "cmp"
    before = _earlier_comparison(out)
    cfg = load_config(config, ["eval.metric=bogus_metric"])  # refused when the session is built, in the worker
    with pytest.raises(SftlabError, match="compare strategy lora: .*bogus_metric"):
        compare(cfg, ("lora",), parse_budget("1"), out, config.parent, load_thresholds(), overwrite=True)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_model_with_its_own_code_is_read_with_model_trust_remote_code(tmp_path, monkeypatch):
    """compare reads the block count (and checks the strategies) of a model with custom code as training loads it,
    with model.trust_remote_code (before: transformers asked on the terminal whether to run the code, then failed)."""
    import io

    from sftlab.config import load_config
    from sftlab.plan.compare import _num_layers, check_strategies, run_config
    from sftlab.plan.recommend import load_thresholds
    from test_plan import _with_its_own_code

    config = write_config(tmp_path)
    _with_its_own_code(tmp_path / "base")
    cfg = load_config(config, ["model.trust_remote_code=true"])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a prompt would read "no" here, not wait
    assert _num_layers(cfg) == 2
    check_strategies([run_config(cfg, kind, ("steps", 1), tmp_path / "cmp", load_thresholds(), 2)
                      for kind in ("full", "freeze", "lora")])
    bad = load_config(config, ["model.trust_remote_code=true", "strategy.lora.target_modules=[nope]"])
    with pytest.raises(SftlabError, match="strategy.lora.target_modules"):
        check_strategies([run_config(bad, "lora", ("steps", 1), tmp_path / "cmp", load_thresholds(), 2)])


def test_compare_help_says_what_overwrite_replaces(capsys):
    """--overwrite does not replace the whole directory (before, --help said so): the user's files there stay
    (test_an_overwritten_comparison_removes_only_the_run_directories_of_strategies_it_drops)."""
    from sftlab.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "replace an earlier comparison in the output directory" in text and "other files there stay" in text


def test_the_report_files_are_all_written_or_none(tmp_path, monkeypatch):
    """compare.json, .md and .png describe one comparison: when the plot cannot be drawn, the earlier comparison's
    three files stay (before, compare.json was already the new one)."""
    from sftlab.plan import report

    summary = {"model": "m", "stage": "sft", "seed": 0, "budget": {"kind": "steps", "value": 1},
               "rows": [{"kind": "lora", "trainable": 1, "total": 2, "peak_bytes": 3, "train_seconds": 1.0, "steps": 1,
                         "stopped": "completed", "final_val_loss": None, "eval": {}, "train_loss": 1.0}]}
    report.write_report(summary, tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def broken(summary):
        raise RuntimeError("no backend")

    monkeypatch.setattr(report, "plot_png", broken)
    with pytest.raises(RuntimeError):
        report.write_report({**summary, "seed": 1}, tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
