"""The run report: HTML exists, PNGs are valid images, numbers in the HTML equal the JSON; several runs side by side."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from sftlab.cli import main
from sftlab.eval.report import format_number, write_report


def make_run(root: Path, name: str, scale: float) -> Path:
    run = root / name
    run.mkdir(parents=True)
    rows = []
    for step in range(1, 7):
        rows.append({"step": step, "loss": scale * 2.0 / step, "lr": 1e-3 * (1 - step / 7), "tokens_per_s": 100.0 + step})
        if step % 2 == 0:
            rows.append({"step": step, "eval": True, "loss": scale * 2.5 / step, "macro_f1": 0.2 + 0.1 * step / scale,
                         "accuracy": 0.31 * step / 6})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = {"step": 6, "train_loss": scale / 3, "eval_loss": scale * 2.5 / 6, "eval_macro_f1": 0.2 + 0.6 / scale,
             "best_step": 6, "stopped": "completed"}
    (run / "metrics.json").write_text(json.dumps(final))
    (run / "config.yaml").write_text(f"model:\n  path: tiny\neval:\n  metric: macro_f1\n  mode: max\ntrain:\n  lr: {scale}\n")
    (run / "data_stats.json").write_text(json.dumps({"train": {"examples": 8, "tokens": 123}, "validation": {"examples": 4}}))
    (run / "trainable.json").write_text(json.dumps({"trainable": 4700, "total": 47000, "percent": 10.0}))
    return run


class CellParser(HTMLParser):
    """Collects (data-run, data-metric) -> text of the numeric cells, and the image sources."""

    def __init__(self):
        super().__init__()
        self.cells, self.images, self._key = {}, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-metric" in attrs:
            self._key = (attrs["data-run"], attrs["data-metric"])
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        if self._key:
            self.cells[self._key] = data
            self._key = None


def test_single_run_report_html_pngs_and_numbers(tmp_path):
    run = make_run(tmp_path, "run-a", 1.0)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    parser = CellParser()
    parser.feed(page)
    final = json.loads((run / "metrics.json").read_text())
    for key, value in final.items():
        if isinstance(value, (int, float)):
            assert float(parser.cells[("final/run-a", key)]) == pytest.approx(value, rel=1e-5), key
    assert parser.cells[("data_stats/run-a", "train.tokens")] == "123"
    assert parser.cells[("trainable/run-a", "trainable")] == "4700"
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["eval_accuracy.png", "eval_macro_f1.png", "loss.png", "lr.png", "tokens_per_s.png"]
    for png in pngs:
        with Image.open(run / "plots" / png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100
    assert len(parser.images) == len(pngs) and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing fetched from the internet
    assert "metric: macro_f1" in page  # the resolved config is shown


def test_several_runs_side_by_side(tmp_path):
    runs = [make_run(tmp_path, "run-a", 1.0), make_run(tmp_path / "other", "run-b", 2.0)]
    out = tmp_path / "compare"
    write_report(runs, out)
    parser = CellParser()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    for run in runs:
        final = json.loads((run / "metrics.json").read_text())
        assert parser.cells[(f"final/{run.name}", "eval_macro_f1")] == format_number(final["eval_macro_f1"])
    assert (out / "plots" / "loss.png").is_file()


def test_report_errors(tmp_path, capsys):
    runs = [make_run(tmp_path, "a", 1.0), make_run(tmp_path, "b", 1.0)]
    assert main(["report", str(runs[0]), str(runs[1])]) == 2  # several runs need --out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    (runs[0] / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    assert main(["report", str(runs[0])]) == 2
    errors = capsys.readouterr().err
    assert "--out" in errors and "not a run directory" in errors and "metrics.jsonl:2" in errors


def test_runs_of_different_stages_get_a_loss_plot_each(tmp_path):
    """A classifier's loss and a language model's are different quantities: `sftlab report` of an sft and a cls run
    draws one loss plot per stage; runs of one stage (or of unknown stage) share one."""
    runs = [make_run(tmp_path, "chat", 1.0), make_run(tmp_path, "intents", 2.0), make_run(tmp_path, "old", 3.0)]
    for run, stage in zip(runs, ("sft", "cls")):
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("train:\n", f"train:\n  stage: {stage}\n"))
    write_report(runs[:2], tmp_path / "mixed")
    plots = sorted(path.name for path in (tmp_path / "mixed" / "plots").glob("loss*.png"))
    assert plots == ["loss_cls.png", "loss_sft.png"]
    html = (tmp_path / "mixed" / "report.html").read_text(encoding="utf-8")
    assert "training and validation loss, sft runs" in html and "training and validation loss, cls runs" in html
    write_report([runs[0], runs[2]], tmp_path / "with-unknown")
    assert sorted(p.name for p in (tmp_path / "with-unknown" / "plots").glob("loss*.png")) == ["loss_sft.png",
                                                                                              "loss_unknown.png"]
    write_report(runs[1:2], tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "one" / "plots").glob("loss*.png")) == ["loss.png"]
