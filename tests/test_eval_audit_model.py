"""Audit of the lm task on tiny models: per-token averaging checked by direct forward passes, and `sftlab eval`
reproducing the validation loss the training loop logged for the same weights and data (sft and pt)."""

import json
from pathlib import Path

import pytest
import torch

from sftlab.cli import main
from sftlab.eval import tasks
from sftlab.models.tiny import make_tiny_model, make_tokenizer, save_tiny


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    tok = make_tokenizer("chatml")
    return make_tiny_model("qwen2", tok, seed=7, hidden=32, layers=1), tok


def _direct_nll(model, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed -log p over the supervised (shifted) positions of one unpadded sequence, and their count."""
    model.eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    picked = [-float(logprobs[i - 1, labels[i]]) for i in range(1, len(ids)) if labels[i] != -100]
    return sum(picked), len(picked)


def test_lm_loss_is_per_token_over_all_examples_not_a_mean_of_means(tiny):
    from sftlab.data.templates import encode_conversation

    model, tok = tiny
    examples = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
                {"messages": [{"role": "user", "content": "tell me"},
                              {"role": "assistant", "content": "a much longer answer with many more tokens in it"}]},
                {"text": "plain text document"}]
    result, rows = tasks.run_lm(model, tok, examples, tasks.EvalOptions(batch_size=2))
    direct = [_direct_nll(model, *encode_conversation(tok, e["messages"], "auto", "assistant")) for e in examples[:2]]
    text_ids = tok("plain text document")["input_ids"] + [tok.eos_token_id]  # training appends EOS to documents
    direct.append(_direct_nll(model, text_ids, text_ids))
    assert [(row["nll"], row["tokens"]) for row in rows] == [(pytest.approx(n, abs=1e-4), c) for n, c in direct]
    total_nll, total_tokens = sum(n for n, _ in direct), sum(c for _, c in direct)
    assert result["tokens"] == total_tokens
    assert result["loss"] == pytest.approx(total_nll / total_tokens, abs=1e-5)
    mean_of_means = sum(n / c for n, c in direct) / len(direct)
    assert abs(result["loss"] - mean_of_means) > 1e-3  # construction: the two averages differ on these examples


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_eval_lm_reproduces_the_loops_validation_loss(stage, tmp_path):
    from sftlab.config import load_config
    from sftlab.train import run_training

    model_dir = save_tiny("qwen2", tmp_path / "base", hidden=32, layers=1)
    if stage == "sft":
        rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                              {"role": "assistant", "content": "answer " * (1 + i % 4)}]} for i in range(12)]
    else:
        rows = [{"text": f"document number {i} " + "word " * (i % 5)} for i in range(12)]
    train, val = _write(tmp_path / "train.jsonl", rows[:8]), _write(tmp_path / "val.jsonl", rows[8:])
    raw = {"model": {"path": str(model_dir)},
           "data": {"train": str(train), "validation": str(val), "cache_dir": str(tmp_path / "cache"), "pt_mode": "document"},
           "train": {"stage": stage, "max_steps": 2, "batch_size": 4, "lr": 1e-2, "max_length": 64},
           "eval": {"every_n_steps": 2, "batch_size": 3},
           "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    result = run_training(load_config(None, [], base=raw), show_progress=False)
    logged = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    loop_loss = [row for row in logged if row.get("eval") and row["step"] == 2][0]["loss"]
    assert main(["eval", str(result.out_dir / "model"), "--data", str(val), "--task", "lm",
                 "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert evaluated["loss"] == pytest.approx(loop_loss, rel=1e-4)


def test_hook_auc_error_says_both_labels_must_be_references(tiny, tmp_path):
    from types import SimpleNamespace

    from sftlab.config.load import load_config
    from sftlab.errors import SftlabError
    from sftlab.eval import hooks

    model, tok = tiny
    cfg = load_config(None, base={"model": {"path": str(tmp_path)}, "data": {"train": "x.jsonl", "labels": ["no", "yes"]},
                                  "eval": {"metric": "auc", "mode": "max"}})
    val = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "yes"}]} for i in range(3)]
    with pytest.raises(SftlabError, match="both among the references") as error:
        hooks.task_metrics(model, tok, SimpleNamespace(val_examples=val), cfg)
    assert "\n" not in str(error.value)
