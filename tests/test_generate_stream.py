"""`sftlab generate` on large inputs: answers in input order as they finish, OUT.partial kept after a crash,
`--resume` giving the answers of an uninterrupted run, OUT never half-written, a bar on a terminal."""

from __future__ import annotations

import argparse
import io
import json
import sys

import pytest

from sftlab.cli import main
from sftlab import progress
from sftlab.commands import generate_partial
from sftlab.infer import engine
from sftlab.infer.engine import answers_in_order, generate_all
from sftlab.infer.loading import load_served
from sftlab.infer.prompts import render_chat
from sftlab.infer.sampling import SamplingParams
from sftlab.models.tiny import save_tiny

WORDS = ["hello", "The quick brown fox", "tax", "Fine-tuning adapts a model", "企业所得税", "why", "a b c d e f"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": w}) + "\n" for w in WORDS), encoding="utf-8")
    return tmp_path


def _command(tiny_dir, files, out="out.jsonl", *extra):
    return ["generate", str(tiny_dir), "--input", str(files / "in.jsonl"), "--output", str(files / out),
            "--max-new-tokens", "6", "--batch-size", "3", *extra]


def _crash_at(monkeypatch, row: int, exc: BaseException):
    """The engine raises `exc` when it would hand over answer `row` (counted over the whole run)."""
    real = engine.answers_in_order

    def crashing(served, prompts, params, *args, **kwargs):
        first = params[0].seed  # --seed 0: a resumed run starts at row `seed`
        for index, event in real(served, prompts, params, *args, **kwargs):
            if first + index == row:
                raise exc
            yield index, event
    monkeypatch.setattr(engine, "answers_in_order", crashing)


def test_answers_come_in_input_order_while_later_rows_still_decode(tiny_dir, monkeypatch):
    served = load_served(tiny_dir)
    prompts = [render_chat(served.tokenizer, [{"role": "user", "content": w}]) for w in WORDS]
    budgets = [2, 12, 3, 9, 1, 5, 4]  # rows 2 and 4 finish before row 1
    params = [SamplingParams(max_new_tokens=b) for b in budgets]
    ticks = []
    real_tick = engine.Scheduler.tick
    monkeypatch.setattr(engine.Scheduler, "tick", lambda self: ticks.append(1) or real_tick(self))
    handed = [(index, len(ticks), event) for index, event in answers_in_order(served, prompts, params, set(), 3)]
    assert [index for index, _, _ in handed] == list(range(len(WORDS)))
    assert handed[0][1] < len(ticks)  # the first answer came before the last step
    alone = [generate_all(served, [p], [s], set(), max_batch=1)[0] for p, s in zip(prompts, params)]
    assert [event for _, _, event in handed] == alone
    assert [event["completion_tokens"] for event in alone] == budgets


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.9", "--top-p", "0.9"]], ids=["greedy", "sampled"])
def test_a_resumed_run_gives_the_answers_of_an_uninterrupted_one(tiny_dir, files, monkeypatch, capsys, sampling):
    assert main(_command(tiny_dir, files, "whole.jsonl", *sampling)) == 0
    whole = (files / "whole.jsonl").read_text(encoding="utf-8")
    with monkeypatch.context() as patch:
        _crash_at(patch, 4, KeyboardInterrupt())
        assert main(_command(tiny_dir, files, "out.jsonl", *sampling)) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-2:] == [f"stopped: {files}/out.jsonl.partial keeps 4 of 7 answers: run the same command with "
                        "--resume to continue", "interrupted"]
    assert not (files / "out.jsonl").exists()
    kept = (files / "out.jsonl.partial").read_text(encoding="utf-8")
    assert kept == "".join(whole.splitlines(keepends=True)[:4])
    assert main(_command(tiny_dir, files, "out.jsonl", *sampling, "--resume", "--batch-size", "2")) == 0
    assert (files / "out.jsonl").read_text(encoding="utf-8") == whole
    assert sorted(p.name for p in files.iterdir()) == ["in.jsonl", "out.jsonl", "whole.jsonl"]
    if sampling:  # the seeds matter: row i samples with --seed + i, resumed or not
        assert main(_command(tiny_dir, files, "greedy.jsonl")) == 0
        assert main(_command(tiny_dir, files, "seed1.jsonl", *sampling, "--seed", "1")) == 0
        outputs = {name: [json.loads(line)["output"] for line in (files / name).read_text().splitlines()[4:]]
                   for name in ("whole.jsonl", "greedy.jsonl", "seed1.jsonl")}
        assert outputs["whole.jsonl"] != outputs["greedy.jsonl"] and outputs["whole.jsonl"] != outputs["seed1.jsonl"]


