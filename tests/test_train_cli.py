"""`sftlab train` end to end for pt, sft and cls (bert and a decoder classifier): the files a run writes."""

import json

import pytest
import yaml

from sftlab.cli import main
from test_train_loop import SFT_ROWS, tiny_run, write_jsonl

PT_TEXT = "\n".join(f"Line {i}: policy notices about tax relief and export support, number {i * 37}." for i in range(30))
CLS_ROWS = [{"text": f"{'refund please' if i % 2 else 'card arrived'} {i}", "label": "refund" if i % 2 else "card"}
            for i in range(10)]


def _write_config(tmp_path, raw) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _check_run_files(out, stage):
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    assert (out / "model" / "tokenizer.json").is_file()
    card = (out / "model" / "README.md").read_text()
    assert "## Base model" in card and "trainable" in card and "## Final metrics" in card
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["stage"] == stage
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if not row.get("eval")]
    assert [row["step"] for row in train_rows] == [1, 2, 3]
    for key in ("loss", "lr", "tokens_per_s", "supervised_tokens", "epoch"):
        assert key in train_rows[0]
    sidecar = json.loads((out / "checkpoints" / "step-3" / "sftlab_state.json").read_text())
    assert sidecar["step"] == 3 and sidecar["config"]["train"]["stage"] == stage and "position" in sidecar
    assert not (out / "checkpoints" / "step-2").exists()  # output.keep_checkpoints=1
    assert json.loads((out / "metrics.json").read_text())["step"] == 3
    assert (out / "data_stats.json").is_file()


def _cli_run(tmp_path, raw, capsys):
    raw["train"].update(max_steps=3, save_every_n_steps=1)
    assert main(["train", _write_config(tmp_path, raw), "--no-progress"]) == 0
    assert "model in" in capsys.readouterr().out
    return tmp_path / "run"


def test_train_pt_on_raw_text(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text(PT_TEXT, encoding="utf-8")
    raw = tiny_run(tmp_path, "qwen2", train={"stage": "pt", "max_length": 32})
    raw["data"]["train"] = str(text)
    _check_run_files(_cli_run(tmp_path, raw, capsys), "pt")


def test_train_sft_on_jsonl_with_validation(tmp_path, capsys):
    val = write_jsonl(tmp_path / "val.jsonl", SFT_ROWS[:2])
    raw = tiny_run(tmp_path, "qwen2", data={"validation": str(val)}, eval={"every_n_steps": 2})
    out = _cli_run(tmp_path, raw, capsys)
    _check_run_files(out, "sft")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_perplexity"] > 1 and (out / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("arch, task", [("bert", "cls"), ("qwen2", "causal_lm")])
def test_train_cls(tmp_path, capsys, arch, task):
    from transformers import AutoModelForSequenceClassification

    raw = tiny_run(tmp_path, arch, rows=CLS_ROWS, task=task, train={"stage": "cls"}, data={"val_ratio": 0.2},
                   eval={"every_n_steps": 3, "metric": "macro_f1", "mode": "max"})
    out = _cli_run(tmp_path, raw, capsys)
    _check_run_files(out, "cls")
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 1 and 0 <= metrics["eval_macro_f1"] <= 1
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert sorted(model.config.id2label.values()) == ["card", "refund"]


def test_cli_errors_and_interrupt_exit_codes(tmp_path, capsys, monkeypatch):
    import sftlab.train.loop as loop

    raw = tiny_run(tmp_path, train={"max_steps": 3, "lr": 1e30, "max_grad_norm": None})
    config = _write_config(tmp_path, raw)
    assert main(["train", config]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["train", config, "train.lr=1e-3", "--overwrite", "--no-progress"]) == 0
    assert main(["train", config, "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err

    def interrupt(session, log, loss, stats):
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "log_step", interrupt)
    assert main(["train", config, "train.lr=1e-3", "--overwrite", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 1" in err and "--resume" in err


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_no_progress_silences_the_tokenising_bar_too(tmp_path, capsys, flag):
    raw = tiny_run(tmp_path, "qwen2")
    raw["train"].update(max_steps=1)
    assert main(["train", _write_config(tmp_path, raw), *flag]) == 0
    err = capsys.readouterr().err
    assert ("tokenizing (sft)" in err) == (not flag)  # the bar, drawn to stderr unless --no-progress
