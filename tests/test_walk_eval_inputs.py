"""`sftlab eval` acceptance walk: bad inputs and options give one `error:` line naming the file, line and field,
before anything is written, and options that would be silently ignored or give wrong numbers are refused."""

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.eval import baselines, tasks
from sftlab.models.tiny import save_tiny

CHAT = [{"role": "user", "content": "pick one"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def text_rows(labels: list[str]) -> list[dict]:
    return [{"text": f"item {i} of {label}", "label": label} for i, label in enumerate(labels)]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("m") / "qwen2", hidden=32, layers=1)


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def ranking_row(**candidate) -> dict:
    return {"query": "q", "messages": CHAT,
            "candidates": [{"id": "a", "text": "alpha", "relevant": 1}, {"id": "b", **candidate}]}


@pytest.mark.parametrize("row, expected", [
    (ranking_row(text=None, relevant=0), "candidates[1]: 'text' must be a string, got None"),
    (ranking_row(text="beta"), "candidates[1]: 'relevant' (a grade: 0 not relevant, 1, 2, ... more relevant) is missing"),
    (ranking_row(text="beta", relevant=-1),
     "candidates[1]: 'relevant' must be an integer >= 0 (0 not relevant, 1, 2, ... more relevant), got -1"),
    ({**ranking_row(text="beta", relevant=0), "messages": "pick one"}, "messages: expected a non-empty list"),
    (ranking_row(messages=[{"role": "bot", "content": "x"}], relevant=0),
     "candidates[1].messages: message 0 has unknown role 'bot'"),
])
def test_bad_ranking_rows_name_the_line_and_candidate_before_the_model_loads(lm_dir, tmp_path, capsys, monkeypatch,
                                                                            row, expected):
    """A null candidate text was scored as the string "None"; messages that were not a list of chat messages
    failed after the model had loaded, without the file or line; 'relevant' errors named no candidate."""
    from sftlab.eval import run

    monkeypatch.setattr(run, "load_for_eval", lambda *a, **k: pytest.fail("the model was loaded"))
    data = write_jsonl(tmp_path / "rank.jsonl", [ranking_row(text="beta", relevant=0), row])
    out = tmp_path / "out"
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "ranking", "--out", str(out)]) == 2
    assert one_error(capsys).startswith(f"error: {data}:2: {expected}")
    assert not out.exists()


def test_bad_ranking_rows_messages(tmp_path):
    rows = [{**ranking_row(text="beta", relevant=0), "_src": "f.jsonl:3", "messages": [{"role": "user"}]}]
    with pytest.raises(Exception, match=r"^f\.jsonl:3: messages: message 0 \(user\) has no text content"):
        tasks.check_ranking_rows(rows)


def test_duplicate_labels_are_refused_not_miscounted(lm_dir, tmp_path, capsys):
    """--labels alpha,alpha,beta weighted alpha twice (weighted recall 1/3 where accuracy was 1/2) and gave
    probabilities that did not sum to 1."""
    data = write_jsonl(tmp_path / "d.jsonl", text_rows(["alpha", "beta"]))
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--labels", "alpha,alpha,beta",
                 "--out", str(tmp_path / "o")]) == 2
    assert one_error(capsys) == "error: --labels 'alpha,alpha,beta': 'alpha' given more than once"
    with pytest.raises(Exception, match="'alpha' given more than once"):
        tasks.resolve_labels(text_rows(["alpha", "beta"]), tasks.EvalOptions(labels=["alpha", "beta", "alpha"]))
    assert not (tmp_path / "o").exists()


