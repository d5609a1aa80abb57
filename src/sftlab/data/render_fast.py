"""Render plain conversations with a tokenizer's own chat template as `apply_chat_template(tokenize=False)` does,
without its per-call work around the template.

    render = direct_renderer(tokenizer)        # None when the direct path does not apply to this tokenizer
    text = render(messages, tools, generation)  # None for input it does not take: call apply_chat_template then

transformers compiles a chat template once (cached) and renders it with `messages`, `tools`, `documents`,
`add_generation_prompt` and the tokenizer's named special tokens (`bos_token`, `eos_token`, ...); around that, each
call looks up the template, normalises the messages and copies every value into plain types. `direct_renderer`
renders the template transformers compiled with those same variables, and only where that cannot differ:
- the tokenizer uses transformers' own `apply_chat_template` (not a subclass's nor an instance's) and its one string
  `chat_template`, which compiles;
- the template reads no variable but those and the environment's globals (`raise_exception`, `strftime_now`, ...);
- each message is exactly `{"role": str, "content": str}` (no tools, tool calls, reasoning fields, None values,
  str subclasses nor media, which transformers converts), and there is no tools list.
It also renders probe conversations both ways before it is used, and gives None when any differs. For anything
else the caller uses `apply_chat_template`.
"""

from __future__ import annotations

from collections.abc import Callable

_PROBES = (
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    [{"role": "system", "content": " Be terse. "}, {"role": "user", "content": " One? "},
     {"role": "assistant", "content": " 1 \n"}, {"role": "user", "content": "Two?"}],
)

Renderer = Callable[[list, "list | None", bool], "str | None"]


def _compiled(tokenizer):
    """The template transformers compiles for `tokenizer` and the variables it is rendered with, else None."""
    try:
        import jinja2.meta
        import jinja2.nodes
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.utils.chat_template_utils import _compile_jinja_template as _compiled_template
    except ImportError:  # another transformers: its own path only
        return None
    kind, own = type(tokenizer), getattr(tokenizer, "__dict__", {})
    if not isinstance(tokenizer, PreTrainedTokenizerBase) or any(
            getattr(kind, name) is not getattr(PreTrainedTokenizerBase, name) or name in own
            for name in ("apply_chat_template", "get_chat_template")):
        return None
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not source:
        return None
    try:
        compiled = _compiled_template(source)
        tree = compiled.environment.parse(source)
    except Exception:  # a template that does not compile fails in apply_chat_template, with its own message
        return None
    # names the template reads before (or without) setting them, less those it sets somewhere (in a branch)
    used = jinja2.meta.find_undeclared_variables(tree) - {node.name for node in tree.find_all(jinja2.nodes.Name)
                                                          if node.ctx in ("store", "param")}
    used -= {node.name for node in tree.find_all(jinja2.nodes.Macro)}
    known = {"messages", "tools", "documents", "add_generation_prompt", *compiled.environment.globals,
             *PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES}
    return compiled if used <= known else None


def _is_plain(messages) -> bool:
    """Each message a dict of exactly a str role and a str content (so transformers would pass it on unchanged)."""
    for message in messages:
        if type(message) is not dict or len(message) != 2 or type(message.get("role")) is not str or type(
                message.get("content")) is not str:
            return False
    return True


def direct_renderer(tokenizer) -> Renderer | None:
    """A function (messages, tools, add_generation_prompt) -> the text `apply_chat_template(tokenize=False)` gives,
    or None for input it leaves to apply_chat_template; None when the direct path does not apply (module docstring)."""
    compiled = _compiled(tokenizer)
    if compiled is None:
        return None

    def render(messages: list, tools: list | None, generation: bool) -> str | None:
        if tools is not None or not _is_plain(messages):
            return None
        return compiled.render(messages=list(messages), tools=None, documents=None, add_generation_prompt=generation,
                               **tokenizer.special_tokens_map)

    for probe in _PROBES:
        for generation in (False, True):
            if _outcome(lambda: render(probe, None, generation)) != _outcome(
                    lambda: tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=generation)):
                return None
    return render


def _outcome(call) -> tuple:
    """("ok", value) or ("error", exception type, message): what a rendering gave."""
    try:
        return "ok", call()
    except Exception as exc:  # a template's own error (raise_exception) must be raised alike
        return "error", type(exc), str(exc)
