"""The board's runs: launch `sftlab train` / `sftlab eval` as subprocesses, stop, resume, and read run dirs.

A run named NAME has its config at `RUNS/NAME.yaml` (what the new-run form wrote; `sftlab train RUNS/NAME.yaml`
reproduces it) and its output at `RUNS/NAME/`. The board keeps each job's output in `RUNS/.board/NAME.log`
and its exit code in `RUNS/.board/NAME.exit.json`. Stop sends SIGINT: the training loop checkpoints and
exits 130; resume starts `sftlab train RUNS/NAME.yaml --resume`.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sftlab.checkpoints import list_checkpoints
from sftlab.errors import SftlabError
from sftlab.eval.report_data import card_section, final_is_current, read_metrics_rows, read_object
from sftlab.io import atomic_write_json, read_yaml_mapping

NAME_PATTERN = re.compile(r"^[^\W_][\w.-]{0,63}$")  # letters of any script (实验1), digits, '.', '_', '-'
BOARD_DIR = ".board"
LOG_TAIL_LINES = 40


def check_run_name(name: str) -> str:
    """A run name usable as a file name: letters (of any script), digits, '.', '_' and '-'."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise SftlabError(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


@dataclass
class Job:
    """One subprocess started by the board, and the (time, step) points seen while it trains."""

    kind: str
    process: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    progress: list[tuple[float, int]] = field(default_factory=list)


def read_rows(path: Path) -> list[dict]:
    """The rows of `metrics.jsonl` written so far (a cut-short last line, being written, is skipped); a broken file
    (not UTF-8, a line that is not a JSON object with a whole-number step) is a one-line SftlabError naming it."""
    return read_metrics_rows(path)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, None when there is no such file; a broken one is a one-line SftlabError."""
    return read_object(path) if path.is_file() else None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, with carriage-return progress redraws reduced to their last state."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    cleaned = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(cleaned[-lines:])


def _number(value, kind=float):
    """`value` as a positive `kind`, else None (a config or row the board shows but does not trust)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def estimate_total_steps(cfg: dict, train_rows: list[dict]) -> int | None:
    """`train.max_steps`, else the step count implied by `train.epochs` and the epoch reached per step."""
    train = cfg.get("train") or {}
    max_steps = _number(train.get("max_steps"), int)
    if max_steps:
        return max_steps
    last = train_rows[-1] if train_rows else None
    epoch, epochs = _number(last.get("epoch")) if last else None, _number(train.get("epochs", 1.0))
    if epoch and epochs:
        step = int(last["step"])
        estimate = epochs * step / epoch
        # the logged epoch is rounded to 4 decimals: 1/3 of an epoch per step is 0.3333, and 2 * 1 / 0.3333 is 6.0006
        slack = epochs * step * 5e-5 / (epoch * max(epoch - 5e-5, 1e-9))
        nearest = round(estimate)
        return max(step, nearest if abs(estimate - nearest) <= slack else math.ceil(estimate))
    return None


