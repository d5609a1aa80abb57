"""Rule-based text augmentation for Chinese and English (synonym replacement from a word-list file, random
swap, deletion and insertion at a configurable rate, seeded), and paraphrases by a local model.

    augmenter = RuleAugmenter(load_synonyms(None, "zh"), rate=0.1, seed=0)
    new = augment_examples(examples, augmenter, methods=["synonym", "swap"], copies=1)

Chinese text is split into words with jieba, English on spaces. Only the prompt side is changed
(the user turns of sft, the text of cls; pt has only text), so answers and labels stay correct; tool calls,
tool results and the tools list are never edited. In a conversation with tool calls, the rule methods leave
alone every word of a user turn that also occurs in the calls' arguments (`protected_words`), so the prompt
keeps agreeing with them ("weather in Paris" stays "Paris" when a call sends {"city": "Paris"}), and a paraphrase
that loses such a word is dropped. In an image+text example every `<image>` placeholder stays as and where it
is: while a turn is edited each stands as one protected token (`images.MARK`), never replaced, moved or deleted,
and a paraphrase with other placeholders than its original is dropped. Every new
record is a copy marked `"augmented": {"method", "source"}` (plus `source_id` when the source has an `id`, see
`marked`); originals are never replaced. Randomness is drawn
from a generator seeded by (seed, example position, method, copy), so a re-run gives the same output.
"""

from __future__ import annotations

import copy
import functools
import logging
import random
import re
import unicodedata
from importlib import resources
from pathlib import Path

from sftlab.data.readers import _decode
from sftlab.datawork.filters import detect_language
from sftlab.datawork.images import MARK, PLACEHOLDER, has_images, keep_placeholders
from sftlab.datawork.records import call_value, src, stage_of
from sftlab.errors import SftlabError

RULE_METHODS = ("synonym", "swap", "delete", "insert")
_HAS_HAN = re.compile(r"[\u4e00-\u9fff]")
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")
_POSSESSIVE = re.compile(r"(?<=\w)['\u2019]s$")  # "paris's", "paris’s" (a right single quotation mark)
_EDGES = ".,;:!?\"'()"  # punctuation a synonym lookup ignores at either end of a word, and a replacement keeps


def load_synonyms(path: str | Path | None, language: str) -> dict[str, list[str]]:
    """word -> its synonyms, from a file of comma-separated groups (or the built-in zh/en list)."""
    if path is None:
        if language not in ("zh", "en"):
            raise SftlabError(f"no built-in synonym list for language {language!r}; pass --synonyms FILE")
        text = resources.files("sftlab.resources").joinpath(f"synonyms_{language}.txt").read_text(encoding="utf-8")
    else:
        if not Path(path).is_file():
            raise SftlabError(f"synonym file not found: {path}")
        text = _decode(Path(path))
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        group = [word.strip() for word in re.split(r"[,，]", line) if word.strip()]
        for word in group:
            table.setdefault(word, [])
            table[word] += [other for other in group if other != word and other not in table[word]]
    return table


def split_words(text: str) -> tuple[list[str], str]:
    """Tokens of `text` that join back to it exactly (words and the whitespace between them), and the separator
    an inserted word needs ('' for text with Chinese, split by jieba; ' ' otherwise, split on whitespace). A
    placeholder mark (`images.MARK`) is a token of its own (jieba splits it off too)."""
    if _HAS_HAN.search(text):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        return jieba.lcut(text), ""
    return [token for token in re.split(f"(\\s+|{MARK})", text) if token], " "


def is_word(token: str) -> bool:
    """Whether a `split_words` token is a word the rule methods may touch: not whitespace, not an image mark, and
    not punctuation alone. jieba splits Chinese punctuation (，。：、) into tokens of their own, which would
    otherwise be swapped to the start of a sentence, deleted, or counted towards `rate`; English punctuation stays
    on its word ('Big,') and moves with it."""
    core = token.strip()
    return bool(core) and MARK not in core and not all(unicodedata.category(c).startswith("P") for c in core)


def word_key(token: str) -> str:
    """A word as protection compares it: case-folded, punctuation at either end and then a possessive 's removed
    ('Paris?' -> 'paris', "(Paris's)" -> 'paris'). Other inflections (plurals, verb forms) are not undone."""
    return _EDGE_PUNCT.sub("", _POSSESSIVE.sub("", _EDGE_PUNCT.sub("", token.casefold())))


def protected_words(example: dict) -> frozenset[str]:
    """The words the rule methods leave alone in an sft example's user turns: every word (`split_words`, then
    `word_key`) of every string value, at any depth, of the arguments of its tool calls, and every number among
    those values (21 -> '21'; 2.0 -> '2' and '2.0'). Empty for pt and cls and for conversations without tool calls.
    Keys, booleans and nulls are not words."""
    words: set[str] = set()
    for message in example.get("messages") or []:
        for call in message.get("tool_calls") or []:
            _argument_words(call_value(call)["arguments"], words)
    return frozenset(words - {""})


