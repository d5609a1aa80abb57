"""`sftlab eval` end to end on tiny saved models, and best-checkpoint selection by macro F1 during training."""

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.models.tiny import save_tiny

WORDS = {"alpha": ["apple", "apricot", "avocado"], "beta": ["banana", "berry", "beet"]}


def label_rows(n: int, offset: int) -> list[dict]:
    rows = []
    for i in range(n):
        label = "alpha" if (i + offset) % 2 == 0 else "beta"
        word = WORDS[label][(i + offset) % 3]
        rows.append({"messages": [{"role": "user", "content": f"Which group is {word}?"},
                                  {"role": "assistant", "content": label}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("m") / "qwen2", hidden=32, layers=1)


def test_eval_labels_writes_metrics_predictions_plots_and_baselines(lm_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "val.jsonl", label_rows(8, 1))
    out = tmp_path / "out"
    code = main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--out", str(out), "--baselines"])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["labels"] == ["alpha", "beta"] and summary["metrics"]["method"] == "likelihood"
    assert set(summary["baselines"]) == {"majority", "tfidf_logreg"}
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and all(p["prediction"] in ("alpha", "beta") for p in predictions)
    assert all(p["reference"] == r["messages"][-1]["content"] for p, r in zip(predictions, label_rows(8, 1)))
    for png in ("confusion_matrix.png", "pr_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    screen = capsys.readouterr().out
    assert "macro_f1" in screen and "majority" in screen and "tfidf_logreg" in screen


def test_eval_generation_lm_and_ranking(lm_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", label_rows(3, 0))
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "generation", "--max-new-tokens", "3",
                 "--out", str(tmp_path / "gen")]) == 0
    gen = json.loads((tmp_path / "gen" / "metrics.json").read_text())["metrics"]
    assert {"exact_match", "bleu", "rouge1", "rouge2", "rouge_l"} <= set(gen)
    rows = [json.loads(line) for line in (tmp_path / "gen" / "predictions.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["alpha", "beta", "alpha"] and all("prediction" in r for r in rows)
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "lm", "--out", str(tmp_path / "lm")]) == 0
    lm = json.loads((tmp_path / "lm" / "metrics.json").read_text())["metrics"]
    from transformers import AutoTokenizer

    from sftlab.data.templates import encode_conversation

    tok = AutoTokenizer.from_pretrained(lm_dir)
    supervised = sum(sum(t != -100 for t in encode_conversation(tok, r["messages"])[1]) for r in label_rows(3, 0))
    assert lm["tokens"] == supervised and lm["perplexity"] > 1
    query = {"query": "q", "messages": [{"role": "user", "content": "pick a fruit"}],
             "candidates": [{"id": "a", "text": "apple", "relevant": 1}, {"id": "b", "text": "beet", "relevant": 0}]}
    ranking = write_jsonl(tmp_path / "rank.jsonl", [query, dict(query, query="r")])
    assert main(["eval", str(lm_dir), "--data", str(ranking), "--task", "ranking", "--k", "1,2", "--baselines",
                 "--out", str(tmp_path / "rank")]) == 0
    result = json.loads((tmp_path / "rank" / "metrics.json").read_text())
    assert result["metrics"]["hit_rate@2"] == 1.0 and "ndcg@1" in result["metrics"]
    assert result["baselines"]["most_popular"]["queries"] == 2


def test_eval_errors_are_one_line(lm_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "val.jsonl", label_rows(2, 0))
    assert main(["eval", str(lm_dir), "--data", str(tmp_path / "missing.jsonl"), "--task", "labels",
                 "--out", str(tmp_path / "o1")]) == 2
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "ranking", "--out", str(tmp_path / "o2")]) == 2
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--k", "0",
                 "--out", str(tmp_path / "o3")]) == 2
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--labels", "alpha,gamma",
                 "--out", str(tmp_path / "o4")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    assert "not found" in errors[0] and "candidates" in errors[1] and "--k" in errors[2] and "'beta'" in errors[3]
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_best_checkpoint_follows_macro_f1_not_loss(lm_dir, tmp_path):
    """F1 reaches its maximum at an earlier evaluation than the lowest loss; best/ is the F1 one, with eval.mode left
    at its default (auto: max for F1; the default was min, which kept the worst F1 checkpoint)."""
    from sftlab.config import load_config
    from sftlab.train import run_training

    train = write_jsonl(tmp_path / "train.jsonl", label_rows(8, 0))
    val = write_jsonl(tmp_path / "val.jsonl", label_rows(6, 1))
    raw = {"model": {"path": str(lm_dir)},
           "data": {"train": str(train), "validation": str(val), "cache_dir": str(tmp_path / "cache")},
           "train": {"stage": "sft", "max_steps": 36, "batch_size": 4, "lr": 2e-2, "max_length": 64},
           "eval": {"every_n_steps": 3, "metric": "macro_f1"},
           "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    result = run_training(load_config(None, [], base=raw), show_progress=False)
    evals = [row for row in map(json.loads, (result.out_dir / "metrics.jsonl").read_text().splitlines()) if row.get("eval")]
    f1 = {row["step"]: row["macro_f1"] for row in evals}
    loss = {row["step"]: row["loss"] for row in evals}
    best_f1_step = min(step for step, value in f1.items() if value == max(f1.values()))
    lowest_loss_step = min(loss, key=loss.get)
    assert max(f1.values()) > min(f1.values()), "construction: F1 must change during training"
    assert lowest_loss_step != best_f1_step, "construction: the lowest-loss and best-F1 evaluations must differ"
    assert result.metrics["best_step"] == best_f1_step
    assert json.loads((result.out_dir / "best" / "sftlab_state.json").read_text())["best"]["step"] == best_f1_step
    # the kept weights really are the best-F1 ones: evaluating best/ reproduces the logged F1
    assert main(["eval", str(result.out_dir / "best"), "--data", str(val), "--task", "labels",
                 "--out", str(tmp_path / "best-eval")]) == 0
    best_eval = json.loads((tmp_path / "best-eval" / "metrics.json").read_text())["metrics"]
    assert best_eval["macro_f1"] == pytest.approx(f1[best_f1_step])
    assert main(["report", str(result.out_dir)]) == 0
    assert (result.out_dir / "report.html").is_file() and (result.out_dir / "plots" / "eval_macro_f1.png").is_file()


def test_eval_classification_head_and_lora_adapter(lm_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.eval import tasks

    head_dir = save_tiny("bert", tmp_path / "bert", num_labels=2, hidden=32, layers=1)
    rows = [{"text": f"text number {i}", "label": f"LABEL_{i % 2}"} for i in range(4)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    assert main(["eval", str(head_dir), "--data", str(data), "--task", "labels", "--out", str(tmp_path / "head")]) == 0
    head = json.loads((tmp_path / "head" / "metrics.json").read_text())["metrics"]
    assert head["method"] == "head" and head["labels"] == ["LABEL_0", "LABEL_1"] and "auc" in head
    assert main(["eval", str(head_dir), "--data", str(data), "--task", "generation", "--out", str(tmp_path / "x")]) == 2

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(lm_dir), LoraConfig(r=2, target_modules="all-linear",
                                                                                  init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    chats = write_jsonl(tmp_path / "chat.jsonl", label_rows(4, 0))
    assert main(["eval", str(tmp_path / "adapter"), "--data", str(chats), "--task", "labels",
                 "--out", str(tmp_path / "lora")]) == 0
    saved = json.loads((tmp_path / "lora" / "metrics.json").read_text())["metrics"]
    in_memory, rows = tasks.run_labels(model, AutoTokenizer.from_pretrained(lm_dir),
                                       tasks.load_examples(str(chats), "labels"), tasks.EvalOptions())
    saved_rows = [json.loads(line) for line in (tmp_path / "lora" / "predictions.jsonl").read_text().splitlines()]
    for saved_row, row in zip(saved_rows, rows):
        assert saved_row["probs"] == pytest.approx(row["probs"], abs=1e-5)  # the adapter was applied
    assert saved["per_class"] == in_memory["per_class"]


def test_eval_option_errors_come_before_the_model_and_outputs_never_replace_inputs(lm_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    """--batch-size 0 and --device gpu were tracebacks, --max-samples 0 evaluated everything, and --baselines for lm
    or a missing --train file failed only after the whole evaluation; --out RUN --overwrite replaced the run."""
    from sftlab.eval import run

    data = write_jsonl(tmp_path / "val.jsonl", label_rows(2, 0))
    monkeypatch.setattr(run, "load_for_eval", lambda *a, **k: pytest.fail("the model was loaded"))
    cases = [(["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
             (["--max-samples", "0"], "error: --max-samples must be at least 1, got 0"),
             (["--max-new-tokens", "-1"], "error: --max-new-tokens must be at least 1, got -1"),
             (["--sample", "--temperature", "0"], "error: --sample needs --temperature > 0 and --top-p in (0, 1]"),
             (["--device", "gpu"], "error: --device 'gpu': expected auto, cpu, cuda or cuda:N"),
             (["--task", "lm", "--baselines"], "error: --baselines: available for the labels and ranking tasks, not lm"),
             (["--baselines", "--train", str(tmp_path / "nope.jsonl")], f"error: data file not found: {tmp_path}/nope.jsonl"),
             (["--out", str(lm_dir), "--overwrite"], f"error: output directory {lm_dir} is or holds the input {lm_dir}; "
                                                     "inputs are never replaced: choose another output directory"),
             (["--out", str(tmp_path), "--overwrite"], f"error: output directory {tmp_path} is or holds the input {data}; "
                                                       "inputs are never replaced: choose another output directory")]
    for extra, message in cases:
        args = ["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--out", str(tmp_path / "o"), *extra]
        assert main(args) == 2
        assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "o").exists() and data.is_file() and (lm_dir / "config.json").is_file()


def test_eval_dtype_auto_loads_bfloat16_only_where_the_machine_has_bf16_matmuls(tmp_path, monkeypatch):
    """`sftlab eval --dtype auto`, for a causal LM and a classifier: the weights' dtype follows the machine."""
    import torch

    from sftlab.eval.run import load_for_eval
    from sftlab.train import precision

    causal = save_tiny("qwen2", tmp_path / "qwen2", hidden=32, layers=1)
    classifier = save_tiny("bert", tmp_path / "bert", task="cls", num_labels=2, hidden=32, layers=1)
    for machine, expected in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        monkeypatch.setattr(precision, "machine_precision", lambda machine=machine: machine)
        for model_dir in (causal, classifier):
            model, _, _ = load_for_eval(model_dir, "cpu", "auto")
            assert next(model.parameters()).dtype == expected, (model_dir, machine)


def test_eval_reads_a_built_in_dataset_by_name_as_data_train_does(lm_dir, tmp_path, monkeypatch):
    from sftlab.data.sources import builtin_file

    monkeypatch.chdir(tmp_path)  # no file of that name here
    out = tmp_path / "labels"
    assert main(["eval", str(lm_dir), "--data", "banking_intents_test", "--task", "labels", "--max-samples", "4",
                 "--out", str(out)]) == 0
    path, fmt = builtin_file("banking_intents_test")
    shipped = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:4]]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in predictions] == [row["label"] for row in shipped] and fmt == "label"
    assert builtin_file("no_such_dataset") is None
