"""Acceptance walk of run-config loading and the CLI around it: duplicate YAML keys, config paths that are not
files, malformed overrides, non-finite numbers, groups given as scalars, the documented list items of data.train,
the example headers and the top-level help."""

import re
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.config import load_config
from sftlab.errors import SftlabError

BASE = {"model": {"path": "m"}, "data": {"train": "a.jsonl"}}
ROOT = Path(__file__).resolve().parent.parent


def _error(tmp_path, text: str) -> str:
    config = tmp_path / "run.yaml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(SftlabError) as err:
        load_config(config)
    assert "\n" not in str(err.value)
    return str(err.value).removeprefix(f"{config}")


def _override_error(overrides: list[str]) -> str:
    """The one-line error of loading BASE with `overrides`."""
    with pytest.raises(SftlabError) as err:
        load_config(None, overrides, base=BASE)
    return str(err.value)


@pytest.mark.parametrize("text, message", [
    ("model: {path: m}\ndata: {train: a}\ntrain:\n  lr: 0.1\n  lr: 0.2\n",
     ":5: duplicate key 'train.lr' (first given on line 4); give each key once"),
    ("model: {path: m}\ndata: {train: a}\ntrain:\n  lr: 0.1\ntrain:\n  batch_size: 3\n",
     ":5: duplicate key 'train' (first given on line 3); give each key once"),
    ("model: {path: m}\ndata:\n  train:\n    - path: a\n      weight: 1\n      weight: 2\n",
     ":6: duplicate key 'data.train.0.weight' (first given on line 5); give each key once"),
], ids=["key", "group", "list-item"])
def test_a_key_given_twice_in_the_yaml_is_an_error_naming_both_lines(tmp_path, text, message):
    # YAML keeps the last one silently: a second `train:` group dropped the first group's train.lr
    assert _error(tmp_path, text) == message


def test_aliases_and_merge_keys_are_not_duplicates(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {path: &p m}\ndata: {train: *p, validation: *p}\n"
                      "eval: {<<: {batch_size: 2, max_samples: 3}, batch_size: 4}\n", encoding="utf-8")
    cfg = load_config(config)
    assert (cfg.data.train, cfg.data.validation, cfg.eval.batch_size, cfg.eval.max_samples) == ("m", "m", 4, 3)


def test_a_config_path_that_is_a_directory_says_so(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: a directory, not a run config file\n"


@pytest.mark.parametrize("item", ["=3", "train..lr=1", ".lr=1", "train.=1", "train.lr"])
def test_an_override_with_an_empty_key_part_is_refused_as_malformed(item):
    # "=3" read as unknown key '(top level)'; "train..lr=1" as unknown key 'train.'
    with pytest.raises(SftlabError, match=re.escape(f"override {item!r} must look like key.sub=value")):
        load_config(None, [item], base=BASE)


@pytest.mark.parametrize("override, value", [("train.lr=.inf", "inf"), ("train.epochs=.inf", "inf"),
                                             ("train.weight_decay=.nan", "nan"), ("strategy.auto.budget=.inf", "inf")])
def test_infinite_and_nan_numbers_are_refused_naming_the_key(override, value):
    key = override.partition("=")[0]
    with pytest.raises(SftlabError, match=re.escape(f"config: {key}: Input should be a finite number (got {value})")):
        load_config(None, [override], base=BASE)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=true", "train.batch_size: Input should be a valid integer (got True)"),
    ("train.batch_size='8'", "train.batch_size: Input should be a valid integer (got '8')"),
    ("train.max_steps=10.0", "train.max_steps: Input should be a valid integer (got 10.0)"),
    ("eval.k=[1, true]", "eval.k.1: Input should be a valid integer (got True)"),
    ("data.packing=1", "data.packing: Input should be a valid boolean (got 1)"),
    ("train.epochs=true", "train.epochs: expected a number, got True"),
    ("train.lr=false", "train.lr: expected a number, got False"),
])
def test_booleans_strings_and_floats_are_not_read_as_integers_or_booleans(override, message):
    # pydantic's lax mode took `true` as 1 (or 1.0), '8' as 8, 10.0 as 10 and 1 as true
    assert _override_error([override]) == f"config: {message}"


def test_a_float_key_still_takes_pyyamls_dotless_exponent_string():
    cfg = load_config(None, ["train.lr=1e-4", "train.epochs=2"], base=BASE)  # PyYAML reads 1e-4 as a string
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 2.0


@pytest.mark.parametrize("override, message", [
    ("model=m", "model: expected a mapping of keys, got 'm'"),
    ("data.columns=[a, b]", "data.columns: expected a mapping of keys, got ['a', 'b']"),
])
def test_a_group_or_mapping_given_as_a_scalar_names_what_was_expected(override, message):
    # was "Input should be a valid dictionary or instance of ModelConfig"
    assert _override_error([override]) == f"config: {message}"


