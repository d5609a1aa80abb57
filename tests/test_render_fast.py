"""The fast rendering paths of tokenisation give what the slow ones give: `sftlab.data.render_fast` renders plain
conversations as `apply_chat_template(tokenize=False)` does (byte for byte, errors alike) and leaves everything else
to it, and `TokenizerFormat._last_special` finds the special token a search per special token finds."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
from test_templates import CONVERSATIONS, LAST_TURN_THINKS, TWO_TURNS
from test_tool_calls import MESSAGES as TOOL_MESSAGES
from test_tool_calls import TOOL_TEMPLATE, TOOLS
from test_walk_templates import LLAMA31_TOOLS, SPECIAL_LOOKING

from sftlab.data import render_fast
from sftlab.data.render_fast import direct_renderer
from sftlab.data.template_jinja import faithful_jinja
from sftlab.data.templates import TokenizerFormat, chat_format
from sftlab.data.tokenize import encode_samples
from sftlab.models.tiny import CHAT_TEMPLATES, make_tokenizer

# The chat templates the tests cover; "gemma" is Gemma 3's own template, character for character.
OWN = {
    "default_system": ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n"
                       "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                       "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "last_turn_thinks": LAST_TURN_THINKS,
    "tools": TOOL_TEMPLATE,
    "llama31_tools": LLAMA31_TOOLS,
    "alternate": ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                  "{{ raise_exception('roles must alternate') }}{% endif %}<|im_start|>{{ m['role'] }}\n"
                  "{{ m['content'] }}<|im_end|>\n{% endfor %}"),
}
CASES = [*CONVERSATIONS.values(), SPECIAL_LOOKING, TWO_TURNS, TWO_TURNS[:1],
         [{"role": "user", "content": "{{ bos_token }} {% raw %} \\n ' \" \t"}, {"role": "assistant", "content": " "}],
         [{"role": "system", "content": ""}, {"role": "user", "content": "x"}, {"role": "system", "content": "late"}]]


def _tokenizers():
    out = {family: make_tokenizer(family) for family in ("chatml", "llama3", "gemma", "mistral")}
    for name, source in OWN.items():
        out[name] = make_tokenizer("llama3" if name == "llama31_tools" else "chatml")
        out[name].chat_template = source
    for family in ("chatml", "gemma"):  # built-in templates saved as Jinja (sftlab.data.template_jinja)
        out[f"saved_{family}"] = make_tokenizer(family)
        out[f"saved_{family}"].chat_template = faithful_jinja(out[f"saved_{family}"], family)
    return out


TOKENIZERS = _tokenizers()


def _outcome(call):
    try:
        return "ok", call()
    except Exception as exc:
        return "error", type(exc), str(exc)


GEMMA = Path.home() / ".cache" / "sftlab" / "models" / "gemma-3-270m"


@pytest.mark.skipif(not (GEMMA / "tokenizer.json").is_file(), reason="needs `sftlab model pull gemma-3-270m`")
def test_real_gemma_3_tokenizer_renders_and_encodes_alike():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GEMMA)
    assert tok.chat_template == CHAT_TEMPLATES["gemma"]  # so the tiny "gemma" tokenizer covers its template
    render = direct_renderer(tok)
    for messages in CASES:
        for generation in (False, True):
            assert _outcome(lambda: render(messages, None, generation)) == _outcome(
                lambda: tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation))
    fmt = chat_format(tok)
    assert len(fmt._specials) > 6000
    examples = [{"messages": m} for m in CASES if m[-1]["role"] == "assistant" and m[-1]["content"].strip()]
    fast = encode_samples(examples, tok, "auto", "assistant")
    direct, fmt._direct = fmt._direct, None
    try:
        assert encode_samples(examples, tok, "auto", "assistant") == fast
    finally:
        fmt._direct = direct
    for text in ("", "a<end_of_turn>\n", "<start_of_turn>model\nx<end_of_turn><eos>", "<unused5>>", "no special"):
        assert fmt._last_special(text) == _rfind_last_special(fmt._specials, text)


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_direct_rendering_equals_apply_chat_template(name):
    tok = TOKENIZERS[name]
    render = direct_renderer(tok)
    assert render is not None
    for messages in CASES:
        for end in range(1, len(messages) + 1):
            for generation in (False, True):
                ours = _outcome(lambda: render(messages[:end], None, generation))
                theirs = _outcome(lambda: tok.apply_chat_template(messages[:end], tokenize=False,
                                                                  add_generation_prompt=generation))
                assert ours == theirs, (name, messages[:end], generation)
                assert ours[1] is not None


@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("mask", ["assistant", "last_assistant", "each_assistant", "all"])
def test_ids_and_labels_are_those_of_apply_chat_template(name, mask):
    tok = TOKENIZERS[name]
    examples = [{"messages": m, "_src": f"d.jsonl:{i}"} for i, m in enumerate(CASES) if m[-1]["role"] == "assistant"]
    if name == "tools":
        examples.append({"messages": TOOL_MESSAGES, "tools": TOOLS, "_src": "t.jsonl:1"})
    fmt = chat_format(tok)
    assert isinstance(fmt, TokenizerFormat) and fmt._direct is not None

    def encoded():
        return [_outcome(lambda: encode_samples([ex], tok, "auto", mask)) for ex in examples]

    fast = encoded()
    direct, fmt._direct = fmt._direct, None
    try:
        slow = encoded()
    finally:
        fmt._direct = direct
    assert fast == slow
    assert any(outcome[0] == "ok" for outcome in fast)


def _str_subclass(text):
    class Text(str):
        pass
    return Text(text)


@pytest.mark.parametrize("messages, tools", [
    (TOOL_MESSAGES[:2], TOOLS),  # a tools list
    (TOOL_MESSAGES[:3], None),  # a tool call
    ([{"role": "user", "content": "x"}, {"role": "tool", "content": "1", "name": "f"}], None),  # a tool result's name
    ([{"role": "user", "content": None}], None),  # None values are dropped by transformers
    ([{"role": "user", "content": "x", "reasoning_content": "r"}], None),  # reasoning fields are aliased
    ([{"role": "user", "content": _str_subclass("x")}], None),  # str subclasses are converted
    ([{"role": "user", "content": [{"type": "text", "text": "x"}]}], None),  # content parts
])
def test_anything_but_plain_messages_is_left_to_apply_chat_template(messages, tools):
    assert direct_renderer(TOKENIZERS["tools"])(messages, tools, False) is None


def test_templates_and_tokenizers_it_cannot_mirror_get_no_direct_path(monkeypatch):
    tok = make_tokenizer("chatml")
    tok.chat_template = "{{ date_string }}" + CHAT_TEMPLATES["chatml"]  # a variable apply_chat_template is not given
    assert direct_renderer(tok) is None
    tok.chat_template = "{% for m in messages %}"  # does not compile
    assert direct_renderer(tok) is None
    tok.chat_template = {"default": CHAT_TEMPLATES["chatml"]}
    assert direct_renderer(tok) is None

    class Own(type(tok)):
        def apply_chat_template(self, *args, **kwargs):
            return "own"
    tok.chat_template, tok.__class__ = CHAT_TEMPLATES["chatml"], Own
    assert direct_renderer(tok) is None
    tok.__class__ = Own.__mro__[1]
    assert direct_renderer(tok) is not None
    tok.apply_chat_template = lambda *args, **kwargs: "own"
    assert direct_renderer(tok) is None
    del tok.apply_chat_template
    assert direct_renderer(tok) is not None
    # a compiled template that renders otherwise than apply_chat_template is caught by the probes
    gemma = render_fast._compiled(make_tokenizer("gemma"))
    monkeypatch.setattr(render_fast, "_compiled", lambda _: gemma)
    assert direct_renderer(tok) is None


def _rfind_last_special(specials, text):
    """The search per special token (longest first) that `_last_special` replaces."""
    best = None
    for token in sorted(specials, key=len, reverse=True):
        at = text.rfind(token)
        if at >= 0 and (best is None or at + len(token) > best[1]):
            best = (token, at + len(token))
    return best


def test_last_special_equals_a_search_per_special_token():
    tok = copy.deepcopy(TOKENIZERS["chatml"])
    tok.add_special_tokens({"additional_special_tokens": ["<a>", "a>", "<ab>", "b>", "<a><a>", ">>", "x"]})
    fmt = TokenizerFormat(tok)
    assert {"<a>", "a>", "<a><a>", "x", "<|im_end|>"} <= fmt._specials
    rng = random.Random(3)
    pieces = ["<", ">", "a", "b", "x", "y", " ", "<a>", "<|im_end|>", "<|im_start|>", "中"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        assert fmt._last_special(text) == _rfind_last_special(fmt._specials, text), text