def test_train_labels_outside_the_label_set_are_an_error_not_a_wrong_majority(lm_dir, tmp_path, capsys):
    """With --train holding labels the evaluation's label set lacked, the 'majority' baseline said it was fitted
    on the train file but predicted another label than that file's majority."""
    data = write_jsonl(tmp_path / "eval.jsonl", text_rows(["alpha", "beta", "alpha", "beta"]))
    train = write_jsonl(tmp_path / "train.jsonl", text_rows(["alpha", "beta", "zeta", "zeta", "zeta"]))
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--baselines", "--train", str(train),
                 "--out", str(tmp_path / "o")]) == 2
    assert one_error(capsys) == (f"error: --train {train}:3: label 'zeta' is not in the label set ['alpha', 'beta']; "
                                 "pass every label with --labels")
    assert not (tmp_path / "o").exists()
    fitted = baselines.label_baselines(tasks.load_examples(str(data), "labels"), ["alpha", "beta", "zeta"],
                                       tasks.load_examples(str(train), "labels"))
    assert fitted["majority"]["predicts"] == "zeta"


def test_ignored_options_are_refused(lm_dir, tmp_path, capsys):
    """--train without --baselines and --positive with three labels were accepted and silently ignored."""
    data = write_jsonl(tmp_path / "d.jsonl", text_rows(["alpha", "beta", "gamma"]))
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--train", str(data),
                 "--out", str(tmp_path / "o1")]) == 2
    assert one_error(capsys) == "error: --train: the file the baselines are fitted on; it needs --baselines"
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--positive", "beta",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "only for two labels" in one_error(capsys)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_single_label_file_says_to_pass_labels(lm_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "one.jsonl", text_rows(["alpha", "alpha"]))
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--out", str(tmp_path / "o")]) == 2
    assert "pass the whole label set with --labels" in one_error(capsys)
    assert main(["eval", str(lm_dir), "--data", str(data), "--task", "labels", "--labels", "alpha,beta",
                 "--out", str(tmp_path / "o")]) == 0


def test_output_under_a_file_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--out afile/sub was a FileExistsError traceback after the whole evaluation (fixed in sftlab.io)."""
    from sftlab.eval import run

    monkeypatch.setattr(run, "load_for_eval", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "afile").write_text("x")
    data = write_jsonl(tmp_path / "d.jsonl", text_rows(["alpha", "beta"]))
    assert main(["eval", str(tmp_path), "--data", str(data), "--task", "labels",
                 "--out", str(tmp_path / "afile" / "sub")]) == 2
    line = one_error(capsys)
    assert line.startswith(f"error: {tmp_path}/afile/sub") and f"{tmp_path}/afile is a file" in line
    assert (tmp_path / "afile").read_text() == "x"


def test_labels_that_differ_from_a_classification_head_are_refused(tmp_path, capsys):
    """A cls model's head labels silently replaced --labels."""
    head = save_tiny("bert", tmp_path / "bert", task="cls", num_labels=2, hidden=32, layers=1)
    data = write_jsonl(tmp_path / "d.jsonl", text_rows(["LABEL_0", "LABEL_1"]))
    assert main(["eval", str(head), "--data", str(data), "--task", "labels", "--labels", "LABEL_0,other",
                 "--out", str(tmp_path / "o")]) == 2
    assert "classifies with its head, whose labels are LABEL_0,LABEL_1" in one_error(capsys)
    assert main(["eval", str(head), "--data", str(data), "--task", "labels", "--labels", "LABEL_1,LABEL_0",
                 "--out", str(tmp_path / "o")]) == 0


def test_training_ranking_metric_without_relevant_candidates_says_why(lm_dir, tmp_path):
    """The error blamed auc / average_precision and label methods for a ranking file whose queries had no
    relevant candidate."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.config import load_config
    from sftlab.eval.hooks import task_metrics

    rows = [{"query": "q", "messages": CHAT, "candidates": [{"id": "a", "text": "alpha", "relevant": 0}]}]
    data = write_jsonl(tmp_path / "rank.jsonl", rows)
    cfg = load_config(None, [], base={"model": {"path": str(lm_dir)}, "data": {"train": str(data)},
                                      "eval": {"metric": "ndcg@5", "mode": "max", "data": str(data)}})
    model, tokenizer = AutoModelForCausalLM.from_pretrained(lm_dir), AutoTokenizer.from_pretrained(lm_dir)
    with pytest.raises(Exception, match=r"'ndcg@5' was not computed .*no query of the 1 evaluated has a relevant"):
        task_metrics(model, tokenizer, SimpleNamespace(val_examples=[]), cfg)
