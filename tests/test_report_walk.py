"""`sftlab report` on the run directories met in practice: broken files, runs in progress, output paths that are
taken, reports written again, label results with per-label values, and runs that share a name."""

import json
import re
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.eval.report import write_report
from sftlab.errors import SftlabError
from test_report import CellParser, make_run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("name, content, expected", [
    ("metrics.jsonl", '{"step": 1, "loss": 1.0}\n[1, 2]\n', "metrics.jsonl:2: expected a JSON object, got list"),
    ("metrics.jsonl", '{"step": 1, "loss": 1.0}\n3\n', "metrics.jsonl:2: expected a JSON object, got int"),
    ("metrics.jsonl", '{"loss": 1.0}\n', "metrics.jsonl:1: no field 'step'"),
    ("metrics.jsonl", '{"step": "a", "loss": 1.0}\n', "metrics.jsonl:1: field 'step' is \"a\""),
    ("metrics.jsonl", '{"step": true, "loss": 1.0}\n', "metrics.jsonl:1: field 'step' is true"),
    ("metrics.jsonl", b'{"step": 1, "note": "\xff"}\n', "metrics.jsonl: not UTF-8 text"),
    ("metrics.json", "[1]\n", "metrics.json: expected a JSON object, got list"),
    ("data_stats.json", '"x"\n', "data_stats.json: expected a JSON object, got str"),
    ("trainable.json", "[]\n", "trainable.json: expected a JSON object, got list"),
    ("eval-labels/metrics.json", "[1]\n", "eval-labels/metrics.json: expected a JSON object, got list"),
    ("config.yaml", b"model: \xff\n", "config.yaml: not UTF-8 text"),
])
def test_a_broken_run_file_is_one_line_naming_file_line_and_field(tmp_path, capsys, name, content, expected):
    run = make_run(tmp_path, "run", 1.0)
    path = run / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["report", str(run)]) == 2
    assert _one_error_line(capsys).startswith(f"error: {run}/{expected}")
    assert not (run / "report.html").exists() and not (run / "plots").exists()


def test_a_run_in_progress_cut_short_last_line_is_skipped_but_not_a_broken_middle_line(tmp_path, capsys):
    run = make_run(tmp_path, "live", 1.0)
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "checkpoints" / "step-4" / "sftlab_state.json").write_text("{}")
    (run / "checkpoints" / "step-6").mkdir()  # being written (no sidecar yet): --resume would not start from it
    rows = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(rows + '{"step": 7, "lo')  # training is writing this row right now
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "(6 logged steps, 3 evaluations; not finished" in page and "latest checkpoint step-4)" in page
    (run / "metrics.jsonl").write_text('{"step": 1, "lo\n' + rows)  # not the last line: a broken file
    assert main(["report", str(run)]) == 2
    assert _one_error_line(capsys).startswith(f"error: {run}/metrics.jsonl:1: not valid JSON")


def test_an_output_path_taken_by_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    run = make_run(tmp_path, "run", 1.0)
    (tmp_path / "taken").write_text("mine")
    for out, message in ((tmp_path / "taken", "taken is a file"), (tmp_path / "taken" / "sub", "taken is a file")):
        assert main(["report", str(run), "--out", str(out)]) == 2
        assert message in _one_error_line(capsys)
    (tmp_path / "out" / "report.html").mkdir(parents=True)
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "report.html is a directory" in _one_error_line(capsys)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]  # no plots/ left behind
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "plots").write_text("mine")
    assert main(["report", str(run), "--out", str(tmp_path / "out2")]) == 2
    assert "plots is a file" in _one_error_line(capsys) and (tmp_path / "out2" / "plots").read_text() == "mine"
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_report_written_again_keeps_no_png_of_the_earlier_one(tmp_path):
    first, second = make_run(tmp_path, "first", 1.0), make_run(tmp_path, "second", 1.0)
    rows = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    (second / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if not r.get("eval")))
    (second / "config.yaml").write_text("model:\n  path: tiny\n")
    out = tmp_path / "out"
    write_report([first], out)
    assert (out / "plots" / "eval_macro_f1.png").is_file()
    write_report([second], out)
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["loss.png", "lr.png", "tokens_per_s.png"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_label_results_of_sftlab_eval_show_each_labels_precision_recall_f1(tmp_path):
    run = make_run(tmp_path, "cls", 1.0)
    per_class = {"yes": {"precision": 0.75, "recall": 0.6, "f1": 2 * 0.75 * 0.6 / 1.35, "support": 5},
                 "no": {"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3}}
    confusion = {"true": ["no", "yes"], "predicted": ["no", "yes", "(unparseable)"], "matrix": [[2, 1, 0], [2, 3, 0]]}
    (run / "eval-labels").mkdir()
    (run / "eval-labels" / "metrics.json").write_text(json.dumps({
        "task": "labels", "data": "test.jsonl", "baselines": {},
        "metrics": {"accuracy": 0.625, "macro_f1": 0.6, "per_class": per_class, "confusion": confusion}}))
    write_report([run], run)
    parser = CellParser()
    page = (run / "report.html").read_text(encoding="utf-8")
    parser.feed(page)
    for label, values in per_class.items():
        for key, value in values.items():
            assert float(parser.cells[("per_class/cls/eval-labels", f"{label}.{key}")]) == pytest.approx(value, 1e-5)
    assert parser.cells[("sftlab eval: eval-labels/cls", "metrics.accuracy")] == "0.625"
    assert "metrics.confusion" not in page and "metrics.per_class" not in page  # not a flattened dump


def test_runs_given_twice_or_sharing_names_are_told_apart(tmp_path, capsys):
    one, two = make_run(tmp_path / "a" / "x", "run", 1.0), make_run(tmp_path / "b" / "x", "run", 2.0)
    write_report([one, two], tmp_path / "out")
    items = re.findall(r"<li><b>([^<]*)</b>", (tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    assert items == ["a/x/run", "b/x/run"]
    assert main(["report", str(one), str(Path(str(one) + "/")), "--out", str(tmp_path / "out2")]) == 2
    assert "the same run directory is given twice" in _one_error_line(capsys)
    with pytest.raises(SftlabError, match="given twice"):
        write_report([one, tmp_path / "a" / "x" / "." / "run"], tmp_path / "out3")


def test_a_run_resumed_to_train_further_is_not_reported_completed_from_its_earlier_metrics_json(tmp_path):
    """`sftlab train --resume train.max_steps=N` keeps the previous end's metrics.json until it ends again."""
    run = make_run(tmp_path, "longer", 1.0)  # metrics.json says step 6, completed
    with (run / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"step": 7, "loss": 0.2, "lr": 1e-4, "tokens_per_s": 100.0}) + "\n")
    (run / "checkpoints" / "step-6").mkdir(parents=True)
    write_report([run], run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "(7 logged steps, 3 evaluations; not finished" in page and "earlier end, at step 6" in page
    assert "; completed)" not in page
