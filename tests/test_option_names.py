"""`sftlab.data.option_names`: the formats' config-key names as command-line options, and the `--columns` parser,
for `sftlab eval` and the data commands (they lived in `sftlab.datawork.records` and `sftlab.datawork.handlers`,
which `sftlab eval` had to import for them)."""

import json
import subprocess
import sys

import pytest

from sftlab.data.option_names import option_errors, option_names, parse_columns
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


def _model_and_data(tmp_path):
    """A one-layer tiny qwen2 and a labels file whose label column is `category`."""
    model = save_tiny("qwen2", tmp_path / "qwen2", hidden=32, layers=1)
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps({"text": "hi", "category": "a"}) + "\n", encoding="utf-8")
    return model, data


def test_eval_names_its_options_without_importing_datawork(tmp_path):
    """`sftlab eval` borrowed option_errors from sftlab.datawork.records; it now reads it beside the formats."""
    model, data = _model_and_data(tmp_path)
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


def test_parse_columns_reads_canonical_equals_column():
    from sftlab.datawork import handlers

    assert parse_columns(["label=category", " text = sentence "]) == {"label": "category", "text": "sentence"}
    assert parse_columns(None) is None and parse_columns([]) is None
    with pytest.raises(SftlabError, match=r"^--columns 'label' must look like canonical=column \(e.g. "
                                          r"label=category\)$"):
        parse_columns(["label"])
    assert handlers.parse_columns is parse_columns  # the data commands read the same parser


def test_eval_command_reads_columns_without_importing_datawork(tmp_path):
    """`sftlab eval --columns` borrowed parse_columns from sftlab.datawork.handlers; it now reads it beside the
    formats' option names."""
    model, data = _model_and_data(tmp_path)
    script = (
        "import sys\n"
        "from sftlab.cli import main\n"
        f"args = ['eval', {str(model)!r}, '--data', {str(data)!r}, '--task', 'labels',\n"
        f"        '--out', {str(tmp_path / 'o')!r}]\n"
        "print(main(args + ['--columns', 'label']), main(args + ['--columns', 'label=intent']))\n"
        "print(sorted(m for m in sys.modules if m.startswith('sftlab.datawork')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    codes, modules = done.stdout.strip().splitlines()[-2:]
    assert codes == "2 2" and modules == "[]"
    assert "--columns 'label' must look like canonical=column" in done.stderr
    assert "column 'intent' (--columns label=intent) not found" in done.stderr
