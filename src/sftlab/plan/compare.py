"""`sftlab compare`: train several strategies on the same data, seed and budget; tabulate the evidence.

    result = compare(cfg, ("full", "lora"), parse_budget("20steps"), Path("runs/cmp"), base_dir=Path("."))
    # runs/cmp/<strategy>/ (a normal run directory + train.log), compare.json, compare.md, compare.png

Each strategy trains in its own Python process (`python -m sftlab.plan.compare`), with the run
config's data, seed and schedule and `output.dir = OUT/<strategy>`, so its peak memory is its own; the
process runs on jemalloc where `sftlab train` would (`train.allocator`, `sftlab.plan.probe.probe_environment`).
It is measured as in `sftlab plan --probe` (`sftlab.plan.probe`): after a warm-up (the session built
once in a temporary directory and one step run, then released) the baseline is taken; the peak is
the process's resident high-water mark (VmHWM) on CPU, or `torch.cuda.max_memory_allocated()` on
CUDA, minus that baseline, over the whole run (setup, training, evaluation, saving). A step budget
sets `train.max_steps`; a time budget lets the configured schedule run and ends the run after the
first optimizer step that finishes past the budget (the model is then saved and evaluated as at a
normal end). The final validation loss and task metrics are the run's `metrics.json` (`eval_*`);
trainable counts are the run's own (its log line is kept in `OUT/<strategy>/train.log`). Before any strategy
trains, `check_strategies` applies each to the model built on the meta device, so a strategy setting that cannot
work fails at once, with OUT as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from sftlab.errors import SftlabError
from sftlab.io import atomic_write_text
from sftlab.plan.probe import probe_environment
from sftlab.train.precision import resolve_precision

_MARK = "SFTLAB_COMPARE "
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|s|sec|m|min|h)?\s*$")


def parse_budget(text: str) -> tuple[str, float]:
    """'20steps' / '20' -> ('steps', 20); '60s' -> ('seconds', 60); '2m' -> 120 s; '1h' -> 3600 s."""
    match = _BUDGET.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise SftlabError(f"--budget {text!r}: expected steps (20steps) or a time (60s, 5m, 1h)")
    value, unit = float(match.group(1)), (match.group(2) or "steps")
    if unit.startswith("step"):
        if value != int(value):
            raise SftlabError(f"--budget {text!r}: a step budget must be a whole number")
        return "steps", int(value)
    return "seconds", value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]


def run_config(cfg, kind: str, budget: tuple[str, float], out_dir: Path, thresholds: dict, num_layers: int):
    """The strategy's run config: same data/seed/schedule, output in OUT/<kind>, steps from a step budget."""
    from sftlab.plan.planner import strategy_config

    cfg = strategy_config(cfg, kind, thresholds, num_layers)
    train = cfg.train.model_copy(update={"max_steps": int(budget[1])}) if budget[0] == "steps" else cfg.train
    output = cfg.output.model_copy(update={"dir": str(out_dir / kind)})
    return cfg.model_copy(update={"train": train, "output": output})


def train_with_budget(cfg, seconds: float | None, base_dir: Path | None) -> dict:
    """Run one training job (in this process); with `seconds`, end it after the step that passes the budget."""
    from sftlab.train.loop import cleanup, log_setup, save_final, train
    from sftlab.train.runlog import RunLog
    from sftlab.train.rundir import prepare_output_dir, replacing_previous_run
    from sftlab.train.setup import build_session

    out_dir = Path(cfg.output.dir)
    prepare_output_dir(out_dir, resume=False, overwrite=True)
    with replacing_previous_run(out_dir):
        session, _ = build_session(cfg, out_dir, None, base_dir)
    log = RunLog(out_dir, session.total_steps, 0, cfg.output.tensorboard, show_bar=False)
    planned, start = session.total_steps, time.perf_counter()

    def stop_when_spent(step: int, loss: float) -> None:
        if seconds is not None and time.perf_counter() - start >= seconds:
            session.total_steps = step  # the loop ends normally: final evaluation and model are saved

    try:
        log_setup(log, session)
        stopped = train(session, log, [stop_when_spent])
        train_seconds = time.perf_counter() - start
        if stopped == "completed" and session.step < planned:
            stopped = "time_budget"
        metrics = save_final(session, log, stopped)
    finally:
        log.close()
        cleanup(session)
    return {"kind": cfg.strategy.kind, "trainable": session.trainable.trainable, "total": session.trainable.total,
            "steps": session.step, "train_seconds": train_seconds, "stopped": stopped, "metrics": metrics}


def _peak_meter(cfg, base_dir: Path | None):
    """After a warm-up step of `cfg`, a function returning the process's peak memory above its level then."""
    import tempfile

    import torch

    from sftlab.plan.probe import PeakMeter, warm_up

    with tempfile.TemporaryDirectory(prefix="sftlab-compare-warm-") as tmp:
        warm_up(cfg, base_dir, Path(tmp))
    meter = PeakMeter(cuda=torch.cuda.is_available())
    meter.set_baseline()
    meter.reset_peak()
    return meter.peak


def worker() -> int:
    """`python -m sftlab.plan.compare`: train the JSON request's config, print one marked JSON result line."""
    from sftlab.cli import quiet_libraries
    from sftlab.config import validate_config

    quiet_libraries()  # as in `sftlab train`: train.log gets none of the library noise its log would not
    request = json.loads(sys.stdin.read())
    try:
        cfg = validate_config(request["config"], "compare request")
        base_dir = Path(request["base_dir"]) if request.get("base_dir") else None
        peak = _peak_meter(cfg, base_dir)
        result = train_with_budget(cfg, request.get("seconds"), base_dir)
        result["peak_bytes"] = peak()
    except SftlabError as exc:
        result = {"error": str(exc)}
    print(_MARK + json.dumps(result, default=str), flush=True)
    return 0


