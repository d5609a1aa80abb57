"""Every built-in chat template file validates against `TemplateSpec`; malformed files are refused."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from sftlab.data.template_spec import TemplateSpec, builtin_template_names, load_builtin, parse_template_file
from sftlab.errors import SftlabError

TEMPLATE_DIR = resources.files("sftlab").joinpath("templates")
FILES = sorted(entry.name for entry in TEMPLATE_DIR.iterdir() if entry.name.endswith(".yaml"))


def _raw(name: str) -> dict:
    return yaml.safe_load(TEMPLATE_DIR.joinpath(name).read_text(encoding="utf-8"))


def test_the_six_builtin_templates_ship_as_files():
    assert FILES == ["chatml.yaml", "gemma.yaml", "llama3.yaml", "mistral.yaml", "plain.yaml", "raw.yaml"]
    assert builtin_template_names() == ["chatml", "gemma", "llama3", "mistral", "plain", "raw"]


@pytest.mark.parametrize("filename", FILES)
def test_every_file_validates_and_is_named_after_its_file(filename):
    spec = TemplateSpec.model_validate(_raw(filename))
    assert spec.name == filename.removesuffix(".yaml")
    assert spec.end_of_turn and spec.roles.assistant.suffix.startswith(spec.end_of_turn)
    assert spec.roles.assistant.prefix.startswith(spec.generation_prompt)


def test_names_and_aliases_are_unique_across_files():
    keys = [key for f in FILES for key in [_raw(f)["name"], *_raw(f).get("aliases", [])]]
    assert len(keys) == len(set(keys))
    assert load_builtin("qwen").name == "chatml"
    assert load_builtin("gemma3").name == "gemma"


@pytest.mark.parametrize("path, value, message", [
    (("colour",), "red", "colour"),                                  # unknown top-level key
    (("roles", "user", "prefx"), "x", "roles.user.prefx"),           # unknown nested key
    (("roles", "tool"), {"prefix": ""}, "roles.tool"),               # unknown role
    (("system_placement",), "somewhere", "system_placement"),        # not an allowed value
    (("end_of_turn",), "", "end_of_turn"),                           # must not be empty
    (("generation_prompt",), "<|im_start|>bot\n", "generation_prompt must be a prefix"),
    (("end_of_turn",), "<|endoftext|>", "must start with end_of_turn"),
    (("bos",), "{bos_tokn}", "unknown placeholder {bos_tokn}; known: {bos_token}, {eos_token}, {tokenizer_bos}"),
])
def test_malformed_files_are_refused_with_the_key(path, value, message):
    raw = _raw("chatml.yaml")
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(SftlabError, match="bad.yaml: .*" + message.replace("|", r"\|")):
        parse_template_file("bad.yaml", yaml.safe_dump(raw))


def test_system_placement_must_agree_with_roles():
    raw = _raw("gemma.yaml")
    raw["system_placement"] = "turn"
    with pytest.raises(SftlabError, match="needs roles.system"):
        parse_template_file("g.yaml", yaml.safe_dump(raw))
    raw = _raw("chatml.yaml")
    raw["system_placement"] = "merge_first_user"
    with pytest.raises(SftlabError, match="takes no roles.system"):
        parse_template_file("c.yaml", yaml.safe_dump(raw))


def test_invalid_yaml_names_the_file():
    with pytest.raises(SftlabError) as caught:
        parse_template_file("broken.yaml", "name: x\naliases: [unclosed\n")
    assert str(caught.value) == "broken.yaml:3: not valid YAML (expected ',' or ']', but got '<stream end>')"