def test_output_never_exists_half_written_and_each_answer_is_flushed(tiny_dir, files, monkeypatch):
    real = engine.answers_in_order
    seen = []

    def watching(*args, **kwargs):
        for index, event in real(*args, **kwargs):
            lines = (files / "out.jsonl.partial").read_text(encoding="utf-8").splitlines()
            seen.append((index, len(lines), (files / "out.jsonl").exists()))
            yield index, event
    monkeypatch.setattr(engine, "answers_in_order", watching)
    (files / "out.jsonl").write_text("an older answer file\n", encoding="utf-8")
    assert main(_command(tiny_dir, files)) == 0
    assert seen == [(i, i, True) for i in range(len(WORDS))]  # the old OUT stays whole until the rename
    assert len((files / "out.jsonl").read_text().splitlines()) == len(WORDS)
    (files / "out.jsonl").unlink()
    seen.clear()
    assert main(_command(tiny_dir, files)) == 0
    assert seen == [(i, i, False) for i in range(len(WORDS))]


def test_an_answer_that_fails_keeps_the_ones_before_it_in_one_line(tiny_dir, files, monkeypatch, capsys):
    real = engine.answers_in_order

    def failing(*args, **kwargs):
        for index, event in real(*args, **kwargs):
            yield index, ({"type": "error", "message": "generation failed: RuntimeError"} if index == 2 else event)
    monkeypatch.setattr(engine, "answers_in_order", failing)
    assert main(_command(tiny_dir, files)) == 2
    assert capsys.readouterr().err.endswith(f"\nerror: {files}/in.jsonl:3: generation failed: RuntimeError ({files}"
                                            "/out.jsonl.partial keeps 2 of 7 answers: run the same command with "
                                            "--resume to continue)\n")  # after transformers' loading bar, in tests
    assert len((files / "out.jsonl.partial").read_text().splitlines()) == 2
    assert json.loads((files / "out.jsonl.partial.json").read_text())["max_new_tokens"] == 6


