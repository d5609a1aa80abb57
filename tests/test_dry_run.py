"""`sftlab train --dry-run`: the report equals what the data pipeline and `sftlab plan` count, nothing is written
under output.dir, and bad input fails with one line as a run would."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main
from test_train_cli import CLS_ROWS
from test_train_loop import tiny_run


def _config(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _tree(root: Path) -> dict:
    """Every file and directory under `root` with its content hash and modification time."""
    return {str(path.relative_to(root)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()
                                          if path.is_file() else None)
            for path in sorted(root.rglob("*"))}


def _dry(config: str, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["train", config, "--dry-run", "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("arch, task, stage, groups", [
    ("qwen2", "causal_lm", "sft", {"data": {"val_ratio": 0.25}}),
    ("bert", "cls", "cls", {"data": {"val_ratio": 0.2}}),
])
def test_dry_run_reports_what_the_data_pipeline_counts_and_creates_no_output_dir(tmp_path, capsys, arch, task,
                                                                                   stage, groups):
    from sftlab.config import load_config
    from sftlab.data.pipeline import prepare_data
    from sftlab.data.preview import summary_line
    from sftlab.models.load import load_tokenizer

    rows = CLS_ROWS if stage == "cls" else None
    raw = tiny_run(tmp_path, arch, rows=rows, task=task, train={"stage": stage, "max_steps": None, "epochs": 2},
                   **groups)
    config = _config(tmp_path, raw)
    code, out, err = _dry(config, capsys)
    assert code == 0, err
    out_dir = Path(raw["output"]["dir"])
    assert not out_dir.exists()  # not even created
    stats = prepare_data(load_config(config), load_tokenizer(load_config(config).model), tmp_path).stats
    lines = out.splitlines()
    assert lines[0].startswith("dry run: ") and str(out_dir) in lines[0]
    assert f"stage {stage}, strategy full, precision fp32" in lines
    for split in ("train", "validation"):
        assert summary_line(split, stats[split]) in lines  # examples, rows, tokens, supervised, drops
    rows_used = stats["train"]["rows"]
    per_epoch = -(-rows_used // 4)  # batch_size 4, grad_accum 1
    assert f"run: {2 * per_epoch} optimizer steps (train.epochs 2 x {per_epoch} per epoch" in out
    assert "[full]" in err and "data_stats.json" not in err  # the run log's setup lines, on stderr
    if stage == "sft":  # 64-token limit: the long answers of the validation split are dropped, and said so
        assert stats["validation"]["dropped_too_long"] > 0
        assert f"dropped {stats['validation']['dropped_too_long']} of" in err


def test_dry_run_json_equals_the_planner_for_each_strategy(tmp_path, capsys):
    from sftlab.config import load_config
    from sftlab.plan.planner import build_plan
    from sftlab.plan.recommend import load_thresholds

    raw = tiny_run(tmp_path, "qwen2")
    config = _config(tmp_path, raw)
    plan = build_plan(load_config(config), tmp_path, load_thresholds(), ("full", "lora", "auto"))
    for kind in ("full", "lora", "auto"):
        code, out, err = _dry(config, capsys, "--json", f"strategy.kind={kind}")
        assert code == 0, err
        report = json.loads(out)
        row = plan["rows"][kind]
        assert (report["strategy"], report["trainable"], report["total_parameters"]) == (kind, row["trainable"],
                                                                                         row["total"])
        assert report["memory"]["estimate"] == row["estimate"] and report["memory"]["workload"] == plan["workload"]
        assert report["run"] == plan["run"] and report["total_steps"] == plan["run"]["steps"]
        assert report["data"]["train"]["supervised_tokens"] == plan["data"]["supervised"]
    assert not Path(raw["output"]["dir"]).exists()


def test_dry_run_of_a_launch_counts_its_processes_in_one_process(tmp_path, capsys, monkeypatch):
    import sftlab.train.launch_checks as launch_checks
    from sftlab.config import load_config
    from sftlab.plan.planner import build_plan
    from sftlab.plan.recommend import load_thresholds

    monkeypatch.setattr(launch_checks, "local_slots", lambda: (4, "CPU core(s)"))
    monkeypatch.setattr("sftlab.train.distributed.launch", lambda *a, **k: pytest.fail("a worker was started"))
    raw = tiny_run(tmp_path, "qwen2", train={"max_steps": None, "epochs": 1, "batch_size": 1})
    config = _config(tmp_path, raw)
    code, out, err = _dry(config, capsys, "--json", "--nproc", "3")
    assert code == 0, err
    report = json.loads(out)
    expected = build_plan(load_config(config), tmp_path, load_thresholds(), ("full",), processes=3)["run"]
    assert report["processes"] == 3 and report["run"] == expected and report["total_steps"] == expected["steps"]
    code, out, _ = _dry(config, capsys, "--nproc", "3")
    assert "3 processes (set up in this one process; no worker started)" in out


def test_dry_run_leaves_an_existing_run_unchanged(tmp_path, capsys):
    raw = tiny_run(tmp_path, "qwen2", train={"max_steps": 1, "save_every_n_steps": 1})
    config = _config(tmp_path, raw)
    assert main(["train", config, "--no-progress"]) == 0
    out_dir = Path(raw["output"]["dir"])
    (out_dir / "notes.txt").write_text("mine", encoding="utf-8")
    before = _tree(out_dir)
    capsys.readouterr()

    code, out, err = _dry(config, capsys)  # occupied: the run's own one-line error
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: output.dir") and "--overwrite" in err
    code, out, err = _dry(config, capsys, "--overwrite")
    assert code == 0, err
    assert "--overwrite would replace the previous run's checkpoints, model" in out and "notes.txt" not in out
    code, out, err = _dry(config, capsys, "--resume", "train.max_steps=3")  # a longer resume: schedule resized
    assert code == 0, err
    assert "resume: from step 1 of 3" in out and "resuming from" in err
    assert _tree(out_dir) == before


def test_dry_run_bad_input_fails_in_one_line(tmp_path, capsys, monkeypatch):
    raw = tiny_run(tmp_path, "qwen2")
    config = _config(tmp_path, raw)
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    cases = [(["train.lrr=1"], "unknown key 'train.lrr'"),
             (["data.train=missing.jsonl"], "missing.jsonl"),
             (["strategy.kind=freeze"], "strategy.freeze selects nothing"),
             ([f"output.dir={tmp_path / 'afile' / 'run'}"], "is a file"),
             (["--resume"], "--resume: no checkpoint"),
             (["--nproc", "0"], "--nproc must be at least 1")]
    for extra, expected in cases:
        code, out, err = _dry(config, capsys, *extra)
        assert code == 2 and out == "", extra
        assert err.strip().splitlines()[-1].startswith("error: ") and expected in err.strip().splitlines()[-1], err
    assert main(["train", config, "--json"]) == 2 and "--json goes with --dry-run" in capsys.readouterr().err
    monkeypatch.setattr("sftlab.train.dry_run.os.access", lambda path, mode: False)  # as a non-root user would see it
    code, out, err = _dry(config, capsys)
    assert code == 2 and err.strip() == f"error: output.dir {tmp_path / 'run'}: {tmp_path} is not writable"
    assert not (tmp_path / "run").exists()
