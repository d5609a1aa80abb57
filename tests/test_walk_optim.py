"""Acceptance walk of a run's optimisation settings (`train` and `eval`) against their references: the logged
learning rate against `transformers.get_scheduler` (warmup longer than the run included), weight decay against the
Trainer's parameter split, the logged gradient norm against `torch.nn.utils.clip_grad_norm_`, a partial gradient
accumulation at the end of an epoch, epoch accounting, the validation loss against a by-hand token mean, patience
in min and max mode, and the one-line errors of bad values."""

import json
import math
from pathlib import Path

import pytest
import torch

from sftlab.config import load_config
from sftlab.errors import SftlabError
from sftlab.train.batches import DataPosition, iterate_steps, total_steps
from sftlab.train.optim import build_optimizer, build_scheduler, parameter_groups, warmup_note
from test_train_loop import tiny_run, train, write_jsonl


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _hf_lrs(kind: str, warmup: int, total: int, lr: float, steps: int) -> list[float]:
    """transformers' rate after each of `steps` scheduler steps (its constant_with_warmup for sftlab's constant)."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    name = "constant_with_warmup" if kind == "constant" else kind
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup, total", [(0, 6), (2, 6), (6, 6), (9, 6), (40, 3)])
def test_schedule_equals_transformers_for_the_same_settings(kind, warmup, total):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = build_scheduler(optimizer, kind, warmup, total)
    ours = []
    for _ in range(total + 2):
        optimizer.step()
        scheduler.step()
        ours.append(scheduler.get_last_lr()[0])
    assert ours == pytest.approx(_hf_lrs(kind, warmup, total, 0.5, total + 2), abs=1e-12)


def test_warmup_longer_than_the_run_is_kept_in_the_logged_rate_and_noted(tmp_path, capsys):
    """Warmup of 7 steps in a 3-step run: the rate rises by lr / 7 a step (as transformers'), not by lr / 3."""
    result = train(tiny_run(tmp_path, train={"max_steps": 3, "scheduler": "cosine", "warmup_steps": 7}))
    assert "note: train.warmup_steps 7 is not less than the run's 3 optimizer steps" in capsys.readouterr().err
    logged = [row["lr"] for row in _rows(result.out_dir)]
    assert logged == pytest.approx(_hf_lrs("cosine", 7, 3, 1e-3, 3), abs=1e-15)
    assert logged == pytest.approx([1e-3 / 7, 2e-3 / 7, 3e-3 / 7])
    note = warmup_note(7, 3, 1e-3)
    assert note.startswith("note: train.warmup_steps 7 is not less than the run's 3 optimizer steps")
    assert "last step runs at 0.000286" in note and "below 3" in note
    assert warmup_note(2, 3, 1e-3) is None


def test_epoch_based_run_logs_transformers_rate_and_epochs(tmp_path):
    """epochs=2 of 7 rows in micro-batches of 3 (3, 3, 1): 3 steps an epoch, the linear schedule over 6."""
    result = train(tiny_run(tmp_path, train={"max_steps": None, "epochs": 2.0, "batch_size": 3, "warmup_steps": 2}))
    rows = _rows(result.out_dir)
    assert [row["lr"] for row in rows] == pytest.approx(_hf_lrs("linear", 2, 6, 1e-3, 6), abs=1e-15)
    assert [row["epoch"] for row in rows] == [0.3333, 0.6667, 1.0, 1.3333, 1.6667, 2.0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_weight_decay_split_equals_the_trainers(arch):
    """Decayed: the Trainer's get_decay_parameter_names (matrices and embeddings; not biases, not norms)."""
    from transformers.trainer_pt_utils import get_parameter_names

    from sftlab.models.tiny import make_tiny_model

    model = make_tiny_model(arch, hidden=32, layers=1)
    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]  # Trainer's
    theirs = set(get_parameter_names(model, [torch.nn.LayerNorm], patterns)) & {n for n, _ in model.named_parameters()}
    names = {id(param): name for name, param in model.named_parameters()}
    groups = parameter_groups(model, 0.1)
    ours = {names[id(p)] for group in groups if group["weight_decay"] == 0.1 for p in group["params"]}
    assert ours == theirs
    assert any("embed" in name or "wte" in name for name in ours)
    assert any(name.endswith("bias") or "norm" in name for group in groups if group["weight_decay"] == 0.0
               for name in (names[id(p)] for p in group["params"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_decay_shrinks_matrices_only(dtype):
    """With zero gradients AdamW's update is 0, so a step is the decay alone: p * (1 - lr * wd) for matrices."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)).to(dtype)
    before = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.5)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    for name, param in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if param.ndim >= 2 else before[name]
        torch.testing.assert_close(param.detach().float(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                                   atol=0)


def test_grad_norm_and_partial_accumulation_at_the_end_of_an_epoch(tmp_path):
    """7 rows, micro-batches of 2 (2, 2, 2, 1), accumulation 3: step 1 takes three micro-batches, step 2 the last
    one alone, normalised by its own supervised tokens; the logged grad norm is clip_grad_norm_'s pre-clip norm."""
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM

    from sftlab.train.batches import epoch_micro_batches
    from sftlab.train.setup import build_session

    raw = tiny_run(tmp_path, train={"max_steps": None, "epochs": 1.0, "batch_size": 2, "grad_accum": 3,
                                    "max_grad_norm": 0.05})
    rows = _rows(train(raw).out_dir)
    assert [(row["step"], row["epoch"]) for row in rows] == [(1, 0.75), (2, 1.0)]
    session, _ = build_session(load_config(None, [], base=raw), tmp_path / "scratch", None, None, write=False)
    AcceleratorState._reset_state()
    data, seed = session.prepared.train, session.cfg.train.seed
    micro = [session.collate([data[i] for i in batch]) for batch in epoch_micro_batches(len(data), 2, seed, 0)]
    counts = [int((batch["labels"][:, 1:] != -100).sum()) for batch in micro]
    assert [row["supervised_tokens"] for row in rows] == [sum(counts[:3]), counts[3]]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base-llama-causal_lm")
    total = 0.0
    for batch in micro[:3]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        part = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100, reduction="sum")
        (part / sum(counts[:3])).backward()
        total += float(part.detach())
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05))
    assert norm > 0.05  # the step was clipped
    assert rows[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert rows[0]["loss"] == pytest.approx(total / sum(counts[:3]), rel=1e-5)


def test_epochs_visit_every_row_once_in_seeded_different_orders():
    steps = iterate_steps(10, 3, 2, DataPosition(seed=5))
    epochs = [[], []]
    for _ in range(4):  # ceil(ceil(10 / 3) / 2) = 2 steps an epoch, the second of one micro-batch
        group, position = next(steps)
        epochs[position.epoch - 1 if position.batches_done == 0 else position.epoch] += [i for b in group for i in b]
    assert [sorted(order) for order in epochs] == [list(range(10))] * 2
    assert epochs[0] != epochs[1]
    again = iterate_steps(10, 3, 2, DataPosition(seed=5))
    other = iterate_steps(10, 3, 2, DataPosition(seed=6))
    assert next(again)[0] == [epochs[0][:3], epochs[0][3:6]] and next(other)[0] != next(again)[0]


@pytest.mark.parametrize("epochs, expected", [(1.1, 55), (2.2, 110), (1.15, 58), (0.001, 1), (3.0, 150)])
def test_fractional_epochs_round_up_without_float_artifacts(epochs, expected):
    assert total_steps(100, 2, 1, epochs, None) == expected  # 50 steps an epoch
    assert total_steps(100, 2, 1, epochs, 7) == 7  # max_steps overrides epochs


def test_eval_loss_is_the_token_mean_over_the_validation_set(tmp_path):
    """Validation answers of different lengths, in batches of 3: the loss is summed cross-entropy over supervised
    tokens divided by their number (not a mean of batch or row means); perplexity is exp(loss); evaluated at
    steps 2 and 4 and at the end (5)."""
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM

    from sftlab.train.setup import build_session

    val_rows = [{"messages": [{"role": "user", "content": f"q {i}"},
                              {"role": "assistant", "content": "a " + "w " * (i * 5 % 11 + 1)}]} for i in range(7)]
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)
    raw = tiny_run(tmp_path, data={"validation": str(val)}, train={"max_steps": 5, "batch_size": 3},
                   eval={"every_n_steps": 2, "batch_size": 3})
    result = train(raw)
    evals = [row for row in _rows(result.out_dir) if row.get("eval")]
    assert [row["step"] for row in evals] == [2, 4, 5]
    assert all(row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-12) for row in evals)
    session, _ = build_session(load_config(None, [], base=raw), tmp_path / "scratch", None, None, write=False)
    AcceleratorState._reset_state()
    model = AutoModelForCausalLM.from_pretrained(result.out_dir / "model").eval()
    sums, counts = [], []
    with torch.no_grad():
        for row in session.prepared.validation:
            targets = torch.tensor(row["labels"][1:])
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].float()
            sums.append(float(torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")))
            counts.append(int((targets != -100).sum()))
    assert len(set(counts)) > 1
    token_mean = sum(sums) / sum(counts)
    row_mean = sum(s / c for s, c in zip(sums, counts)) / len(counts)
    assert evals[-1]["loss"] == pytest.approx(token_mean, rel=1e-6)
    assert abs(row_mean - token_mean) > 1e-4  # the two would be told apart
    assert result.metrics["eval_loss"] == evals[-1]["loss"]


@pytest.mark.parametrize("metric, values, stop_step, best_step", [
    ("accuracy", [0.5, 0.7, 0.6, 0.7, 0.9], 4, 2),  # max: an equal value is no improvement
    ("loss", [3.0, 2.0, 2.5, 1.0, 2.2, 2.3], 6, 4),  # min
])
def test_patience_stops_on_evaluations_without_improvement(tmp_path, monkeypatch, metric, values, stop_step,
                                                           best_step):
    from sftlab.train import loop

    scripted = iter(values)
    monkeypatch.setattr(loop, "evaluate", lambda session: {"loss": 1.0, "accuracy": 0.5, metric: next(scripted)})
    rows = [{"text": f"item {i}", "label": "ab"[i % 2]} for i in range(8)]
    val = write_jsonl(tmp_path / "val.jsonl", rows[:2])
    raw = tiny_run(tmp_path, arch="bert", task="cls", rows=rows, data={"validation": str(val)},
                   train={"stage": "cls", "max_steps": 8}, eval={"every_n_steps": 1, "patience": 2, "metric": metric})
    result = train(raw)
    assert result.stopped == "early_stopping" and result.metrics["step"] == stop_step
    assert result.metrics["best_step"] == best_step and result.metrics[f"best_{metric}"] == values[best_step - 1]


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1e-3", "train.lr: Input should be greater than 0 (got '-1e-3')"),
    ("train.batch_size=0", "train.batch_size: Input should be greater than 0 (got 0)"),
    ("train.warmup_steps=-1", "train.warmup_steps: Input should be greater than or equal to 0 (got -1)"),
    ("train.scheduler=cosin", "train.scheduler: got 'cosin', expected one of 'linear', 'cosine' or 'constant'"),
    ("train.warmup_ratio=0.1", "unknown key 'train.warmup_ratio'; did you mean 'train.warmup_steps'?"),
    ("eval.mode=max", "eval.mode=max: eval.metric loss is better lower; leave eval.mode out (auto) or set it to min"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(SftlabError) as err:
        load_config(None, [override], base={"model": {"path": "m"}, "data": {"train": "a.jsonl"}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_evaluation_at_the_end_can_be_the_best(tmp_path, monkeypatch):
    """eval.every_n_steps 2 in a 3-step run: evaluations at step 2 and, at the end, step 3; a better end makes best/."""
    from sftlab.train import loop

    scripted = iter([2.0, 1.0])
    monkeypatch.setattr(loop, "evaluate", lambda session: {"loss": next(scripted)})
    val = write_jsonl(tmp_path / "val.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "there"}]}])
    result = train(tiny_run(tmp_path, data={"validation": str(val)}, train={"max_steps": 3},
                            eval={"every_n_steps": 2}))
    assert result.metrics["eval_loss"] == 1.0
    assert (result.metrics["best_step"], result.metrics["best_loss"]) == (3, 1.0)