def run_strategy(cfg, seconds: float | None, base_dir: Path | None) -> dict:
    """Train `cfg` in a fresh process; keep its log in OUT/<kind>/train.log; return the worker's result."""
    request = {"config": cfg.model_dump(mode="json"), "seconds": seconds,
               "base_dir": str(base_dir) if base_dir is not None else None}
    env = probe_environment(cfg.train.allocator, os.environ)  # on jemalloc where sftlab train would be
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else src
    out_dir = Path(cfg.output.dir)
    earlier = _run_identity(out_dir)
    done = subprocess.run([sys.executable, "-m", "sftlab.plan.compare"], input=json.dumps(request), text=True,
                          capture_output=True, env=env)
    results = [json.loads(line[len(_MARK):]) for line in done.stdout.splitlines() if line.startswith(_MARK)]
    put_back = bool(results) and "error" in results[0] and earlier is not None and _run_identity(out_dir) == earlier
    if out_dir.is_dir() and not put_back:  # a run that failed while setting up put the earlier run back: keep its log
        atomic_write_text(out_dir / "train.log", done.stderr)
    for result in results:
        if "error" in result:
            raise SftlabError(f"compare strategy {cfg.strategy.kind}: {result['error']}")
        return result
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise SftlabError(f"compare strategy {cfg.strategy.kind}: the training process failed ({tail})")


def _run_identity(out_dir: Path) -> tuple[int, int] | None:
    """Which run a directory holds: its config.yaml's inode and modification time (a new run writes a new one)."""
    try:
        stat = (out_dir / "config.yaml").stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def check_strategies(configs: list) -> None:
    """Apply each strategy to its model built on the meta device (no memory), before any strategy trains: a freeze
    glob or layer, LoRA target or auto budget that cannot work fails now, not after the strategies before it have
    trained (and replaced their run directories). Models not built from their config alone are left to the run."""
    from types import SimpleNamespace

    from sftlab.plan.planner import _count_on_meta, _meta_model

    for cfg in configs:
        if cfg.model.adapter:  # lora trains model.adapter's own adapter; the others, the merged model
            continue
        labels = SimpleNamespace(label_names=cfg.data.labels or ["a", "b"])  # a classifier's head: any size will do
        try:
            _meta_model(cfg, labels)
        except Exception:  # noqa: BLE001 (a vision-language or custom model: its run checks the strategy)
            return
        _count_on_meta(cfg, labels)


def compare(cfg, kinds: tuple[str, ...], budget: tuple[str, float], out_dir: Path, base_dir: Path | None,
            thresholds: dict, overwrite: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """Train each strategy, then write compare.json, compare.md and compare.png in `out_dir`; `progress(line)` hears
    of each strategy's run as it starts and ends."""
    from sftlab.io import check_output_dir
    from sftlab.plan.planner import require_in_memory_data
    from sftlab.plan.report import write_report

    require_in_memory_data(cfg, "compare")
    check_output_dir(out_dir, overwrite)
    stale = stale_strategy_dirs(out_dir, kinds)  # an earlier comparison's other strategies, removed at the end
    cfg, precision_choice = resolve_precision(cfg)  # once, so every strategy runs and reports the same
    if precision_choice:
        print(precision_choice)
    num_layers = _num_layers(cfg)
    configs = [run_config(cfg, kind, budget, out_dir, thresholds, num_layers) for kind in kinds]
    check_strategies(configs)
    rows = []
    for index, run_cfg in enumerate(configs, 1):
        if progress:
            progress(f"compare: training {run_cfg.strategy.kind} ({index}/{len(configs)}) in {run_cfg.output.dir}")
        result = run_strategy(run_cfg, budget[1] if budget[0] == "seconds" else None, base_dir)
        if progress:
            steps = f"{result['steps']} step{'s' if result['steps'] != 1 else ''}"
            progress(f"compare: {result['kind']}: {steps} in {result['train_seconds']:.1f} s ({result['stopped']})")
        metrics = result.pop("metrics")
        rows.append({**result, "final_val_loss": metrics.get("eval_loss"),
                     "eval": {k[5:]: v for k, v in metrics.items() if k.startswith("eval_") and k != "eval_loss"},
                     "train_loss": metrics.get("train_loss")})
    summary = {"model": cfg.model.path, "stage": cfg.train.stage, "seed": cfg.train.seed,
               "budget": {"kind": budget[0], "value": budget[1]}, "rows": rows}
    for run_dir in stale:
        shutil.rmtree(run_dir)
    write_report(summary, out_dir)
    return summary


def stale_strategy_dirs(out_dir: Path, kinds: tuple[str, ...]) -> list[Path]:
    """Run directories an earlier comparison left in `out_dir` for strategies this one does not train (`OUT/<kind>`
    holding a config.yaml); other files and folders there are the user's."""
    from sftlab.plan.planner import KINDS

    return [out_dir / kind for kind in KINDS if kind not in kinds and (out_dir / kind / "config.yaml").is_file()]


def _num_layers(cfg) -> int:
    """Transformer blocks declared by the model's config (for the default freeze row)."""
    from transformers import AutoConfig

    from sftlab.models.load import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(cfg.model.path), local_files_only=True,
                                        trust_remote_code=cfg.model.trust_remote_code)  # as training loads it
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return 1


if __name__ == "__main__":
    sys.exit(worker())
