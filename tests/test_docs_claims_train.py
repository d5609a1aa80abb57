"""docs/train.md's prose, claim by claim where no other test checks it: what a run writes (the files, the fields of
metrics.jsonl, data_stats.json, trainable.json and a checkpoint's sftlab_state.json, the model card's versions), the
run log's lines without a terminal, `~` in model.path and output.dir, the saved template, how command-line values
are read, shipped datasets' formats; and that README's and the allocator paragraph's measurements are the benchmark
pages'."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from sftlab.cli import main
from sftlab.config import load_config
from sftlab.models.tiny import save_tiny

ROOT = Path(__file__).resolve().parent.parent
BASE = {"model": {"path": "m"}, "data": {"train": "a.jsonl"}}
RUN = """\
model: {path: ~/tiny}
data: {train: banking_chat_train, validation: banking_chat_test, max_samples: 24, template: chatml}
strategy: {kind: freeze, freeze: {layers: "last:1"}}
train: {stage: sft, max_steps: 4, batch_size: 4, warmup_steps: 2, save_every_n_steps: 2, max_length: 512,
        lr: 1.0e-4, allocator: system}
eval: {every_n_steps: 2, max_samples: 8}
output: {dir: ~/out, keep_checkpoints: 1}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny sft run through the CLI with $HOME in a temporary directory; its directory and stderr."""
    home = tmp_path_factory.mktemp("home")
    torch.manual_seed(0)
    shutil.move(str(save_tiny("qwen2", home / "made", hidden=32, layers=2)), home / "tiny")
    (home / "run.yaml").write_text(RUN, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))  # `~` in model.path and output.dir (and the default caches) land here
        patch.delenv("SFTLAB_HOME", raising=False)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["train", str(home / "run.yaml")]) == 0
    return home / "out", err.getvalue()


def test_the_files_a_run_writes(run):
    out, _ = run
    assert sorted(p.name for p in out.iterdir()) == ["best", "checkpoints", "config.yaml", "data_stats.json",
                                                     "metrics.json", "metrics.jsonl", "model", "tensorboard",
                                                     "trainable.json"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"]  # keep_checkpoints: 1, besides best/
    step = out / "checkpoints" / "step-4"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pt", "sftlab_state.json"} <= \
        {p.name for p in step.iterdir()}
    assert not (step / "scaler.pt").exists()  # fp16 only
    state = json.loads((step / "sftlab_state.json").read_text())
    assert {"config", "step", "position", "environment"} <= set(state) and state["step"] == 4
    env = state["environment"]
    assert {"python", "packages", "device", "allocator"} <= set(env)
    assert set(env["packages"]) == {"sftlab", "torch", "transformers", "peft", "accelerate", "tokenizers"}
    card = (out / "model" / "README.md").read_text()
    assert f"torch {torch.__version__}" in card and "device: cpu" in card  # the library versions and device
    assert (out / "best" / "model.safetensors").is_file() and any((out / "tensorboard").iterdir())
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["warmup_steps"] == 2  # the resolved config


def test_the_rows_and_summaries(run):
    out, _ = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if not row.get("eval")]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    assert all({"loss", "lr", "tokens_per_s", "grad_norm", "epoch"} <= set(row) for row in steps)
    # lr is the rate after the step's scheduler update: warmup 2 of a linear schedule over 4 steps at 1e-4
    assert [row["lr"] for row in steps] == pytest.approx([5e-5, 1e-4, 5e-5, 0.0])
    assert [row["step"] for row in rows if row.get("eval")] == [2, 4]  # every N steps and at the end
    final = json.loads((out / "metrics.json").read_text())
    assert final["step"] == 4 and "eval_loss" in final and final["stopped"] == "completed"
    stats = json.loads((out / "data_stats.json").read_text())["train"]
    assert {"examples", "supervised_tokens", "dropped_too_long", "truncated", "truncated_tokens", "label_counts",
            "unknown_tokens", "unknown_first"} <= set(stats) and stats["examples"] == 24
    trainable = json.loads((out / "trainable.json").read_text())
    assert trainable["kind"] == "freeze" and 0 < trainable["trainable"] < trainable["total"]
    assert {"names", "notes", "settings"} <= set(trainable)
    assert all(name.startswith("model.layers.1.") for name in trainable["names"])  # last:1 of 2 layers


def test_the_run_log_without_a_terminal(run):
    out, err = run
    trainable = json.loads((out / "trainable.json").read_text())
    share = 100 * trainable["trainable"] / trainable["total"]
    assert f"trainable {trainable['trainable']:,} / {trainable['total']:,} ({share:.2f}%) [freeze]" in err
    assert "allocator: " in err  # named next to the trainable count
    progress = re.findall(r"^step (\d+)/4: loss \d+\.\d{4}, lr [\d.e-]+, \d+ tokens/s$", err, flags=re.M)
    assert progress[0] == "1" and progress[-1] == "4"  # the first logged step and the last


def test_the_saved_model_carries_the_template_and_loads(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = run[0] / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    recorded = json.loads((model_dir / "sftlab_template.json").read_text())
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert recorded["template"] == "chatml" and recorded["chat_template_matches"] is True
    assert recorded["stop_token_ids"][0] == end
    eos = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert isinstance(eos, list) and eos[0] == tokenizer.eos_token_id and end in eos  # model's EOS, then the template's
    AutoModelForCausalLM.from_pretrained(model_dir)


def test_command_line_values_are_read_as_yaml():
    cfg = load_config(None, ["train.max_steps=3", "output.dir=runs/a: b: c", "train.max_steps=null",
                             "model.path=[unclosed"], base=BASE)
    assert cfg.train.max_steps is None  # null unsets a key
    assert cfg.output.dir == "runs/a: b: c" and cfg.model.path == "[unclosed"  # text that is not valid YAML: a string
    assert load_config(None, ["output.dir=${HOME}/x"], base=BASE).output.dir == "${HOME}/x"  # not expanded


def _numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\d.])\d+\.\d+(?!\d)", text)


def test_quoted_measurements_are_those_of_the_benchmark_pages():
    """README's sft_vs_peers row and docs/train.md's allocator paragraph quote docs/benchmarks.md,
    benchmarks-history.md and speed-work.md: every ratio, rate and size they give is on those pages."""
    docs = ROOT / "docs"
    pages = "".join((docs / name).read_text() for name in ("benchmarks.md", "benchmarks-history.md", "speed-work.md"))
    readme = next(line for line in (ROOT / "README.md").read_text().splitlines() if "bench/sft_vs_peers.py" in line)
    train = (docs / "train.md").read_text()
    allocator = train[train.index("On the W1 benchmark workload"):train.index("With decay off")]
    quoted = _numbers(readme.split("last measured", 1)[1]) + _numbers(allocator)
    assert len(quoted) > 40
    assert [n for n in quoted if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", pages)] == []


def test_a_shipped_dataset_keeps_its_format_unless_a_list_item_sets_one():
    """"Data sources": data.format and data.columns do not apply to a shipped dataset; a list item's format does."""
    from sftlab.data.sources import load_examples
    from sftlab.errors import SftlabError

    base = {"model": {"path": "m"}, "data": {}}
    cfg = load_config(None, ["data.train=banking_chat_train", "data.format=alpaca", "data.columns={prompt: q}"], base=base)
    train, _ = load_examples(cfg.data, "sft")
    assert len(train) == 240 and all("messages" in example for example in train)
    cfg = load_config(None, ["data.train=[{path: banking_chat_train, format: alpaca}]"], base=base)
    with pytest.raises(SftlabError, match=r"banking_chat_train\.jsonl:1: missing required field 'instruction'"):
        load_examples(cfg.data, "sft")
