"""Built-in chat templates as data: the schema of `sftlab/templates/*.yaml` and reading those files.

    spec = load_builtin("qwen")                 # a TemplateSpec, by name or alias
    names = builtin_template_names()            # ["chatml", "gemma", "llama3", ...]
    spec = parse_template_file("my.yaml", text) # one-line SftlabError naming the key on a bad file

Rendering with a spec is `sftlab.data.templates`' job.
"""

from __future__ import annotations

import difflib
import functools
import re
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sftlab.errors import SftlabError
from sftlab.io import yaml_error_line


PLACEHOLDERS = ("{bos_token}", "{eos_token}", "{tokenizer_bos}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleFormat(_Strict):
    """Text around one message of a role: prefix + content + suffix."""

    prefix: str = ""
    suffix: str = ""


class RoleFormats(_Strict):
    """Per-role formats; `system` is absent when the system text is merged into the first user turn."""

    system: RoleFormat | None = None
    user: RoleFormat
    assistant: RoleFormat


class TemplateSpec(_Strict):
    """One built-in chat template file.

    Strings may contain {bos_token} / {eos_token} (the tokenizer's) and {tokenizer_bos}: the BOS token where the
    tokenizer puts one before plain text (as pt documents start), nothing where it does not.
    """

    name: str
    aliases: list[str] = Field(default_factory=list)
    description: str
    bos: str = Field("", description="text once at the start of every conversation")
    trim_content: bool = Field(False, description="strip message contents (a merged system text stays verbatim)")
    system_placement: Literal["turn", "merge_first_user"] = "turn"
    system_separator: str = Field("\n\n", description="merge_first_user: between the system text and the user text")
    roles: RoleFormats
    generation_prompt: str = Field(..., description="text that asks for an answer; a prefix of roles.assistant.prefix")
    end_of_turn: str = Field(..., min_length=1, description="the token that closes an answer; supervised")
    stop_tokens: list[str] = Field(default_factory=list, description="more tokens that stop generation, if the tokenizer has them")

    @model_validator(mode="after")
    def _known_placeholders(self) -> "TemplateSpec":
        unknown = sorted(set(re.findall(r"\{[A-Za-z_]+\}", self.model_dump_json())) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown placeholder {unknown[0]}; known: {', '.join(PLACEHOLDERS)}")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "TemplateSpec":
        if not self.roles.assistant.prefix.startswith(self.generation_prompt):
            raise ValueError("generation_prompt must be a prefix of roles.assistant.prefix")
        if not self.roles.assistant.suffix.startswith(self.end_of_turn):
            raise ValueError("roles.assistant.suffix must start with end_of_turn")
        if self.system_placement == "turn" and self.roles.system is None:
            raise ValueError("system_placement 'turn' needs roles.system")
        if self.system_placement == "merge_first_user" and self.roles.system is not None:
            raise ValueError("system_placement 'merge_first_user' takes no roles.system")
        return self


@functools.lru_cache(maxsize=1)
def _builtin_specs() -> dict[str, TemplateSpec]:
    """Every built-in template by name and alias (read once from the package's templates/*.yaml)."""
    specs: dict[str, TemplateSpec] = {}
    for entry in sorted(resources.files("sftlab").joinpath("templates").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            spec = parse_template_file(entry.name, entry.read_text(encoding="utf-8"))
            for key in [spec.name, *spec.aliases]:
                specs[key] = spec
    return specs


def parse_template_file(filename: str, text: str) -> TemplateSpec:
    """Validate one template file's YAML text; problems raise a one-line SftlabError naming the key."""
    try:
        raw = yaml.safe_load(text)
        return TemplateSpec.model_validate(raw)
    except yaml.YAMLError as exc:
        raise SftlabError(yaml_error_line(filename, exc)) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err.get("loc", ())) or "(top level)"
        raise SftlabError(f"{filename}: {key}: {err['msg'].removeprefix('Value error, ')}") from None


def builtin_template_names() -> list[str]:
    """Canonical names of the built-in templates (aliases not included), sorted."""
    return sorted({spec.name for spec in _builtin_specs().values()})


def load_builtin(name: str) -> TemplateSpec:
    """The built-in template called `name` (or one of its aliases)."""
    specs = _builtin_specs()
    if name not in specs:
        known = ", ".join(f"{n} (alias {', '.join(specs[n].aliases)})" if specs[n].aliases else n
                          for n in builtin_template_names())
        close = difflib.get_close_matches(str(name).lower(), ["auto", *specs], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SftlabError(f"data.template: unknown chat template {name!r}; {hint}known: auto, {known}")
    return specs[name]
