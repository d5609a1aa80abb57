"""The chat template and stop tokens a saved model carries, so that its directory alone is enough to chat with it.

    template = trained_template(cfg)                       # "chatml", "auto", ... or None (cls, plain pt)
    with carry_chat_template(model, tokenizer, template) as record:
        model.save_pretrained(out); tokenizer.save_pretrained(out)
    write_template_record(out, record)                     # out/sftlab_template.json
    read_template_record(out)                              # "chatml": read by sftlab.models.trained, the one reader
                                                           # of a model's trained settings (serve, generate, eval, export)

Inside `carry_chat_template`, and only there (the live objects are restored afterwards):
- `model.generation_config.eos_token_id` is a list: its own ids, then the template's end-of-turn and other
  stop token ids (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, ...), so a plain `generate`, a pipeline or vLLM
  stops where sftlab does. A PEFT model saves only its adapter, so there is no generation config to change.
- With a built-in template (`sftlab/templates/*.yaml`, or `auto`'s chatml fallback for a tokenizer without a
  chat template), `tokenizer.chat_template` becomes its Jinja rendition (`sftlab.data.template_jinja`) when
  that renders exactly what sftlab renders; otherwise the tokenizer's template is left as it is and only the
  record names the template. A template that came from the tokenizer itself (`auto`) is left alone.
`sftlab_template.json` records the template name, whether the tokenizer's chat_template renders it, and the
stop token ids. Vision-language models are left alone: their processor's chat template is what they train with.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from sftlab.errors import SftlabError
from sftlab.io import read_json

TEMPLATE_RECORD = "sftlab_template.json"


def trained_template(config) -> str | None:
    """The chat template a run trained with (a RunConfig or its dict): `data.template` for sft, and for pt when
    it names a built-in (pt trains on raw text; its `auto` is no template); None otherwise (cls)."""
    if config is None:
        return None
    if not isinstance(config, dict):
        config = config.model_dump(mode="json")
    stage = (config.get("train") or {}).get("stage", "sft")
    template = (config.get("data") or {}).get("template") or "auto"
    if stage == "sft" or (stage == "pt" and template != "auto"):
        return str(template)
    return None


def _is_vision(model) -> bool:
    from sftlab.vision.load import is_vision_model_dir, source_directory

    source = source_directory(model)
    return source is not None and is_vision_model_dir(source)


def _plan(tokenizer, template: str) -> tuple[dict, str | None] | None:
    """(record, Jinja to write or None) for `template` on `tokenizer`; None when the tokenizer cannot render it."""
    from sftlab.data.template_jinja import faithful_jinja
    from sftlab.data.templates import TokenizerFormat, chat_format

    try:
        fmt = chat_format(tokenizer, template)
    except SftlabError:  # a pt run naming a template this tokenizer has no tokens for: nothing to carry
        return None
    stops = [int(i) for i in fmt.stop_ids]
    if isinstance(fmt, TokenizerFormat):
        return {"template": "auto", "chat_template_matches": True, "stop_token_ids": stops}, None
    jinja = faithful_jinja(tokenizer, template)
    record = {"template": fmt.spec.name, "chat_template_matches": jinja is not None, "stop_token_ids": stops}
    return record, jinja


def _eos_with(old, stops: list[int]) -> list[int]:
    ids = [old] if isinstance(old, int) else [int(i) for i in old or []]
    return ids + [i for i in stops if i not in ids]


@contextlib.contextmanager
def carry_chat_template(model, tokenizer, template: str | None) -> Iterator[dict | None]:
    """Within: `tokenizer` and `model` as the saved copy should carry `template`; yields the record (or None)."""
    plan = _plan(tokenizer, template) if template is not None and not _is_vision(model) else None
    if plan is None:
        yield None
        return
    record, jinja = plan
    generation = None if hasattr(model, "peft_config") else getattr(model, "generation_config", None)
    old_template, old_eos = tokenizer.chat_template, getattr(generation, "eos_token_id", None)
    try:
        if jinja is not None:
            tokenizer.chat_template = jinja
        if generation is not None:
            generation.eos_token_id = _eos_with(old_eos, record["stop_token_ids"])
        yield record
    finally:
        tokenizer.chat_template = old_template
        if generation is not None:
            generation.eos_token_id = old_eos


def write_template_record(directory: str | Path, record: dict | None) -> None:
    """Write `directory/sftlab_template.json` (nothing when `record` is None)."""
    from sftlab.io import atomic_write_json

    if record is not None:
        atomic_write_json(Path(directory) / TEMPLATE_RECORD, record)


def read_template_record(directory: str | Path) -> str | None:
    """The template name recorded in `directory/sftlab_template.json`, or None when there is no record."""
    path = Path(directory) / TEMPLATE_RECORD
    if not path.is_file():
        return None
    raw = read_json(path)
    template = raw.get("template") if isinstance(raw, dict) else None
    if not isinstance(template, str) or not template:
        raise SftlabError(f"{path}: template: expected the name of a chat template")
    return template