def test_list_and_mapping_values_on_the_command_line():
    cfg = load_config(None, ["strategy.lora.target_modules=[q_proj, v_proj]", "data.columns={prompt: q}",
                             "data.train=[a.jsonl, {path: b.jsonl, weight: 2}]", "output.dir=$HOME/x"], base=BASE)
    assert cfg.strategy.lora.target_modules == ["q_proj", "v_proj"] and cfg.data.columns == {"prompt": "q"}
    assert cfg.data.train[1].weight == 2 and cfg.output.dir == "$HOME/x"  # documented: no variable expansion


def test_unrecognized_arguments_name_only_the_bad_ones(capsys):
    with pytest.raises(SystemExit):
        main(["train", "run.yaml", "--resume", "train.lr=1e-4", "foo"])
    assert capsys.readouterr().err == "error: sftlab train: unrecognized argument foo; see sftlab train --help\n"


def test_top_level_help_lists_the_tiny_models_under_model(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("model "))
    assert "tiny" in line


def test_the_reference_documents_the_keys_of_a_data_train_list_item():
    from sftlab.config.reference import markdown_reference

    text = markdown_reference()
    for key in ("path", "format", "weight", "columns"):
        assert f"| `data.train[].{key}` |" in text
    assert "| `data.train[].weight` | float | `1.0` | sampling weight" in text


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: p.name)
def test_an_examples_header_runs_that_very_file(path):
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert re.search(rf"sftlab train {re.escape(path.relative_to(ROOT).as_posix())}(\s|$)", "\n".join(header)), path


def test_every_yaml_file_sftlab_reads_refuses_a_duplicate_key(tmp_path):
    """Serve settings, planner thresholds, feature specs and the board's configs go through `read_yaml_mapping`,
    which let the last of two equal keys win silently while run configs refused it."""
    from sftlab.io import read_yaml_mapping

    settings = tmp_path / "serve.yaml"
    settings.write_text("port: 8000\nhost: 127.0.0.1\nport: 9000\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=r"serve.yaml:3: duplicate key 'port' \(first given on line 1\)"):
        read_yaml_mapping(settings, "a mapping of serve settings")
    settings.write_text("base: &b {port: 1}\nother:\n  <<: *b\n  host: x\n", encoding="utf-8")
    assert read_yaml_mapping(settings, "a mapping")["other"] == {"port": 1, "host": "x"}  # merge keys still work


@pytest.mark.parametrize("kind", ["full", "freeze", "auto"])
def test_4bit_weights_with_a_strategy_other_than_lora_is_refused(kind):
    # the flag was silently ignored: the run trained in full precision
    assert _override_error([f"strategy.kind={kind}", "strategy.lora.quantize_4bit=true"]) == (
        f"config: strategy.lora.quantize_4bit: 4-bit base weights (QLoRA) are for strategy.kind lora, not {kind}; "
        "set strategy.kind=lora or strategy.lora.quantize_4bit=false")


@pytest.mark.parametrize("metric, mode", [("macro_f1", "max"), ("ndcg@5", "max"), ("loss", "min"),
                                          ("perplexity", "min"), ("unparseable", "min"), ("accuracy", "max")])
def test_eval_mode_follows_the_metric_by_default(metric, mode):
    # the default was min for every metric: with eval.metric macro_f1, best/ kept the worst checkpoint
    cfg = load_config(None, [f"eval.metric={metric}"], base=BASE)
    assert cfg.eval.mode == "auto" and cfg.eval.resolved_mode == mode


def test_an_eval_mode_that_contradicts_the_metric_is_refused():
    assert _override_error(["eval.metric=macro_f1", "eval.mode=min"]) == (
        "config: eval.mode=min: eval.metric macro_f1 is better higher; leave eval.mode out (auto) or set it to max")
    assert load_config(None, ["eval.metric=macro_f1", "eval.mode=max"], base=BASE).eval.resolved_mode == "max"


def test_integer_labels_in_data_labels_are_read_as_their_text():
    # labels in the data may be integers (turned into text); in data.labels they were refused
    assert load_config(None, ["data.labels=[2, 0, 1]"], base=BASE).data.labels == ["2", "0", "1"]


@pytest.mark.parametrize("labels, message", [
    ('["0", "1", "1", "2"]', "data.labels: '1' is listed twice (items 1 and 2); each label once"),
    ('[a, "  "]', "data.labels: item 1 is empty; a label needs a name"),
    ("[a, true]", "data.labels.1: Input should be a valid string (got True)"),
])
def test_a_repeated_or_empty_label_in_data_labels_is_refused(labels, message):
    # a repeated label made a head row that never trained; an empty one an extra class
    assert _override_error([f"data.labels={labels}"]) == f"config: {message}"
