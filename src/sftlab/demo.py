"""`make demo` / `sftlab demo`: real fine-tuning end to end on the embedded default model, on 2 CPU cores.

    sftlab demo                       # Gemma 3 270M, then the policy-push application
    sftlab demo --model runs/tiny-qwen2 --steps 3 --no-policy   # seconds, for tests

Part 1 (the core): fine-tune the model on the bundled BANKING77 intents (240 chats) with a
partial-parameter strategy (freeze: only the last 2 decoder blocks train), evaluate it on the 90
held-out chats by each intent's likelihood (accuracy, precision/recall/F1, confusion matrix) next
to a majority-class and a TF-IDF + logistic-regression baseline, and write the run's report.
Part 2: the policy-push application (`sftlab.policy.demo.run_demo`): simulate a world, build
是/否 data, fine-tune, evaluate against its baselines and push recommendations to a database.
"""

from __future__ import annotations

import time
from pathlib import Path

from sftlab.config.schema import RunConfig
from sftlab.data.sources import builtin_datasets

INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "cash_withdrawal_charge", "pin_blocked"]


def banking_config(model_path: str, run_dir: Path, steps: int | None) -> RunConfig:
    """The demo's run: sft on the bundled chats, freeze all but the last 2 blocks, bf16 autocast where the
    machine has bf16 in hardware, else fp32 (train.precision: auto)."""
    return RunConfig.model_validate({
        "model": {"path": model_path},
        "data": {"train": "banking_chat_train", "validation": "banking_chat_test", "template": "auto",
                 "mask": "assistant", "cache_dir": str(run_dir.parent / "cache")},
        "strategy": {"kind": "freeze", "freeze": {"layers": "last:2"}},
        "train": {"stage": "sft", "epochs": 1, "max_steps": steps, "batch_size": 8, "lr": 2e-4, "max_length": 256,
                  "precision": "auto", "log_every_n_steps": 5},
        "eval": {"batch_size": 16},
        "output": {"dir": str(run_dir), "tensorboard": False},
    })


def run_banking(out: Path, model_path: str, steps: int | None) -> dict:
    """Part 1: train, evaluate against baselines, write the report; returns paths and headline metrics."""
    from sftlab.eval.report import write_report
    from sftlab.eval.run import evaluate, print_summary
    from sftlab.eval.tasks import EvalOptions
    from sftlab.train.loop import run_training

    run_dir = out / "banking"
    result = run_training(banking_config(model_path, run_dir, steps), overwrite=True)
    resources = Path(__file__).resolve().parent / "resources"
    test_file = resources / builtin_datasets()["banking_chat_test"]["file"]
    train_file = resources / builtin_datasets()["banking_chat_train"]["file"]
    opts = EvalOptions(template="auto", labels=INTENTS, batch_size=16, max_length=256)
    eval_dir = run_dir / "eval-labels"
    summary = evaluate(str(run_dir / "model"), str(test_file), "labels", opts, str(eval_dir), overwrite=True,
                       with_baselines=True, train_file=str(train_file))
    print_summary(summary, str(eval_dir))
    report = write_report([run_dir], run_dir)
    return {"model": result.out_dir / "model", "metrics": eval_dir / "metrics.json", "report": report,
            "macro_f1": summary["metrics"].get("macro_f1"), "accuracy": summary["metrics"].get("accuracy")}


def run_demo(out: str | Path, model_path: str = "gemma-3-270m", steps: int | None = None, policy: bool = True) -> dict:
    """Both parts; prints where everything is and returns the same as a dict."""
    from sftlab.models.load import resolve_model_path

    out, started = Path(out), time.monotonic()
    model_dir = str(resolve_model_path(model_path))  # converts the embedded default once, then reuses it
    print(f"[demo] model: {model_dir}")
    where = {"banking": run_banking(out, model_dir, steps)}
    if policy:
        from sftlab.policy.demo import run_demo as run_policy_demo

        where["policy"] = run_policy_demo(out / "policy", model_dir)
    banking = where["banking"]
    print(f"\n[demo] finished in {time.monotonic() - started:.0f} s")
    print(f"[demo] fine-tuned model:  {banking['model']}")
    print(f"[demo] held-out metrics:  {banking['metrics']} (accuracy {banking['accuracy']:.3f}, "
          f"macro F1 {banking['macro_f1']:.3f})")
    print(f"[demo] report:            {banking['report']}")
    return where
