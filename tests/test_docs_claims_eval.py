"""docs/eval.md: claims not covered elsewhere: where `sftlab eval` writes without --out, and the report's number
format (6 significant digits)."""

from __future__ import annotations

import json
import shutil

from sftlab.cli import main
from sftlab.models.tiny import save_tiny
from test_report import CellParser, make_run


def test_eval_writes_eval_task_inside_the_run_without_out(tmp_path, capsys):
    """docs/eval.md: `--out` defaults to `eval-TASK` inside MODEL_DIR when that is a run directory, else beside it,
    i.e. inside the run directory for `RUN/model`."""
    run = tmp_path / "run"
    save_tiny("qwen2", run / "model", hidden=32, layers=1)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a {i}"}]}
            for i in range(2)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    common = ["--data", str(data), "--task", "lm", "--device", "cpu"]
    assert main(["eval", str(run / "model"), *common]) == 0
    first = json.loads((run / "eval-lm" / "metrics.json").read_text())
    shutil.rmtree(run / "eval-lm")
    assert main(["eval", str(run), *common]) == 0  # the run directory itself: its model/ is evaluated
    assert json.loads((run / "eval-lm" / "metrics.json").read_text())["metrics"] == first["metrics"]
    assert main(["eval", str(run), *common]) == 2  # an earlier result is kept without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    plain = save_tiny("qwen2", tmp_path / "models" / "plain", hidden=32, layers=1)
    assert main(["eval", str(plain), *common]) == 0
    assert (tmp_path / "models" / "eval-lm" / "metrics.json").is_file()  # beside a model dir that is no run


def test_report_numbers_have_six_significant_digits(tmp_path):
    run = make_run(tmp_path, "run-a", 1.0)  # train_loss 1/3, eval_loss 2.5/6, step 6
    assert main(["report", str(run)]) == 0
    parser = CellParser()
    parser.feed((run / "report.html").read_text(encoding="utf-8"))
    assert parser.cells[("final/run-a", "train_loss")] == "0.333333"
    assert parser.cells[("final/run-a", "eval_loss")] == "0.416667"
    assert parser.cells[("final/run-a", "step")] == "6"
