"""The plan probe measures on the malloc `sftlab train` would use, and starts from an empty jemalloc heap; `sftlab plan
--probe` prints each strategy's run time as the run's steps x the probe's median step time."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from sftlab import jemalloc
from sftlab.plan.probe import probe_environment, purge_jemalloc
from test_plan import tiny_config


def test_the_probe_process_runs_on_jemalloc_where_training_would(monkeypatch):
    environ = {"PATH": "/bin", "MALLOC_CONF": "narenas:2"}
    assert probe_environment("system", environ) == environ
    monkeypatch.setattr(jemalloc, "resolve_allocator", lambda setting: "/opt/lib/libjemalloc.so.2")
    env = probe_environment("auto", environ)
    assert env["LD_PRELOAD"] == "/opt/lib/libjemalloc.so.2" and env["PATH"] == "/bin"
    assert env["MALLOC_CONF"] == f"{jemalloc.MALLOC_CONF},narenas:2"
    monkeypatch.setattr(jemalloc, "resolve_allocator", lambda setting: None)
    assert probe_environment("auto", environ) == environ


def test_purge_is_a_no_op_without_jemalloc():
    if jemalloc.loaded_jemalloc():
        pytest.skip("this test process itself runs on jemalloc")
    assert purge_jemalloc() is False


def test_purge_returns_jemallocs_freed_pages_to_the_kernel():
    library = jemalloc.find_jemalloc()
    if library is None:
        pytest.skip("no jemalloc library (apt install libjemalloc2)")
    code = """
import numpy as np
from sftlab.plan.probe import purge_jemalloc
def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) // 1024
arrays = [np.ones(2**20) for _ in range(40)]  # 320 MiB in 8 MiB blocks
del arrays
freed = rss()
print(purge_jemalloc(), freed - rss())
"""
    env = jemalloc.exec_environment(library, {"PATH": "/usr/bin:/bin"})  # decay off: freed pages stay resident
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    purged, returned_mib = done.stdout.split()
    assert purged == "True" and int(returned_mib) > 250, done.stdout + done.stderr


def test_probe_run_time_is_the_runs_steps_times_the_median_step(tmp_path, monkeypatch, capsys):
    import sftlab.plan.probe as probe
    from sftlab.cli import main

    measured = {"full": [1400.0, 9000.0, 1500.0], "lora": [0.5, 0.2, 0.3]}  # medians 1500 and 0.3; means differ
    monkeypatch.setattr(probe, "run_probe", lambda configs, steps, base_dir, **kwargs: [
        {"step_seconds": measured[cfg.strategy.kind], "peak_bytes": 2**20, "device": "cpu", "trainable": 1,
         "allocator": "jemalloc"} for cfg in configs])
    raw = tiny_config(tmp_path, hidden=32, layers=1, max_steps=None, epochs=2)  # 9 rows of 4: 3 steps per epoch
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["plan", str(config), "--strategies", "full,lora", "--probe", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "run: 6 optimizer steps (train.epochs 2 x 3 per epoch" in out
    assert "not included: 1 evaluation, setup, saving" in out  # the final validation
    lines = dict(re.findall(r"^  (\w+) ≈ (.+)$", out, re.M))
    assert lines["full"] == "2 h 30 min (6 x 1,500 s = 9,000 s)"
    steps, step, total = re.fullmatch(r"0 min \((\d+) x ([\d.]+) s = ([\d.]+) s\)", lines["lora"]).groups()
    assert (int(steps), float(step), float(total)) == (6, 0.3, 1.8)
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert rows["full"]["probe"]["run_seconds"] == 9000 and rows["lora"]["probe"]["run_seconds"] == pytest.approx(1.8)