class RunManager:
    """Starts and watches the board's jobs; every method is safe to call from request handlers."""

    def __init__(self, runs_dir: str | Path, python: str = sys.executable, trust_remote_code: bool = False):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.python = python
        self.trust_remote_code = trust_remote_code  # evaluate passes --trust-remote-code on
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # --- paths -----------------------------------------------------------------------------
    def config_path(self, name: str) -> Path:
        return self.runs_dir / f"{check_run_name(name)}.yaml"

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / check_run_name(name)

    def _board_file(self, name: str, suffix: str) -> Path:
        return self.runs_dir / BOARD_DIR / f"{name}{suffix}"

    # --- jobs ------------------------------------------------------------------------------
    def running(self, key: str) -> Job | None:
        job = self.jobs.get(key)
        return job if job is not None and job.process.poll() is None else None

    def start_job(self, key: str, kind: str, args: list[str], log_suffix: str) -> Job:
        """Run `python -m sftlab ARGS` in the background, its output appended to the job's log."""
        with self._lock:
            if self.running(key):
                raise SftlabError(f"{key}: a job is already running")
            log_path = self._board_file(key.split(":")[0], log_suffix)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            handle = log_path.open("a", encoding="utf-8")
            handle.write(f"$ sftlab {' '.join(args)}\n")
            handle.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            process = subprocess.Popen([self.python, "-m", "sftlab", *args], stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=self.runs_dir, env=env, start_new_session=True)
            handle.close()
            job = Job(kind, process, log_path)
            self.jobs[key] = job
        threading.Thread(target=self._watch, args=(key, job), daemon=True, name=f"board-{key}").start()
        return job

    def _watch(self, key: str, job: Job) -> None:
        """Record when new steps appear (for the ETA) and the exit code when the job ends."""
        metrics = self.run_dir(key.split(":")[0]) / "metrics.jsonl"
        while job.process.poll() is None:
            if job.kind == "train":
                try:
                    steps = [row["step"] for row in read_rows(metrics) if not row.get("eval")]
                except SftlabError:  # a broken metrics.jsonl: the run's page says so; keep watching for the exit
                    steps = []
                if steps and (not job.progress or steps[-1] > job.progress[-1][1]):
                    job.progress.append((time.monotonic(), steps[-1]))
            time.sleep(0.5)
        self._record_exit(key, job)

    def _record_exit(self, key: str, job: Job) -> None:
        """Write a finished training job's exit code (130: stopped with a checkpoint) to RUNS/.board/NAME.exit.json."""
        if job.kind == "train" and job.process.poll() is not None:
            atomic_write_json(self._board_file(key, ".exit.json"), {"code": job.process.returncode, "time": time.time()})

    def launch(self, name: str, resume: bool = False) -> Job:
        """Start (or, with `resume`, continue) training run `name` from `RUNS/NAME.yaml`."""
        config = self.config_path(name)
        if not config.is_file():
            raise SftlabError(f"run {name!r}: no config {config}")
        args = ["train", str(config), "--no-progress"] + (["--resume"] if resume else [])
        self._board_file(name, ".exit.json").unlink(missing_ok=True)
        return self.start_job(name, "train", args, ".log")

    def stop(self, name: str) -> None:
        """Ask a running training job to stop: SIGINT makes the loop save a checkpoint and exit 130."""
        job = self.running(name)
        if job is None:
            raise SftlabError(f"run {name!r} is not running")
        job.process.send_signal(signal.SIGINT)

    def evaluate(self, name: str, data: str, task: str, max_samples: int | None = None) -> Job:
        """Start `sftlab eval RUNS/NAME/model --data DATA --task TASK --out RUNS/NAME/eval-TASK --overwrite`."""
        model = self.run_dir(name) / "model"
        if not model.is_dir():
            raise SftlabError(f"run {name!r} has no model yet; evaluate once it has finished")
        args = ["eval", str(model), "--data", data, "--task", task, "--out", str(self.run_dir(name) / f"eval-{task}"),
                "--overwrite"] + (["--max-samples", str(max_samples)] if max_samples else [])
        args += ["--trust-remote-code"] if self.trust_remote_code else []
        return self.start_job(f"{name}:eval", "eval", args, ".eval.log")

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """SIGINT every running job (training checkpoints) and wait for them to end."""
        for job in list(self.jobs.values()):
            if job.process.poll() is None:
                job.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for key, job in list(self.jobs.items()):
            try:
                job.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
            self._record_exit(key, job)  # now: the watching thread may not get to it before the board exits

    # --- reading runs ----------------------------------------------------------------------
    def names(self, usable: bool = True) -> list[str]:
        """Runs known to the board: configs `RUNS/NAME.yaml` and run dirs with a config.yaml (with `usable=False`,
        those whose name the board cannot use, e.g. with a space)."""
        if not self.runs_dir.is_dir():
            return []
        found = {p.stem for p in self.runs_dir.glob("*.yaml")} | {p.parent.name for p in self.runs_dir.glob("*/config.yaml")}
        return sorted(name for name in found if bool(NAME_PATTERN.fullmatch(name)) == usable and not name.startswith("."))

    def status(self, name: str) -> str:
        """running | completed | stopped (resumable) | failed | new, with the loop's own stop reason when finished."""
        if self.running(name):
            return "running"
        run = self.run_dir(name)
        exit_record = read_json(self._board_file(name, ".exit.json"))
        final = read_json(run / "metrics.json")
        if final and not final_is_current(final, [r for r in read_rows(run / "metrics.jsonl") if not r.get("eval")]):
            final = None  # the previous end's metrics of a run resumed to train further, elsewhere
        if exit_record and exit_record.get("code") not in (0, 130):
            return "failed"
        if final and not (exit_record and exit_record.get("code") == 130):
            return "completed" if final.get("stopped", "completed") == "completed" else str(final["stopped"])
        if bool(list_checkpoints(run)):
            return "stopped"
        return "new"

    def load_config_dict(self, name: str) -> dict:
        """The run's config (the board's RUNS/NAME.yaml, else its resolved config.yaml), each group a mapping."""
        for path in (self.config_path(name), self.run_dir(name) / "config.yaml"):
            if path.is_file():
                cfg = read_yaml_mapping(path, "a run config (a mapping of groups: model, data, ...)")
                for group, value in cfg.items():
                    if value is not None and not isinstance(value, dict):
                        raise SftlabError(f"{path}: {group}: expected a mapping of settings "
                                          f"(e.g. {group}.key: value), got {type(value).__name__}")
                return cfg
        raise SftlabError(f"run {name!r} not found in {self.runs_dir}")

    def summaries(self) -> list[dict]:
        """The runs list: one row per run; a run whose config cannot be read is listed as `unreadable`, with the
        one-line error, so one broken file does not hide the others."""
        rows = []
        for name in sorted(self.names() + self.names(usable=False)):
            try:
                rows.append(self.summary(name))
            except SftlabError as exc:
                rows.append({"name": name, "status": "unreadable", "error": str(exc), "stage": "", "strategy": "",
                             "model": "", "step": 0, "total_steps": None, "loss": None, "eval_loss": None})
        return rows

    def _resolved_config(self, name: str, cfg: dict) -> dict:
        """The run dir's config.yaml (what its latest `sftlab train` ran, command-line overrides such as `--resume
        train.max_steps=N` included) when it can be read, else `cfg`."""
        resolved = self.run_dir(name) / "config.yaml"
        try:
            return read_yaml_mapping(resolved, "a run config") if resolved.is_file() else cfg
        except SftlabError:
            return cfg

    def summary(self, name: str) -> dict:
        """One row of the runs list."""
        cfg = self.load_config_dict(name)
        rows = read_rows(self.run_dir(name) / "metrics.jsonl")
        train_rows = [row for row in rows if not row.get("eval")]
        evals = [row for row in rows if row.get("eval")]
        return {"name": name, "status": self.status(name), "stage": (cfg.get("train") or {}).get("stage", "sft"),
                "strategy": (cfg.get("strategy") or {}).get("kind", "full"),
                "model": str((cfg.get("model") or {}).get("path") or ""),
                "step": train_rows[-1]["step"] if train_rows else 0,
                "total_steps": estimate_total_steps(self._resolved_config(name, cfg), train_rows),
                "loss": train_rows[-1].get("loss") if train_rows else None,
                "eval_loss": evals[-1].get("loss") if evals else None}

    def detail(self, name: str) -> dict:
        """Everything a run's page shows: status, curves, live figures, final metrics, card, evals, log."""
        run = self.run_dir(name)
        rows = read_rows(run / "metrics.jsonl")
        info = self.summary(name)
        job = self.running(name)
        info.update(
            rows=rows, metrics=read_json(run / "metrics.json"), eta_s=self._eta(job, info),
            config_yaml=self._config_text(name),
            resumable=not job and bool(list_checkpoints(run)) and info["status"] != "completed",
            has_model=(run / "model").is_dir(), log=tail(self._board_file(name, ".log")),
            card=card_section(run / "model" / "README.md", "## Strategy"), evals=self._evals(name))
        last = next((row for row in reversed(rows) if not row.get("eval")), {})
        info.update(lr=last.get("lr"), tokens_per_s=last.get("tokens_per_s"))
        return info

    def _config_text(self, name: str) -> str:
        """The board's config of the run, else the resolved config.yaml in its run dir."""
        for path in (self.config_path(name), self.run_dir(name) / "config.yaml"):
            if path.is_file():
                return path.read_text(encoding="utf-8")
        return ""

    @staticmethod
    def _eta(job: Job | None, info: dict) -> float | None:
        """Seconds left: the rate of steps seen by this job so far times the steps still to go."""
        if job is None or len(job.progress) < 2 or not info["total_steps"]:
            return None
        (t0, s0), (t1, s1) = job.progress[0], job.progress[-1]
        return round((t1 - t0) / (s1 - s0) * max(0, info["total_steps"] - s1), 1)

    def _evals(self, name: str) -> dict:
        """The latest evaluation job's state and every finished `eval-TASK/metrics.json` of the run."""
        key = f"{name}:eval"
        job = self.jobs.get(key)
        results = {}
        for path in sorted(self.run_dir(name).glob("eval-*/metrics.json")):
            try:
                results[path.parent.name.removeprefix("eval-")] = read_json(path)
            except SftlabError as exc:  # one broken result does not hide the run's page or its other results
                results[path.parent.name.removeprefix("eval-")] = {"error": str(exc)}
        state = None
        if job is not None:
            code = job.process.poll()
            state = "running" if code is None else ("completed" if code == 0 else "failed")
        return {"job": state, "log": tail(self._board_file(name, ".eval.log"), 12), "results": results}
