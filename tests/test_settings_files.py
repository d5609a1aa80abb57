"""Every YAML settings file (run config, serve config, planner thresholds, a saved run's config for the board and
for serve/eval/export) is read by `sftlab.io.read_yaml_mapping`, every JSON record beside a model by
`sftlab.io.read_json`: a broken file is one line naming it."""

import pytest

from sftlab.board.runs import RunManager
from sftlab.config import load_config
from sftlab.errors import SftlabError
from sftlab.io import read_yaml_mapping
from sftlab.models.trained import trained_settings
from sftlab.plan.recommend import load_thresholds
from sftlab.serve.config import load_settings

BROKEN = {
    "bad YAML": ("a: [1, 2\nb: 3\n", r"f\.yaml:2: not valid YAML \(expected ',' or '\]', but got ':'\)$"),
    "a list": ("- a\n- b\n", r"f\.yaml: expected .+, got list$"),
    "a scalar": ("just words\n", r"f\.yaml: expected .+, got str$"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_reader_names_the_file_in_one_line(tmp_path, case):
    text, message = BROKEN[case]
    path = tmp_path / "f.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SftlabError, match=message) as caught:
        read_yaml_mapping(path, "a mapping of things")
    assert "\n" not in str(caught.value)


def test_empty_file_is_an_empty_mapping_and_bytes_that_are_not_utf8_are_named(tmp_path):
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    assert read_yaml_mapping(tmp_path / "empty.yaml", "x") == {}
    (tmp_path / "latin.yaml").write_bytes("a: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SftlabError, match=r"latin\.yaml: not UTF-8 text$"):
        read_yaml_mapping(tmp_path / "latin.yaml", "x")


def _broken_run(tmp_path):
    run = tmp_path / "runs" / "exp"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {template: [chatml\n", encoding="utf-8")
    return run


def test_every_reader_gives_the_same_line(tmp_path):
    """The run config, serve config, thresholds, the board's runs list and the trained-settings reader."""
    bad = tmp_path / "f.yaml"
    bad.write_text("a: [1, 2\nb: 3\n", encoding="utf-8")
    expected = f"{bad}:2: not valid YAML (expected ',' or ']', but got ':')"
    for read in (lambda: load_config(bad), lambda: load_settings(bad), lambda: load_thresholds(bad)):
        with pytest.raises(SftlabError) as caught:
            read()
        assert str(caught.value) == expected
    run = _broken_run(tmp_path)
    for read in (lambda: RunManager(tmp_path / "runs").summary("exp"), lambda: trained_settings(run)):
        with pytest.raises(SftlabError) as caught:
            read()
        assert str(caught.value) == f"{run / 'config.yaml'}:2: not valid YAML (expected ',' or ']', but got '<stream end>')"


def test_json_records_are_read_by_one_reader(tmp_path):
    """config.json, adapter_config.json and sftlab's records beside a model: one line naming the file and line."""
    from sftlab.io import read_json
    from sftlab.models.chat_files import read_template_record
    from sftlab.models.load import adapter_base, check_model_dir

    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "adapter_config.json", "sftlab_template.json"):
        (model / name).write_text('{"a": 1,\n "b": }\n', encoding="utf-8")
    for read, name in ((lambda: check_model_dir(model), "config.json"),
                       (lambda: adapter_base(model / "adapter_config.json"), "adapter_config.json"),
                       (lambda: read_template_record(model), "sftlab_template.json")):
        with pytest.raises(SftlabError) as caught:
            read()
        assert str(caught.value) == f"{model / name}:2: not valid JSON (Expecting value)"
    (model / "adapter_config.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(SftlabError, match="base_model_name_or_path is missing"):
        adapter_base(model / "adapter_config.json")  # not a mapping: no base named, not a traceback
    (model / "latin.json").write_bytes('{"a": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(SftlabError, match=r"latin\.json: not UTF-8 text$"):
        read_json(model / "latin.json")


def test_feature_specs_and_kb_templates_use_the_same_reader(tmp_path):
    from sftlab.datawork.features import load_spec
    from sftlab.datawork.kb import load_templates

    bad = tmp_path / "f.yaml"
    bad.write_text("a: [1, 2\nb: 3\n", encoding="utf-8")
    for read in (lambda: load_spec(bad), lambda: load_templates(bad, "en")):
        with pytest.raises(SftlabError) as caught:
            read()
        assert str(caught.value) == f"{bad}:2: not valid YAML (expected ',' or ']', but got ':')"
    listed = tmp_path / "list.yaml"
    listed.write_text("- numeric\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=r"list\.yaml: expected a feature spec \(a mapping: .+\), got list$"):
        load_spec(listed)
    with pytest.raises(SftlabError, match=r"list\.yaml: expected a mapping with a top-level 'templates' list, got list$"):
        load_templates(listed, "en")


def test_unknown_serve_setting_gets_a_suggestion(tmp_path):
    """It said 'prot: Extra inputs are not permitted', where a run config's unknown key names the closest one."""
    (tmp_path / "serve.yaml").write_text("prot: 8080\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=r"serve\.yaml: prot: unknown key; did you mean 'port'\?$"):
        load_settings(tmp_path / "serve.yaml")
    (tmp_path / "serve.yaml").write_text("zzz: 1\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=r"serve\.yaml: zzz: unknown key; known keys: host, port, model_name, "):
        load_settings(tmp_path / "serve.yaml")
