"""Chat templates: render a conversation to token ids, mark the supervised tokens, prompt for generation.

    ids, labels = encode_conversation(tok, messages, template="auto", mask="assistant")
    prompt_ids = render_prompt(tok, messages[:-1], template="auto")   # ends with the generation prompt
    stops = stop_token_ids(tok, template="auto")                      # end-of-turn (+ EOS) token ids

`template` is "auto" (the tokenizer's own jinja `chat_template` when it has one, else the built-in
`chatml`) or the name of a built-in template: a YAML data file in `sftlab/templates/` (chatml alias
qwen, llama3, gemma, mistral, plain, raw: the texts joined as they are, as TRL trains string prompt/completion
rows), validated by `TemplateSpec`.

What is supervised (labels are the token ids there, -100 elsewhere; same length as ids, unshifted):
- mask "assistant": every assistant turn; "last_assistant": only the last one; "all": every token (no answer
  spans are located, so "all" also takes templates that are not prefix-stable; with tool calls the per-turn
  checks below still run). "each_assistant" is one sample per assistant turn: encode each of
  `sftlab.data.messages.mask_samples(messages, "each_assistant")`.
- In an assistant turn, the supervised text is what the model must write after the generation prompt:
  the answer and the end-of-turn token that closes it (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, EOS).
  Text after the end-of-turn token (the newline ChatML and Gemma put there) is not supervised:
  generation stops at the end-of-turn token, so the model never has to write it.
- The whole conversation is tokenized once, exactly as `tokenizer.apply_chat_template(..., tokenize=True)`
  does (`add_special_tokens=False`), and a token is supervised when any of its characters lies in a
  supervised span (offsets of a fast tokenizer; a slow tokenizer is encoded piece by piece and must agree).
- With the tokenizer's own template, the spans come from rendering prefixes: messages[:i] with the
  generation prompt must be a prefix of messages[:i+1], which must be a prefix of the whole conversation;
  the new text is supervised up to and including its last special token. A template without that
  prefix property (one that rewrites earlier turns) is refused with a one-line error.

Tool calling (shapes in `sftlab.data.messages`): `encode_conversation(..., tools=[...])` renders through the
tokenizer's own template as `apply_chat_template(messages, tools=tools)`; an assistant turn's tool-call text is
supervised like its answer, tool results and the tools block never are. A template that drops the tools, a
tool call or a tool result is refused, and so is tool data under a built-in template (they have no tool format).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import numpy as np

from sftlab.data.messages import ROLES, check_messages  # noqa: F401  (re-exported)
from sftlab.data.messages import check_tools, check_tools_rendered, has_tool_data
from sftlab.data.messages import where_of as _where
from sftlab.data.render_fast import direct_renderer
from sftlab.data.template_spec import TemplateSpec, builtin_template_names, load_builtin
from sftlab.errors import SftlabError

IGNORE_INDEX = -100
MASKS = ("assistant", "last_assistant", "all")
DEFAULT_TEMPLATE = "chatml"
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


# ----------------------------------------------------------------------------------------- messages


def _selected_turns(messages: list[dict], mask: str) -> set[int]:
    """Indices of the assistant turns the mask supervises."""
    if mask == "each_assistant":  # a known mask, but one conversation becomes several samples
        raise SftlabError("data.mask: each_assistant makes one sample per assistant turn, so it cannot encode a "
                          "conversation as one sequence; encode each sample of "
                          "sftlab.data.messages.mask_samples(messages, 'each_assistant'), as training does")
    if mask not in MASKS:
        raise SftlabError(f"data.mask: unknown mask {mask!r}; expected one of {', '.join(MASKS)}, each_assistant")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if mask == "all" and not any(messages[i].get("tool_calls") for i in turns):
        return set()  # every token is supervised: no answer spans to locate (nor prefix renderings to need)
    return set(turns[-1:]) if mask == "last_assistant" else set(turns)


@dataclass
class Rendered:
    """A conversation as text, with the character spans [start, end) whose tokens are supervised."""

    text: str
    spans: list[tuple[int, int]]


# ------------------------------------------------------------------------------------ built-in format


class BuiltinFormat:
    """A `TemplateSpec` bound to a tokenizer (its BOS/EOS text, checked end-of-turn token)."""

    def __init__(self, spec: TemplateSpec, tokenizer, fallback: bool = False):
        self.spec = spec
        self._values = {"{bos_token}": tokenizer.bos_token or "", "{eos_token}": tokenizer.eos_token,
                        "{tokenizer_bos}": tokenizer.bos_token if adds_bos(tokenizer) else ""}
        if tokenizer.eos_token is None and "{eos_token}" in spec.model_dump_json():
            raise SftlabError(f"data.template {spec.name}: the tokenizer has no EOS token to end answers with")
        self.end_of_turn = self.fill(spec.end_of_turn)
        if len(_plain_ids(tokenizer, self.end_of_turn)) != 1:
            if fallback:
                raise SftlabError(f"data.template auto: the tokenizer has no chat template and no {self.end_of_turn} "
                                  f"token for the {spec.name} fallback; set data.template to one of "
                                  f"{', '.join(builtin_template_names())} (plain needs only an EOS token)")
            raise SftlabError(f"data.template {spec.name}: the tokenizer has no single token for the end-of-turn "
                              f"marker {self.end_of_turn!r}, so generation could not stop; pick a template that "
                              "matches the tokenizer (or auto)")
        stops = [self.end_of_turn, *(self.fill(t) for t in spec.stop_tokens)]
        self.stop_ids = _dedupe(ids[0] for ids in (_plain_ids(tokenizer, t) for t in stops if t) if len(ids) == 1)

    def fill(self, text: str) -> str:
        for key, value in self._values.items():
            text = text.replace(key, value or "")
        return text

    def _content(self, message: dict) -> str:
        return message["content"].strip() if self.spec.trim_content else message["content"]

    def render(self, messages: list[dict], selected: set[int], src: str | None, tools: list | None = None) -> Rendered:
        """Text of the conversation; each selected assistant turn contributes one supervised span."""
        if has_tool_data(messages, tools):
            raise SftlabError(f"{_where(src)}: this conversation has tools, tool calls or tool results, but the built-in "
                              f"chat template {self.spec.name} has no tool format; use a tokenizer whose own chat "
                              "template renders tools, with data.template: auto")
        spec, parts, spans = self.spec, [self.fill(self.spec.bos)], []
        length = len(parts[0])
        for i, message, merged in self._turns(messages, src):
            role = getattr(spec.roles, message["role"])
            head, content, suffix = self.fill(role.prefix) + merged, self._content(message), self.fill(role.suffix)
            if message["role"] == "assistant" and i in selected:  # from after the generation prompt to end of turn
                start = length + len(self.fill(spec.generation_prompt))
                spans.append((start, length + len(head) + len(content) + len(self.end_of_turn)))
            piece = head + content + suffix
            parts.append(piece)
            length += len(piece)
        return Rendered("".join(parts), spans)

    def _turns(self, messages: list[dict], src: str | None):
        """(index, message, merged system text) per rendered turn, handling the system placement."""
        merged, start = "", 0
        if self.spec.system_placement == "merge_first_user" and messages[0]["role"] == "system":
            if len(messages) > 1 and messages[1]["role"] != "user":
                raise SftlabError(f"{_where(src)}: template {self.spec.name} merges the system message into a "
                                  f"following user turn, but message 1 is {messages[1]['role']!r}")
            merged, start = messages[0]["content"] + self.spec.system_separator, 1
        for i in range(start, len(messages)):
            if messages[i]["role"] == "system" and self.spec.roles.system is None:
                raise SftlabError(f"{_where(src)}: message {i}: template {self.spec.name} allows a system message "
                                  "only as the first message")
            yield i, messages[i], merged if i == start else ""

    def prompt_text(self, messages: list[dict], src: str | None, tools: list | None = None) -> str:
        return self.render(messages, set(), src, tools).text + self.fill(self.spec.generation_prompt)


# ------------------------------------------------------------------------------- tokenizer's own format


class TokenizerFormat:
    """The tokenizer's own jinja chat template, with masks derived from prefix renderings."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._direct = direct_renderer(tokenizer)  # apply_chat_template's text, less its per-call overhead
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special} | set(
            tokenizer.all_special_tokens)
        self._specials = frozenset(token for token in specials if token)
        self._sizes = sorted({len(token) for token in self._specials}, reverse=True)
        self._last_chars = frozenset(token[-1] for token in self._specials)
        stops = []
        try:
            probe = self._render(_PROBE, None)
            answer = probe[len(self._render(_PROBE[:1], None, generation=True)):]
            eot = self._last_special(answer)
            if eot is not None:
                stops.append(tokenizer.convert_tokens_to_ids(eot[0]))
        except SftlabError:
            pass
        if tokenizer.eos_token_id is not None:
            stops.append(tokenizer.eos_token_id)
        self.stop_ids = _dedupe(stops)

    def _render(self, messages: list[dict], src: str | None, generation: bool = False, tools: list | None = None) -> str:
        try:
            text = self._direct(messages, tools, generation) if self._direct else None
            if text is None:
                text = self.tokenizer.apply_chat_template(list(messages), tools=tools, tokenize=False,
                                                          add_generation_prompt=generation)
        except Exception as exc:  # jinja raises template-defined errors (e.g. role alternation) as plain exceptions
            raise SftlabError(f"{_where(src)}: the tokenizer's chat template failed: {exc}") from None
        return text if isinstance(text, str) else text[0]

    def _last_special(self, text: str) -> tuple[str, int] | None:
        """The special token whose occurrence ends last in `text` (the longest of those ending there), and that end
        position. Scanned from the end, so it costs a few steps for a turn that ends with its end-of-turn token, not
        a search per special token (Gemma 3 has 6,000 of them)."""
        for end in range(len(text), 0, -1):
            if text[end - 1] in self._last_chars:
                for size in self._sizes:
                    if size <= end and text[end - size:end] in self._specials:
                        return text[end - size:end], end
        return None

    def render(self, messages: list[dict], selected: set[int], src: str | None, tools: list | None = None) -> Rendered:
        full = self._render(messages, src, tools=tools)
        if has_tool_data(messages, tools):
            check_tools_rendered(full, messages, tools, _where(src))
        spans = []
        for i in sorted(selected):
            if i == 0:
                raise SftlabError(f"{_where(src)}: the conversation starts with an assistant turn; "
                                  "the tokenizer's chat template needs a prompt before it")
            prompt = self._render(messages[:i], src, generation=True, tools=tools)
            upto = full if i + 1 == len(messages) else self._render(messages[: i + 1], src, tools=tools)
            if not upto.startswith(prompt) or not full.startswith(upto):
                raise SftlabError(f"{_where(src)}: the tokenizer's chat template is not prefix-stable at message {i} "
                                  "(it renders earlier turns otherwise than the last), so answer tokens cannot be "
                                  "located; set data.mask to each_assistant (a sample per turn) or last_assistant, "
                                  "or data.template to a built-in template")
            end = self._last_special(upto[len(prompt):])
            dropped = [c["function"]["name"] for c in messages[i].get("tool_calls", ()) if c["function"]["name"] not in
                       upto[len(prompt):]]
            if dropped:
                raise SftlabError(f"{_where(src)}: the tokenizer's chat template did not render the tool call "
                                  f"{dropped[0]!r} of message {i}, so it does not handle tools; use a model whose own "
                                  "chat template renders tool calls")
            if end is None:
                raise SftlabError(f"{_where(src)}: the tokenizer's chat template ends an assistant turn without a "
                                  "special token, so the model would never learn to stop; set data.template to a built-in")
            spans.append((len(prompt), len(prompt) + end[1]))
        return Rendered(full, spans)

    def prompt_text(self, messages: list[dict], src: str | None, tools: list | None = None) -> str:
        text = self._render(messages, src, generation=True, tools=tools)
        if has_tool_data(messages, tools):  # as in render: a template that drops tool data is refused
            check_tools_rendered(text, messages, tools, _where(src))
        return text