def _argument_words(value, words: set[str]) -> None:
    if isinstance(value, str):
        words.update(word_key(token) for token in split_words(value)[0])
    elif isinstance(value, dict):
        for item in value.values():
            _argument_words(item, words)
    elif isinstance(value, list):
        for item in value:
            _argument_words(item, words)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        words.add(str(value))
        if isinstance(value, float) and value.is_integer():
            words.add(str(int(value)))


class RuleAugmenter:
    """EDA-style operations on words (`is_word`: whitespace, line breaks and punctuation standing alone, such as
    Chinese ，。 between jieba's words, stay as and where they are); `rate` is the share of words touched
    (at least one). Words in `protected` (`word_key` forms) and image placeholder marks are never replaced, moved
    or deleted, and no synonym of them is inserted."""

    def __init__(self, synonyms: dict[str, list[str]], rate: float = 0.1, seed: int = 0):
        if not 0.0 < rate <= 1.0:
            raise SftlabError(f"augmentation rate must be in (0, 1], got {rate}")
        self.synonyms, self.rate, self.seed = synonyms, rate, seed

    def rng(self, *key) -> random.Random:
        return random.Random(":".join(str(part) for part in (self.seed, *key)))

    def apply(self, method: str, text: str, rng: random.Random, protected: frozenset[str] = frozenset()) -> str:
        """`text` with `method` applied; words whose `word_key` is in `protected` stay as and where they are."""
        tokens, sep = split_words(text)
        spots = [i for i, token in enumerate(tokens) if is_word(token)]
        if not spots:
            return text
        n = max(1, int(round(self.rate * len(spots))))
        free = [i for i in spots if word_key(tokens[i]) not in protected] if protected else spots
        tokens = getattr(self, f"_{method}")(tokens, spots, free, n, rng, sep)
        return "".join(tokens)

    def _synonym(self, tokens, spots, free, n, rng, sep):
        usable = [i for i in free if self._lookup(tokens[i])]
        for i in rng.sample(usable, min(n, len(usable))):
            tokens[i] = _in_place_of(tokens[i], rng.choice(self._lookup(tokens[i])), tokens[i] in self.synonyms)
        return tokens

    def _swap(self, tokens, spots, free, n, rng, sep):
        for _ in range(n if len(free) > 1 else 0):
            i, j = rng.sample(free, 2)
            tokens[i], tokens[j] = tokens[j], tokens[i]
        return tokens

    def _delete(self, tokens, spots, free, n, rng, sep):
        for i in rng.sample(free, min(n, len(free), len(spots) - 1)):
            tokens[i] = ""
            # drop one neighbouring run of spaces with the word, never a line break
            for j in (i + 1, i - 1):
                if 0 <= j < len(tokens) and tokens[j] and not tokens[j].strip() and "\n" not in tokens[j]:
                    tokens[j] = ""
                    break
        return tokens

    def _insert(self, tokens, spots, free, n, rng, sep):
        candidates = [tokens[i] for i in free if self._lookup(tokens[i])]
        for _ in range(n if candidates else 0):
            word = rng.choice(self._lookup(rng.choice(candidates)))
            at = rng.choice(spots)
            tokens[at] = word + sep + tokens[at]
        return tokens

    def _lookup(self, word: str) -> list[str]:
        bare = word.strip(_EDGES).lower()
        return self.synonyms.get(word) or self.synonyms.get(bare) or []


def _in_place_of(token: str, synonym: str, whole: bool) -> str:
    """`synonym` standing where `token` stood: the whole token when the list names it as it is, else its bare word,
    keeping the punctuation around it and a capital first letter ('Big,' -> 'Large,')."""
    if whole:
        return synonym
    core = token.strip(_EDGES)
    start = token.index(core)
    if core[:1].isupper() and synonym[:1].islower():
        synonym = synonym[0].upper() + synonym[1:]
    return token[:start] + synonym + token[start + len(core):]


def _edit_prompt(example: dict, fn, last_user_only: bool = False) -> dict:
    """A copy with `fn` applied to the user turns (or only the last one) of sft, or to the text otherwise; in an
    image+text example each `<image>` stays as and where it is (`images.keep_placeholders`)."""
    out = copy.deepcopy(example)
    if has_images(out):
        fn = functools.partial(keep_placeholders, fn=fn)
    if stage_of(out) == "sft":
        users = [m for m in out["messages"] if m["role"] == "user"]
        for message in users[-1:] if last_user_only else users:
            message["content"] = fn(message["content"])
    else:
        out["text"] = fn(out["text"])
    return out


