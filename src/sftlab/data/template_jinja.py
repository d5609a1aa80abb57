"""A built-in chat template (`sftlab/templates/*.yaml`) as a Jinja `chat_template` for `apply_chat_template`.

    jinja = faithful_jinja(tokenizer, "chatml")   # None when the Jinja would not render what sftlab renders

The Jinja is generated from the template's `TemplateSpec`, with the tokenizer's BOS/EOS text written in as
literals, so that other tools (a Hugging Face pipeline, vLLM, llama.cpp) render conversations and the
generation prompt exactly as `sftlab.data.templates` rendered them in training: the same role prefixes and
suffixes, content trimming, system placement (a turn, or merged into the first user turn) and errors for
messages the template cannot place. Every literal is emitted inside `{{ ... }}`, so the whitespace options of
transformers' Jinja environment (trim_blocks, lstrip_blocks) change nothing. `faithful_jinja` renders probe
conversations both ways and returns None on any difference: a wrong template is never handed out.
"""

from __future__ import annotations

from sftlab.data.template_spec import TemplateSpec
from sftlab.data.templates import BuiltinFormat, chat_format, check_messages
from sftlab.errors import SftlabError

# Conversations rendered both ways before a generated Jinja template is trusted.
_PROBES = (
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    [{"role": "system", "content": " Be terse. "}, {"role": "user", "content": " One? "},
     {"role": "assistant", "content": " 1 \n"}, {"role": "user", "content": "Two?"},
     {"role": "assistant", "content": "2"}],
    [{"role": "user", "content": "关于'引号' \\ {{ x }} 的通知"}, {"role": "assistant", "content": "好的。"}],
)


def _literal(text: str) -> str:
    """`text` as a Jinja string literal (Jinja decodes backslash escapes in literals like Python)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def _content(spec: TemplateSpec) -> str:
    return "(message['content'] | trim)" if spec.trim_content else "message['content']"


def _turn(spec: TemplateSpec, role: str, fill, merged: bool) -> str:
    """The output expression of one message of `role` (`merged`: the system text may open the turn)."""
    fmt = getattr(spec.roles, role)
    head = _literal(fill(fmt.prefix)) + (" + (merged if loop.first else '')" if merged else "")
    return "{{ " + head + " + " + _content(spec) + " + " + _literal(fill(fmt.suffix)) + " }}"


def builtin_jinja(spec: TemplateSpec, fill) -> str:
    """Jinja source rendering `spec`; `fill(text)` substitutes the placeholders ({bos_token}, ...)."""
    merge = spec.system_placement == "merge_first_user"
    out = ["{{ " + _literal(fill(spec.bos)) + " }}" if spec.bos else ""]
    if merge:
        out.append(
            "{% if messages and messages[0]['role'] == 'system' %}"
            "{% set merged = messages[0]['content'] + " + _literal(spec.system_separator) + " %}"
            "{% set loop_messages = messages[1:] %}"
            "{% if loop_messages and loop_messages[0]['role'] != 'user' %}"
            "{{ raise_exception(" + _literal(f"template {spec.name} merges the system message into a following "
                                             "user turn") + ") }}"
            "{% endif %}{% else %}{% set merged = '' %}{% set loop_messages = messages %}{% endif %}")
    else:
        out.append("{% set loop_messages = messages %}")
    out.append("{% for message in loop_messages %}")
    out.append("{% if message['role'] == 'user' %}" + _turn(spec, "user", fill, merge))
    out.append("{% elif message['role'] == 'assistant' %}" + _turn(spec, "assistant", fill, merge))
    if spec.roles.system is not None:
        out.append("{% elif message['role'] == 'system' %}" + _turn(spec, "system", fill, False))
    else:
        out.append("{% elif message['role'] == 'system' %}{{ raise_exception(" + _literal(
            f"template {spec.name} allows a system message only as the first message") + ") }}")
    out.append("{% else %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}{% endfor %}")
    out.append("{% if add_generation_prompt %}{{ " + _literal(fill(spec.generation_prompt)) + " }}{% endif %}")
    return "".join(out)


def _renders_alike(tokenizer, fmt: BuiltinFormat, jinja: str) -> bool:
    """The Jinja renders every probe (with and without the generation prompt) as `fmt` does."""
    for probe in _PROBES:
        messages = check_messages(probe)
        for generation in (False, True):
            ours = fmt.prompt_text(messages, None) if generation else fmt.render(messages, set(), None).text
            theirs = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False,
                                                   add_generation_prompt=generation)
            if ours != theirs:
                return False
    return True


def faithful_jinja(tokenizer, template: str) -> str | None:
    """Jinja for the built-in `template` bound to `tokenizer`, or None when it would not render the same text."""
    try:
        fmt = chat_format(tokenizer, template)
    except SftlabError:
        return None
    if not isinstance(fmt, BuiltinFormat):
        return None
    jinja = builtin_jinja(fmt.spec, fmt.fill)  # as training fills the strings
    try:
        return jinja if _renders_alike(tokenizer, fmt, jinja) else None
    except Exception:  # a Jinja syntax or render error: not faithful
        return None
