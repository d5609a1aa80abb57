"""The policy-push application end to end on a small simulated world (`make demo`, `sftlab policy demo`).

    run_demo("runs/policy-demo", "gemma-3-270m")      # quick: sized for < 10 minutes on 2 CPU cores
    run_demo("runs/policy-full", "gemma-3-270m", quick=False)   # the benchmark-sized plan (about an hour on 2 CPU cores)

Steps: simulate a world into `<workdir>/policy.db` -> build the time-split data -> fine-tune the
model on the 是/否 examples with a partial-parameter strategy (freeze: only the last blocks train, bf16
autocast) through `sftlab.train.loop.run_training` -> evaluate it (scoring under bf16 autocast) against
the baselines on the held-out period -> push the top K new policies of the last two weeks to a group
of enterprises -> print the metrics table and where the report is. The workdir is the demo's own output and is replaced.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from sftlab.policy.simulate import WorldSpec


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run."""

    world: WorldSpec
    max_train: int
    max_eval_enterprises: int
    train_steps: int
    batch_size: int
    lr: float
    train_layers: str
    max_length: int
    push_enterprises: int
    top_k: int = 5
    precision: str = "auto"  # bf16 where the machine has it in hardware, else fp32 (plan_for_this_machine)
    max_validation: int = 32
    warmup_steps: int | None = None  # None: a tenth of train_steps


QUICK = DemoPlan(WorldSpec(n_enterprises=120, n_policies=150, days=300, seed=0), max_train=480, max_eval_enterprises=30,
                 train_steps=48, batch_size=8, lr=1e-4, train_layers="last:4", max_length=256, push_enterprises=10)
# the run measured in docs/policy.md ("Model quality"): examples/policy/gemma_yesno_freeze.yaml on this world
FULL = DemoPlan(WorldSpec(n_enterprises=600, n_policies=500, days=365, seed=0), max_train=4000, max_eval_enterprises=100,
                train_steps=450, batch_size=8, lr=1e-4, train_layers="last:6", max_length=192, push_enterprises=600,
                warmup_steps=20, max_validation=64)


def chat_template_for(model_path: str) -> str:
    """Gemma's own turn format for Gemma models (their converted tokenizer may carry no chat template),
    else "auto" (the tokenizer's template, or chatml)."""
    return "gemma" if "gemma" in Path(str(model_path)).name.lower() else "auto"


