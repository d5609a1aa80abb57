"""train.allocator (sftlab.jemalloc, sftlab.cli.console): which malloc training runs on; re-executing onto jemalloc."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftlab import cli, jemalloc
from sftlab.errors import SftlabError

FOUND = "/opt/lib/libjemalloc.so.2"
CONSOLE = Path(sys.executable).parent / "sftlab"  # the installed console script (pyproject's [project.scripts])
LIBRARY = jemalloc.find_jemalloc() if sys.platform.startswith("linux") else None
needs_jemalloc = pytest.mark.skipif(LIBRARY is None, reason="no jemalloc library here (apt install libjemalloc2)")


@pytest.fixture
def found(monkeypatch):
    """Make the library search find `FOUND` (or, after `found(None)`, nothing)."""
    def set_found(library=FOUND):
        monkeypatch.setattr(jemalloc, "find_jemalloc", lambda: library)
    set_found()
    return set_found


@pytest.fixture
def execs(monkeypatch):
    """Record os.execve calls instead of replacing the test process; start as a process not on jemalloc."""
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(jemalloc, "loaded_jemalloc", lambda maps="/proc/self/maps": None)
    monkeypatch.delenv(jemalloc.MARKER, raising=False)
    return calls


def tiny_run_config(tmp_path: Path) -> Path:
    from test_plan import tiny_config

    config = tmp_path / "run.json"  # YAML is a superset of JSON
    config.write_text(json.dumps(tiny_config(tmp_path, hidden=32, max_steps=1)), encoding="utf-8")
    return config


def clean_env() -> dict:
    """This environment without any preload or marker of the process running the tests."""
    return {key: value for key, value in os.environ.items()
            if key not in ("LD_PRELOAD", "MALLOC_CONF", jemalloc.MARKER)} | {"OMP_NUM_THREADS": "1"}


def test_resolution_of_each_setting(found, monkeypatch):
    assert jemalloc.resolve_allocator("auto") == FOUND
    assert jemalloc.resolve_allocator("jemalloc") == FOUND
    assert jemalloc.resolve_allocator("system") is None
    found(None)
    assert jemalloc.resolve_allocator("auto") is None
    assert jemalloc.resolve_allocator("system") is None
    with pytest.raises(SftlabError) as missing:
        jemalloc.resolve_allocator("jemalloc")
    assert str(missing.value) == ("train.allocator=jemalloc: no jemalloc library found; install it (Debian/Ubuntu: "
                                  "apt install libjemalloc2) or set train.allocator: system")
    found()
    monkeypatch.setattr(sys, "platform", "darwin")  # no LD_PRELOAD there: auto means the system malloc
    assert jemalloc.resolve_allocator("auto") is None
    with pytest.raises(SftlabError, match="works on Linux only"):
        jemalloc.resolve_allocator("jemalloc")
    with pytest.raises(SftlabError, match="train.allocator: got 'tcmalloc', expected one of auto, jemalloc, system"):
        jemalloc.resolve_allocator("tcmalloc")


def test_search_order_and_the_loader_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "venv"))
    monkeypatch.setenv("CONDA_PREFIX", str(tmp_path / "conda"))
    dirs = [str(d) for d in jemalloc.search_dirs()]
    assert dirs[:2] == [str(tmp_path / "venv" / "lib"), str(tmp_path / "conda" / "lib")]
    assert str(Path(sys.prefix) / "lib") in dirs
    expected = ["/usr/local/lib", "/usr/local/lib64", "/usr/lib64", "/usr/lib"]
    assert [d for d in dirs if d in expected] == expected
    assert any(d.startswith("/usr/lib/") and d.endswith("-linux-gnu") for d in dirs)
    assert dirs[-1] == str(Path.home() / ".local" / "lib")

    first, second = tmp_path / "a", tmp_path / "b"
    for directory, name in ((first, "libjemalloc.so"), (second, "libjemalloc.so.2")):
        directory.mkdir()
        (directory / name).write_bytes(b"")
    monkeypatch.setattr(jemalloc, "search_dirs", lambda: [tmp_path / "none", first, second])
    assert jemalloc.find_jemalloc() == str(first / "libjemalloc.so")
    monkeypatch.setattr(jemalloc, "search_dirs", lambda: [tmp_path / "none"])
    monkeypatch.setattr(jemalloc.ctypes.util, "find_library",
                        lambda name: f"lib{name}.so.2" if name == "jemalloc" else None)
    assert jemalloc.find_jemalloc() == "libjemalloc.so.2"


def test_loaded_library_is_read_from_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
                    "7f20-7f30 rw-p 00000000 00:00 0 \n", encoding="utf-8")
    assert jemalloc.loaded_jemalloc(str(maps)) is None
    maps.write_text(maps.read_text() + f"7f40-7f50 r-xp 00000000 08:01 456 {FOUND}\n", encoding="utf-8")
    assert jemalloc.loaded_jemalloc(str(maps)) == FOUND
    assert jemalloc.loaded_jemalloc(str(tmp_path / "no-proc")) is None


def test_allocator_line_says_why_it_is_not_jemalloc(monkeypatch):
    monkeypatch.setattr(jemalloc, "loaded_jemalloc", lambda maps="/proc/self/maps": FOUND)
    assert jemalloc.allocator_line("system") == f"allocator: jemalloc ({FOUND})"  # the truth, whatever was asked
    monkeypatch.setattr(jemalloc, "loaded_jemalloc", lambda maps="/proc/self/maps": None)
    monkeypatch.delenv(jemalloc.MARKER, raising=False)
    monkeypatch.setattr(jemalloc, "find_jemalloc", lambda: None)
    assert jemalloc.allocator_line("auto") == jemalloc.allocator_line() == "allocator: system malloc"
    monkeypatch.setattr(jemalloc, "find_jemalloc", lambda: FOUND)  # in-process training where jemalloc is there
    assert jemalloc.allocator_line("auto") == (
        f"allocator: system malloc (not started by `sftlab train`, which runs on jemalloc, faster and lighter: start "
        f"the process with LD_PRELOAD={FOUND} MALLOC_CONF={jemalloc.MALLOC_CONF} for the same)")
    assert jemalloc.allocator_line("system") == jemalloc.allocator_line() == "allocator: system malloc"
    monkeypatch.setenv(jemalloc.MARKER, FOUND)  # re-executed, but the loader did not map the library
    assert jemalloc.allocator_line("auto") == f"allocator: system malloc ({FOUND} could not be preloaded)"


def test_exec_environment_prepends_the_library_and_the_decay_setting():
    env = jemalloc.exec_environment(FOUND, {"PATH": "/bin", "LD_PRELOAD": "/x/libother.so", "MALLOC_CONF": "narenas:2"})
    assert env == {"PATH": "/bin", "LD_PRELOAD": f"{FOUND}:/x/libother.so",
                   "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0,narenas:2",
                   jemalloc.MARKER: FOUND}
    env = jemalloc.exec_environment(FOUND, {"PATH": "/bin"})
    assert env["LD_PRELOAD"] == FOUND and env["MALLOC_CONF"] == jemalloc.MALLOC_CONF


def test_reexec_only_when_jemalloc_is_chosen_and_not_loaded(found, execs, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/x/libother.so")
    jemalloc.reexec_on_jemalloc("auto", ["-P", "-m", "sftlab", "train", "run.yaml"])
    [(path, argv, env)] = execs
    assert path == sys.executable and argv == [sys.executable, "-P", "-m", "sftlab", "train", "run.yaml"]
    assert env["LD_PRELOAD"] == f"{FOUND}:/x/libother.so" and env[jemalloc.MARKER] == FOUND
    assert env["MALLOC_CONF"].startswith("dirty_decay_ms:-1,muzzy_decay_ms:-1")
    jemalloc.reexec_on_jemalloc("system", ["x"])
    found(None)
    jemalloc.reexec_on_jemalloc("auto", ["x"])
    found()
    monkeypatch.setenv(jemalloc.MARKER, FOUND)  # already re-executed once (even if the preload failed): never again
    jemalloc.reexec_on_jemalloc("auto", ["x"])
    monkeypatch.delenv(jemalloc.MARKER)
    monkeypatch.setattr(jemalloc, "loaded_jemalloc", lambda maps="/proc/self/maps": FOUND)  # preloaded by hand
    jemalloc.reexec_on_jemalloc("jemalloc", ["x"])
    assert len(execs) == 1


def test_console_reexecs_train_with_the_loaded_config(tmp_path, found, execs, monkeypatch, capsys):
    config = tiny_run_config(tmp_path)
    capsys.readouterr()  # the tiny model's saving
    monkeypatch.setattr(cli, "main", lambda argv: 0)  # what runs when nothing was executed
    for argv, expected in ((["train", str(config), "--no-progress", "train.lr=1e-3"], 1),
                           (["train", str(config), "train.allocator=system"], 0),
                           (["train", str(config), "train.allocator=tcmalloc"], 0),  # invalid: main reports it
                           (["train", str(tmp_path / "missing.yaml")], 0),
                           (["train", str(config), "--bogus"], 0),
                           (["train", "--help"], 0),
                           (["compare", str(config), "--budget", "1steps"], 0),  # train and the demos only
                           (["plan", str(config), "--probe"], 0),
                           (["demo", "--no-policy"], 1), (["policy", "demo", "--quick"], 1), (["demo", "--help"], 0),
                           (["policy", "simulate"], 0)):
        execs.clear()
        monkeypatch.setattr(sys, "argv", [str(CONSOLE), *argv])
        assert cli.console() == 0
        assert len(execs) == expected, argv
    assert capsys.readouterr().err == ""  # parsing for the decision prints nothing (main would report)
    execs.clear()
    monkeypatch.setattr(sys, "argv", [str(CONSOLE), "train", str(config), "--no-progress", "train.lr=1e-3"])
    cli.console()
    assert execs[0][1][1:] == ["-P", "-m", "sftlab", "train", str(config), "--no-progress", "train.lr=1e-3"]
    cli.console(("-m", "sftlab"))  # `python -m sftlab` without -P re-executes without it: the same sftlab is found
    assert execs[1][1][1:] == ["-m", "sftlab", "train", str(config), "--no-progress", "train.lr=1e-3"]
    found(None)
    monkeypatch.setattr(sys, "argv", [str(CONSOLE), "train", str(config), "train.allocator=jemalloc"])
    assert cli.console() == 0 and len(execs) == 2  # required and missing: main reports it


def test_main_in_process_never_execs_and_reports_the_allocator(tmp_path, found, monkeypatch, capsys):
    def refuse(*args):
        raise AssertionError("sftlab.cli.main must not re-execute the process")

    monkeypatch.setattr(os, "execve", refuse)
    monkeypatch.setattr(jemalloc, "loaded_jemalloc", lambda maps="/proc/self/maps": None)
    monkeypatch.delenv(jemalloc.MARKER, raising=False)
    config = tiny_run_config(tmp_path)
    assert cli.main(["train", str(config), "train.allocator=jemalloc", "--no-progress"]) == 0
    assert ("allocator: system malloc (train.allocator=jemalloc takes effect when the sftlab command starts the run)"
            in capsys.readouterr().err)
    found(None)
    assert cli.main(["train", str(config), "train.allocator=jemalloc", "--overwrite"]) == 2
    assert capsys.readouterr().err == ("error: train.allocator=jemalloc: no jemalloc library found; install it "
                                       "(Debian/Ubuntu: apt install libjemalloc2) or set train.allocator: system\n")


def test_unknown_allocator_is_a_config_error():
    from sftlab.config import load_config

    with pytest.raises(SftlabError) as bad:
        load_config(None, ["model.path=m", "data.train=d.jsonl", "train.allocator=tcmalloc"])
    assert str(bad.value) == "config: train.allocator: got 'tcmalloc', expected one of 'auto', 'jemalloc' or 'system'"


def test_benchmark_runner_passes_its_spec_key_to_train_allocator(monkeypatch):
    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench / "_peers"))
    monkeypatch.syspath_prepend(str(bench))
    runner = importlib.import_module("run_sftlab")
    spec = {"model": "m", "train_json": "d.json", "packing": True, "batch_size": 8, "lr": 1e-4, "max_length": 512,
            "seed": 0, "precision": "bf16", "work": "/tmp/w", "name": "x"}
    assert runner.build_config(spec).train.allocator == "auto"
    setting = importlib.import_module("sft_vs_peers").SETTINGS["sftlab-packed-system"]
    assert runner.build_config({**spec, **setting[3]}).train.allocator == "system"
    assert "reexec_on_jemalloc(cfg.train.allocator" in Path(runner.__file__).read_text(encoding="utf-8")


def run_console(tmp_path: Path, *args: str, env: dict | None = None, timeout: int = 300,
                launcher: tuple[str, ...] = (str(CONSOLE),)) -> subprocess.CompletedProcess:
    done = subprocess.run([*launcher, "train", str(tiny_run_config(tmp_path)), "--no-progress", *args],
                          cwd=tmp_path, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@needs_jemalloc
def test_console_script_trains_on_jemalloc(tmp_path):
    done = run_console(tmp_path)
    assert f"allocator: jemalloc ({os.path.realpath(LIBRARY)})" in done.stderr.splitlines()
    assert (tmp_path / "run" / "model" / "config.json").is_file()


@needs_jemalloc
def test_python_m_sftlab_trains_on_jemalloc_as_the_console_script_does(tmp_path):
    """The board starts its runs as `python -m sftlab train`: they get the allocator `sftlab train` gets."""
    done = run_console(tmp_path, launcher=(sys.executable, "-m", "sftlab"))
    assert f"allocator: jemalloc ({os.path.realpath(LIBRARY)})" in done.stderr.splitlines()
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_console_script_with_system_never_preloads(tmp_path):
    done = run_console(tmp_path, "train.allocator=system")
    assert "allocator: system malloc" in done.stderr.splitlines()


@needs_jemalloc
def test_jemalloc_takes_the_decay_setting_and_the_users_options_after_it():
    """The options jemalloc runs with in a process started with `exec_environment` (read back through mallctl)."""
    probe = ("import ctypes; lib = ctypes.CDLL(None); value = ctypes.c_ssize_t(); size = ctypes.c_size_t(8)\n"
             "for name in (b'opt.dirty_decay_ms', b'opt.muzzy_decay_ms', b'opt.oversize_threshold'):\n"
             "    assert lib.mallctl(name, ctypes.byref(value), ctypes.byref(size), None, 0) == 0\n"
             "    print(value.value)")
    env = jemalloc.exec_environment(LIBRARY, clean_env() | {"MALLOC_CONF": "muzzy_decay_ms:5000"})
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["-1", "5000", "0"]


@needs_jemalloc
def test_preloaded_by_hand_trains_without_starting_again(tmp_path):
    """A process started on jemalloc keeps its own LD_PRELOAD and MALLOC_CONF (no re-execution adds ours)."""
    env = clean_env() | {"LD_PRELOAD": LIBRARY, "MALLOC_CONF": "narenas:2"}
    probe = ("import os, sys, sftlab.cli; code = sftlab.cli.console(); "
             "print(os.environ['LD_PRELOAD'], os.environ['MALLOC_CONF'], os.environ.get('SFTLAB_JEMALLOC_EXEC')); "
             "sys.exit(code)")
    config = tiny_run_config(tmp_path)
    done = subprocess.run([sys.executable, "-c", probe, "train", str(config), "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == f"{LIBRARY} narenas:2 None"
    assert f"allocator: jemalloc ({os.path.realpath(LIBRARY)})" in done.stderr.splitlines()


@needs_jemalloc
def test_workers_of_nproc_inherit_jemalloc(tmp_path):
    done = run_console(tmp_path, "--nproc", "2", "train.batch_size=2")
    assert f"allocator: jemalloc ({os.path.realpath(LIBRARY)})" in done.stderr.splitlines()  # rank 0's log
    assert "trained with 2 processes" in done.stdout
