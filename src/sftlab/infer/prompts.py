"""Prompts for inference rendered exactly as training renders them, and the token ids that end an answer.

Chat prompts go through `sftlab.data.templates` (the code that renders training conversations), so an
answer is generated after the same generation prompt the model was trained to continue, and stops at
the same end-of-turn token it was trained to write.
"""

from __future__ import annotations


def render_chat(tokenizer, messages: list[dict], template: str = "auto", src: str | None = None) -> list[int]:
    """Prompt ids for `messages` followed by the assistant generation prompt (raises SftlabError on bad messages)."""
    from sftlab.data.templates import render_prompt

    return render_prompt(tokenizer, messages, template=template, src=src)


def render_text(tokenizer, text: str) -> list[int]:
    """Prompt ids for a raw text continuation (no chat template), with the tokenizer's BOS when it adds one."""
    return list(tokenizer(text)["input_ids"])


def stop_token_ids(tokenizer, model=None, template: str = "auto") -> set[int]:
    """The template's end-of-turn and EOS ids, plus the EOS ids of the model's generation config."""
    from sftlab.data.templates import stop_token_ids as template_stops

    ids = set(template_stops(tokenizer, template))
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(i for i in (eos if isinstance(eos, list) else [eos]) if i is not None)
    return {int(i) for i in ids}