def training_config(plan: DemoPlan, model_path: str, data_dir: Path, run_dir: Path, trust_remote_code: bool = False):
    """The RunConfig of the demo's fine-tuning: sft on 是/否 answers, strategy freeze (last blocks train),
    validation on at most `plan.max_validation` examples; `trust_remote_code` lets code shipped with the model run."""
    from sftlab.config.schema import RunConfig

    return RunConfig.model_validate({
        "model": {"path": model_path, "trust_remote_code": trust_remote_code},
        "data": {"train": str(data_dir / "yesno_train.jsonl"), "validation": str(data_dir / "yesno_valid.jsonl"),
                 "format": "messages", "mask": "assistant", "template": chat_template_for(model_path), "cache_dir": str(run_dir.parent / "cache")},
        "strategy": {"kind": "freeze", "freeze": {"layers": plan.train_layers}},
        "train": {"stage": "sft", "max_steps": plan.train_steps, "batch_size": plan.batch_size, "lr": plan.lr,
                  "warmup_steps": plan.warmup_steps if plan.warmup_steps is not None else max(1, plan.train_steps // 10),
                  "max_length": plan.max_length, "seed": 0,
                  "log_every_n_steps": 5, "precision": plan.precision},
        "eval": {"max_samples": plan.max_validation},
        "output": {"dir": str(run_dir), "tensorboard": False},
    })


def plan_for_model(plan: DemoPlan, model_path: str) -> DemoPlan:
    """`plan` (sized for Gemma 3 270M) fitted to another model: `max_length` 1024, as the tiny configs of
    examples/policy use (another tokenizer may spend several times Gemma's tokens on the Chinese prompts), and at
    most as many trainable blocks as the model has (a local dir's config.json says how many)."""
    if chat_template_for(model_path) == "gemma":
        return plan
    layers, wanted = _layer_count(model_path), plan.train_layers.removeprefix("last:")
    fitted = replace(plan, max_length=max(plan.max_length, 1024))
    if layers and wanted.isdigit() and int(wanted) > layers:
        fitted = replace(fitted, train_layers=f"last:{layers}")
    return fitted


def _layer_count(model_path: str) -> int | None:
    """num_hidden_layers of a local model dir (or of its text model), else None."""
    from sftlab.io import read_json

    config = Path(str(model_path)).expanduser() / "config.json"
    if not config.is_file():
        return None
    settings = read_json(config)
    if not isinstance(settings, dict):
        return None
    count = settings.get("num_hidden_layers") or (settings.get("text_config") or {}).get("num_hidden_layers")
    return count if isinstance(count, int) and count > 0 else None


def plan_for_this_machine(plan: DemoPlan) -> tuple[DemoPlan, str | None]:
    """`plan` with precision `auto` made bf16 or fp32 for this machine (`sftlab.train.precision`: bf16 matmuls
    without hardware are 5-100x slower), and the line saying so; other plans unchanged, with None."""
    from sftlab.train.precision import resolve_setting

    precision, line = resolve_setting(plan.precision)
    return replace(plan, precision=precision), line


def check_model(model_path: str, trust_remote_code: bool) -> None:
    """Fail before any work when `--model` cannot load: errors name --model, and custom code without
    `trust_remote_code` names --trust-remote-code (not the run config's model.trust_remote_code, which the demo
    writes itself)."""
    from sftlab.config.schema import ModelConfig
    from sftlab.models.load import load_tokenizer

    load_tokenizer(ModelConfig(path=model_path, trust_remote_code=trust_remote_code), "--model", "--trust-remote-code")


def run_demo(workdir, model_path: str, quick: bool = True, plan: DemoPlan | None = None,
             log: Callable[[str], None] = print, trust_remote_code: bool = False) -> dict:
    """Run the whole application; returns {"results", "report", "run_dir", "pushes", "seconds"}. Without `plan`, the
    quick or full plan fitted to the model (`plan_for_model`). Code shipped with the model (config.json's
    `auto_map`) runs only with `trust_remote_code` (`sftlab policy demo --trust-remote-code`)."""
    from sftlab.policy.db import open_db
    from sftlab.policy.evaluate import format_table, run_evaluation
    from sftlab.policy.examples import build_data
    from sftlab.policy.push import push
    from sftlab.policy.scoring import ModelScorer
    from sftlab.policy.simulate import simulate, write_world
    from sftlab.train.loop import run_training

    check_model(model_path, trust_remote_code)
    plan, precision_note = plan_for_this_machine(plan or plan_for_model(QUICK if quick else FULL, model_path))
    if precision_note:
        log(precision_note)
    started = time.monotonic()
    clock = lambda: f"[{time.monotonic() - started:4.0f} s]"  # noqa: E731
    work = Path(workdir).expanduser().resolve()
    for stale in ("policy.db", "policy.db-wal", "policy.db-shm", "data", "run", "report"):
        target = work / stale
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    engine = open_db(f"sqlite:///{work / 'policy.db'}")
    counts = write_world(engine, simulate(plan.world))
    log(f"{clock()} [1/5] simulated {counts['enterprises']} enterprises, {counts['policies']} policies, "
        f"{counts['events']} events")
    manifest = build_data(engine, work / "data", None, plan.max_train, plan.max_eval_enterprises, category_limit=200)
    log(f"{clock()} [2/5] cut-off {manifest['cutoff'][:10]}: {manifest['yesno_train']} training examples, "
        f"{manifest['eval_candidates']} held-out candidates")
    config = training_config(plan, model_path, work / "data", work / "run", trust_remote_code)
    result = run_training(config, overwrite=True, show_progress=False)
    log(f"{clock()} [3/5] fine-tuned {plan.train_steps} steps (freeze {plan.train_layers}): "
        f"final loss {result.losses[-1]:.3f}")
    results, report = run_evaluation(engine, work / "data", work / "report", result.out_dir, k=5,
                                     precision=plan.precision, trust_remote_code=trust_remote_code)
    log(f"{clock()} [4/5] evaluated against the baselines")
    scorer = ModelScorer(result.out_dir, precision=plan.precision, trust_remote_code=trust_remote_code)
    now = datetime.combine(plan.world.start + timedelta(days=plan.world.days), datetime.min.time())
    enterprises = [f"E{i + 1:06d}" for i in range(min(plan.push_enterprises, plan.world.n_enterprises))]
    summary = push(engine, lambda rows: scorer([r["prompt"] for r in rows]), now - timedelta(days=14), plan.top_k,
                   scorer.version, now=now, enterprise_ids=enterprises)
    log(f"{clock()} [5/5] pushed {summary.pushes_written} policies to {summary.pushed_enterprises} enterprises "
        f"(window {summary.window}, {summary.candidates_scored} candidates scored)")
    log("\n" + format_table(results, 5))
    seconds = time.monotonic() - started
    log(f"\nreport: {report}\ndatabase: {work / 'policy.db'}\nmodel: {result.out_dir / 'model'}\n({seconds:.0f} s)")
    engine.dispose()
    return {"results": results, "report": report, "run_dir": result.out_dir, "pushes": summary, "seconds": seconds,
            "plan": replace(plan)}