# ------------------------------------------------------------------------------------------ public API


_FORMATS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def chat_format(tokenizer, template: str = "auto") -> BuiltinFormat | TokenizerFormat:
    """The format `template` names for `tokenizer` (cached per tokenizer, chat template and name)."""
    own = getattr(tokenizer, "chat_template", None)
    key = (template, own if isinstance(own, str) else repr(own), tokenizer.bos_token, tokenizer.eos_token,
           getattr(tokenizer, "add_bos_token", None))
    try:
        cache = _FORMATS.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    if key not in cache:
        if template == "auto" and own:
            cache[key] = TokenizerFormat(tokenizer)
        elif template == "auto":
            cache[key] = BuiltinFormat(load_builtin(DEFAULT_TEMPLATE), tokenizer, fallback=True)
        else:
            cache[key] = BuiltinFormat(load_builtin(template), tokenizer)
    return cache[key]


def encode_conversation(tokenizer, messages, template: str = "auto", mask: str = "assistant",
                        src: str | None = None, tools: list | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the conversation and labels (-100 where not supervised), equal lengths.

    `src` (e.g. an example's "_src", "train.jsonl:12") prefixes every error message; `tools` is the
    example's list of function definitions (passed to the tokenizer's chat template).
    """
    return encode_rendered(tokenizer, render_conversation(tokenizer, messages, template, mask, src, tools), src)


def render_conversation(tokenizer, messages, template: str = "auto", mask: str = "assistant",
                        src: str | None = None, tools: list | None = None) -> Rendered:
    """The text `encode_conversation` tokenizes and its supervised spans (checked as it checks them)."""
    clean, tools = check_messages(messages, src), check_tools(tools, src)
    if mask != "all" and clean[-1]["role"] != "assistant":
        raise SftlabError(f"{_where(src)}: the conversation ends with a {clean[-1]['role']} turn after its last answer, "
                          "which nothing would learn from; remove it or add the answer (or set data.mask: all)")
    fmt = chat_format(tokenizer, template)
    selected = _selected_turns(clean, mask)
    rendered = fmt.render(clean, selected, src, tools)
    if mask == "all":
        rendered = Rendered(rendered.text, [(0, len(rendered.text))])
    return rendered


def render_prompt(tokenizer, messages, template: str = "auto", src: str | None = None,
                  tools: list | None = None) -> list[int]:
    """Token ids of `messages` followed by the assistant generation prompt, as training renders them."""
    clean, tools = check_messages(messages, src, need_assistant=False), check_tools(tools, src)
    return _plain_ids(tokenizer, chat_format(tokenizer, template).prompt_text(clean, src, tools))


def stop_token_ids(tokenizer, template: str = "auto") -> list[int]:
    """Token ids that end an answer under `template`: its end-of-turn token first, then EOS and the like."""
    return list(chat_format(tokenizer, template).stop_ids)


def encode_rendered(tokenizer, rendered: Rendered, src: str | None = None) -> tuple[list[int], list[int]]:
    """Tokenize the whole text once; a token is supervised when it overlaps a supervised span."""
    if getattr(tokenizer, "is_fast", False):
        return encode_rendered_batch(tokenizer, [rendered])[0]
    ids, labels = [], []
    for start, end, supervised in _pieces(rendered):
        piece = _plain_ids(tokenizer, rendered.text[start:end])
        ids += piece
        labels += piece if supervised else [IGNORE_INDEX] * len(piece)
    if ids != _plain_ids(tokenizer, rendered.text):
        raise SftlabError(f"{_where(src)}: this (slow) tokenizer merges tokens across the answer boundary, so the "
                          "supervised tokens are ambiguous; use a fast tokenizer (tokenizer.json)")
    return ids, labels


def encode_rendered_batch(tokenizer, rendered: list[Rendered],
                          srcs: list[str | None] | None = None) -> list[tuple[list[int], list[int]]]:
    """`encode_rendered` of each, equal to it. A fast tokenizer's Rust side encodes the texts in one call: the first
    through transformers, which sets the backend as it encodes (no truncation nor padding, its special-token
    splitting), the rest straight from the backend, skipping transformers' per-text conversion (about half the
    time of encoding a text)."""
    if not getattr(tokenizer, "is_fast", False):
        return [encode_rendered(tokenizer, r, src) for r, src in zip(rendered, srcs or [None] * len(rendered))]
    if not rendered:
        return []
    texts = [r.text for r in rendered]
    encodings = tokenizer(texts[:1], add_special_tokens=False).encodings
    encodings += tokenizer.backend_tokenizer.encode_batch(texts[1:], add_special_tokens=False)
    out = []
    for r, encoding in zip(rendered, encodings):
        ids, pairs = encoding.ids, encoding.offsets
        offsets = np.fromiter(itertools.chain.from_iterable(pairs), dtype=np.int64, count=2 * len(pairs)).reshape(-1, 2)
        out.append((ids, np.where(supervised_tokens(offsets, r.spans), ids, IGNORE_INDEX).tolist()))
    return out


def _pieces(rendered: Rendered):
    """(start, end, supervised) pieces covering the text in order."""
    at = 0
    for start, end in rendered.spans:
        if start > at:
            yield at, start, False
        yield start, end, True
        at = end
    if at < len(rendered.text):
        yield at, len(rendered.text), False


def supervised_tokens(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Per token (character offsets [start, end), shape (n, 2)): whether it overlaps one of the `spans`; a zero-width
    token (end <= start) when its start lies in one. For all tokens at once: the spans (in any order, overlapping or
    not) become their union, sorted disjoint intervals, and a binary search finds the first that ends after a token's
    start; an empty span (a, a) marks the tokens that hold its point a strictly inside."""
    start, end = offsets[:, 0], offsets[:, 1]
    points = np.sort([a for a, b in spans if a == b]).astype(np.int64)
    union: list[list[int]] = []
    for a, b in sorted((a, b) for a, b in spans if a < b):
        if union and a <= union[-1][1]:
            union[-1][1] = max(union[-1][1], b)
        else:
            union.append([a, b])
    lo, hi = np.asarray(union, dtype=np.int64).reshape(-1, 2).T
    first = np.searchsorted(hi, start, side="right")  # the first interval ending after the start
    lo_next = np.append(lo, np.iinfo(np.int64).max)[first]
    wide = end > start
    hit = np.where(wide, lo_next < end, lo_next <= start)
    if len(points):
        inside = np.append(points, np.iinfo(np.int64).max)[np.searchsorted(points, start, side="right")]
        hit |= wide & (inside < end)
    return hit


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts plain text with its BOS token (Llama, Gemma: yes; Qwen, GPT-2: no)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _plain_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _dedupe(values) -> tuple[int, ...]:
    return tuple(dict.fromkeys(v for v in values if v is not None))