def augment_examples(examples: list[dict], augmenter: RuleAugmenter, methods: list[str], copies: int = 1) -> list[dict]:
    """New marked copies (`copies` per example and method); a copy identical to its source, or to an earlier copy
    of the same source (by any method), is skipped. The words of tool-call arguments (`protected_words`) are left
    alone in the user turns."""
    if copies < 1:
        raise SftlabError(f"--copies {copies}: make at least 1 copy per example and method")
    unknown = [m for m in methods if m not in RULE_METHODS]
    if unknown:
        raise SftlabError(f"unknown augmentation method(s) {unknown}; expected {', '.join(RULE_METHODS)} or paraphrase")
    out = []
    for position, example in enumerate(examples):
        protected = protected_words(example)
        made: list[dict] = [example]
        for method in methods:
            for number in range(copies):
                rng = augmenter.rng(position, method, number)
                new = _edit_prompt(example, lambda text: augmenter.apply(method, text, rng, protected))
                if new not in made:
                    made.append(new)
                    out.append(marked(new, method, example))
    return out


def paraphrase_examples(examples: list[dict], generator, rejected: list | None = None) -> list[dict]:
    """One marked copy per example whose prompt side is rewritten by a local model (`generator(prompts) -> texts`);
    empty rewrites and rewrites equal to the original are skipped, and so is a rewrite that loses a word of the
    original the tool calls' arguments hold (`protected_words`), or that has other `<image>` placeholders than
    the original (an image+text example), which goes to `rejected` as (example, why)."""
    originals = [_prompt_side(example) for example in examples]
    rewritten = generator([paraphrase_instruction(text) for text in originals])
    out = []
    for example, original, text in zip(examples, originals, rewritten):
        text = text.strip()
        if not text or text == original:
            continue
        if has_images(example) and text.count(PLACEHOLDER) != original.count(PLACEHOLDER):
            if rejected is not None:
                rejected.append((example, f"the rewrite has {text.count(PLACEHOLDER)} {PLACEHOLDER} placeholder(s), "
                                          f"the original {original.count(PLACEHOLDER)}: {text!r}"))
            continue
        lost = _lost_words(original, text, protected_words(example))
        if lost:
            if rejected is not None:
                rejected.append((example, f"the rewrite lost {', '.join(lost)} (tool-call arguments): {text!r}"))
            continue
        new = text.replace(PLACEHOLDER, MARK) if has_images(example) else text  # as `_edit_prompt` hands it over
        out.append(marked(_edit_prompt(example, lambda _old, t=new: t, last_user_only=True), "paraphrase", example))
    return out


def marked(new: dict, method: str, source: dict) -> dict:
    """An augmented copy marked `"augmented": {"method", "source"}` (the source's file:line, and `source_id`, its
    `id`, when it has one); it keeps the source's other extra fields (`_extra`), but not its `id`, so ids stay
    unique."""
    extra = dict(new.get("_extra") or {})
    mark = {"method": method, "source": src(source)}
    if extra.get("id") is not None:
        mark["source_id"] = extra.pop("id")
    out = {key: value for key, value in new.items() if key != "_extra"} | {"augmented": mark}
    return out | ({"_extra": extra} if extra else {})


def rejection_kind(why: str) -> str:
    """The report's reason for a paraphrase that `paraphrase_examples` rejected with `why`."""
    if why.startswith("the rewrite has"):
        return "paraphrase changed the <image> placeholders"
    return "paraphrase lost a word of the tool-call arguments"


def _lost_words(original: str, rewrite: str, protected: frozenset[str]) -> list[str]:
    """The protected words of `original` that `rewrite` no longer has (a Chinese word counts as kept wherever it
    appears in the rewrite, since jieba may split it otherwise there)."""
    kept = {word_key(token) for token in split_words(rewrite)[0]}
    folded = rewrite.casefold()
    words = dict.fromkeys(word_key(token) for token in split_words(original)[0])
    return [w for w in words if w in protected and w not in kept and not (_HAS_HAN.search(w) and w in folded)]


def paraphrase_instruction(text: str) -> str:
    """The instruction given to the paraphrasing model, in the text's language (asking it to keep `<image>`
    placeholders when the text has any)."""
    if detect_language(text) == "zh":
        keep = f"保留每个 {PLACEHOLDER} 不变，" if PLACEHOLDER in text else ""
        return f"请用不同的措辞改写下面这句话，保持意思不变，{keep}只输出改写后的句子：\n{text}"
    keep = f" Keep every {PLACEHOLDER} exactly as it is." if PLACEHOLDER in text else ""
    return (f"Rewrite the following text with different wording and the same meaning.{keep} Output only the "
            f"rewrite:\n{text}")


def _prompt_side(example: dict) -> str:
    if stage_of(example) == "sft":
        users = [m["content"] for m in example["messages"] if m["role"] == "user"]
        return users[-1] if users else ""
    return example["text"]
