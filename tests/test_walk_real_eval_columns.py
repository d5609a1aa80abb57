"""`sftlab eval --columns`, by default the run's data.columns (found evaluating a MiniLM BANKING77 run).

The run trained on BANKING77's own CSV (`text,category`) with `data.columns: {label: category}`; evaluating it on
the test CSV of the same shape failed with `expected 'messages' ending with an assistant answer, or 'text' and
'label'`, and `sftlab eval` had no option to map the column."""

from __future__ import annotations

import csv
import json

import pytest

from sftlab.cli import main
from sftlab.models.tiny import save_tiny

INTENTS = {"card_arrival": ["where is my card", "card not arrived yet", "when does my card come"],
           "exchange_rate": ["what rate do you use", "exchange rate for euros", "currency conversion rate"]}


def _csv(path, label_column="category"):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", label_column])
        for label, texts in INTENTS.items():
            writer.writerows([text, label] for text in texts)
    return path


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    base = save_tiny("bert", root / "base", task="cls", num_labels=2, hidden=32, layers=1)
    config = root / "run.yaml"
    config.write_text(f"model: {{path: {base}}}\n"
                      f"data: {{train: {_csv(root / 'train.csv')}, format: label, columns: {{label: category}}, "
                      f"cache_dir: {root / 'cache'}}}\n"
                      f"train: {{stage: cls, max_steps: 1, batch_size: 4, max_length: 16}}\n"
                      f"output: {{dir: {root / 'run'}, tensorboard: false}}\n", encoding="utf-8")
    assert main(["train", str(config), "--no-progress"]) == 0
    return root


def test_eval_maps_columns_as_the_run_did(cls_run, tmp_path):
    data = _csv(tmp_path / "test.csv")
    before = data.read_bytes()
    out = tmp_path / "eval"
    assert main(["eval", str(cls_run / "run"), "--data", str(data), "--task", "labels", "--out", str(out),
                 "--baselines", "--train", str(cls_run / "train.csv")]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["n"] == 6 and summary["baselines"]["majority"]["fit_on"] == "train file"
    references = [json.loads(line)["reference"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(references) == sorted(label for label, texts in INTENTS.items() for _ in texts)
    assert data.read_bytes() == before  # the input is never changed


def test_columns_option_overrides_or_turns_off_the_run_mapping(cls_run, tmp_path, capsys):
    data = _csv(tmp_path / "intent.csv", label_column="intent")
    run = str(cls_run / "run")
    code = main(["eval", run, "--data", str(data), "--task", "labels", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"error: {data}:2: column 'category' (--columns label=category) not found; "
                                 "the row has ['text', 'intent']")
    assert main(["eval", run, "--data", str(data), "--task", "labels", "--out", str(tmp_path / "b"),
                 "--columns", "label=intent"]) == 0
    assert main(["eval", run, "--data", str(_csv(tmp_path / "c.csv")), "--task", "labels",
                 "--out", str(tmp_path / "c"), "--columns"]) == 2  # no mapping: `category` is no label column
    assert "'text' and 'label'" in capsys.readouterr().err
    assert main(["eval", run, "--data", str(data), "--task", "labels", "--columns", "label"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --columns 'label' must look like canonical=column "
                                               "(e.g. label=category)")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
