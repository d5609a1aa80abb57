"""`sftlab.data.option_names`: the formats' config-key names as command-line options, for `sftlab eval` and the
data commands (they lived in `sftlab.datawork.records`, which `sftlab eval` had to import for them)."""

import json
import subprocess
import sys

import pytest

from sftlab.data.option_names import option_errors, option_names
from sftlab.errors import SftlabError
from sftlab.models.tiny import save_tiny


def test_option_names_translates_every_config_key():
    message = ("a.jsonl:2: column 'category' (data.columns.label) not found; data.columns.text is unset, "
               "data.columns maps none, data.format 'label' needs train.stage cls; see run/data.format.md")
    assert option_names(message, "--in-format", "--map") == (
        "a.jsonl:2: column 'category' (--map label=category) not found; --map text=COLUMN is unset, "
        "--map maps none, --in-format 'label' needs --stage cls; see run/data.format.md")
    assert option_names("data.columns.label and data.format") == "--columns label=COLUMN and --format"


def test_option_errors_renames_only_sftlab_errors():
    with pytest.raises(SftlabError, match=r"^x:1: unknown --format 'foo'$"):
        with option_errors():
            raise SftlabError("x:1: unknown data.format 'foo'")
    with pytest.raises(ValueError, match="data.format"):
        with option_errors():
            raise ValueError("data.format")


def test_eval_names_its_options_without_importing_datawork(tmp_path):
    """`sftlab eval` borrowed option_errors from sftlab.datawork.records; it now reads it beside the formats."""
    model = save_tiny("qwen2", tmp_path / "qwen2", hidden=32, layers=1)
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps({"text": "hi", "category": "a"}) + "\n", encoding="utf-8")
    script = (
        "import sys\n"
        "from sftlab.errors import SftlabError\n"
        "from sftlab.eval import run, tasks\n"
        "try:\n"
        f"    run.evaluate({str(model)!r}, {str(data)!r}, 'labels', tasks.EvalOptions(), {str(tmp_path / 'o')!r},\n"
        "                 columns={'label': 'intent'})\n"
        "except SftlabError as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m in sys.modules if m.startswith('sftlab.datawork')))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    error, modules = out.strip().splitlines()
    assert "column 'intent' (--columns label=intent) not found" in error and "data.columns" not in error
    assert modules == "[]"