def test_a_run_that_stops_before_its_first_answer_leaves_nothing(tiny_dir, files, monkeypatch, capsys):
    _crash_at(monkeypatch, 0, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        main(_command(tiny_dir, files))
    assert sorted(p.name for p in files.iterdir()) == ["in.jsonl"] and "stopped" not in capsys.readouterr().err


def _partial_of_four(tiny_dir, files, monkeypatch):
    with monkeypatch.context() as patch:
        _crash_at(patch, 4, KeyboardInterrupt())
        assert main(_command(tiny_dir, files)) == 130


def test_a_partial_file_is_continued_only_when_it_fits(tiny_dir, files, monkeypatch, capsys):
    _partial_of_four(tiny_dir, files, monkeypatch)
    capsys.readouterr()
    partial = files / "out.jsonl.partial"
    kept = partial.read_bytes()
    assert main(_command(tiny_dir, files)) == 2
    assert capsys.readouterr().err == (f"error: {partial} holds the answers of an interrupted run: pass --resume to "
                                       "continue it, or remove it to start over\n")
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume", "--temperature", "0.5")) == 2
    assert capsys.readouterr().err == (f"error: --resume: {partial} was made with --temperature 0.0, not 0.5: resume "
                                       "with the options it was made with, or remove it to start over\n")
    rows = (files / "in.jsonl").read_text().splitlines()
    rows[2] = json.dumps({"prompt": "another"})
    (files / "in.jsonl").write_text("\n".join(rows) + "\n")
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 2
    assert capsys.readouterr().err == (f"error: --resume: {partial}:3 does not answer {files}/in.jsonl:3 (another "
                                       "prompt or reference); it was made from another --input: remove it to start "
                                       "over\n")
    (files / "in.jsonl").write_text("\n".join(rows[:3]) + "\n")
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 2
    assert "holds 4 answers but --input has 3 rows" in capsys.readouterr().err
    (files / "out.jsonl.partial.json").unlink()
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 2
    assert capsys.readouterr().err == (f"error: --resume: {files}/out.jsonl.partial.json is missing, so the options "
                                       f"{partial} was made with are unknown: remove it to start over\n")
    assert partial.read_bytes() == kept and not (files / "out.jsonl").exists()  # refusing changes nothing


def test_a_last_line_cut_short_is_dropped_and_generated_again(tiny_dir, files, monkeypatch, capsys):
    assert main(_command(tiny_dir, files, "whole.jsonl")) == 0
    _partial_of_four(tiny_dir, files, monkeypatch)
    partial = files / "out.jsonl.partial"
    with partial.open("a", encoding="utf-8") as handle:
        handle.write('{"src": "cut')
    capsys.readouterr()
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 0
    assert f"note: dropped the last line of {partial}, cut short when the run stopped" in capsys.readouterr().err
    assert (files / "out.jsonl").read_bytes() == (files / "whole.jsonl").read_bytes()
    _partial_of_four(tiny_dir, files, monkeypatch)
    with partial.open("a", encoding="utf-8") as handle:
        handle.write("not json\n")
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 2
    assert capsys.readouterr().err.endswith(f"error: --resume: {partial}:5: not an answer row (a JSON object): remove "
                                            "the file to start over\n")


def test_resume_without_a_partial_file_starts_over_and_a_complete_one_needs_no_model(tiny_dir, files, monkeypatch,
                                                                                      capsys):
    from sftlab.commands import generate

    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 0
    assert f"note: there is no {files}/out.jsonl.partial to resume; starting from the first prompt" in \
        capsys.readouterr().err
    whole = (files / "out.jsonl").read_bytes()
    (files / "out.jsonl").rename(files / "out.jsonl.partial")
    assert main(_command(tiny_dir, files, "out.jsonl")) == 2  # no record: written by hand, not by a run
    (files / "out.jsonl.partial.json").write_text(json.dumps(generate_partial.settings_of(
        argparse.Namespace(model=str(tiny_dir), adapter=None, template=None, dtype="float32",
                                    max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, stop=[]))))
    monkeypatch.setattr(generate, "load_model", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 0
    assert (files / "out.jsonl").read_bytes() == whole
    assert sorted(p.name for p in files.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_the_input_is_never_the_partial_file(tiny_dir, files, capsys):
    (files / "in.jsonl").rename(files / "out.jsonl.partial")
    command = _command(tiny_dir, files)
    command[command.index("--input") + 1] = str(files / "out.jsonl.partial")
    assert main(command) == 2
    assert "is where --output's partial answers go; inputs are never overwritten" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_shows_a_bar_of_answers_from_where_the_run_resumes(tiny_dir, files, monkeypatch):
    monkeypatch.setattr(progress, "BAR_DELAY_S", 0)  # a real run draws after a second
    _partial_of_four(tiny_dir, files, monkeypatch)
    bars = []
    real_bar = generate_partial.answer_bar
    monkeypatch.setattr(generate_partial, "answer_bar", lambda *args: bars.append(real_bar(*args)) or bars[-1])
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert main(_command(tiny_dir, files, "out.jsonl", "--resume")) == 0
    shown = sys.stderr.getvalue()
    assert "\rgenerating:  57%|#####7    | 4/7 [00:00<?, ?answers/s]" in shown  # resumed at 4 of 7
    assert shown.endswith("\r" + " " * len(shown.split("\r")[-2]) + "\r")  # cleared at the end
    assert len(bars) == 1 and (bars[0].n, bars[0].total) == (7, 7)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert main(_command(tiny_dir, files, "again.jsonl")) == 0
    assert "generating" not in sys.stderr.getvalue() and bars[-1].disable  # not a terminal: no bar
