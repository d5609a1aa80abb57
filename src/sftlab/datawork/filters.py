"""Quality filters: empty or too short/long responses (in tokens), wrong language, responses that repeat the
prompt, and refusal/boilerplate patterns from a configurable list. The checked text is the last assistant
turn of sft examples and the text of pt and cls examples (a cls label is never filtered). A last assistant turn
with tool calls is not empty and its token count includes the calls (as JSON text); language, prompt-repeat
and refusal checks see its text content only, and the prompt an answer must not repeat is the system and user
turns (an answer may pass a tool result on word for word).

`filter_examples` returns the kept examples and, for each removed one, the reason, so reports can show
examples of what went and why. Language detection tells writing systems apart (Han -> zh, kana -> ja,
hangul -> ko, Latin -> en, Cyrillic -> ru); it cannot tell apart languages that share a script.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sftlab.data.readers import _decode
from sftlab.datawork.normalize import CODE
from sftlab.datawork.records import prompt_text, response_text, response_tool_calls, stage_of
from sftlab.errors import SftlabError

_SCRIPTS = (
    ("zh", re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")),
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")),
    ("en", re.compile(r"[A-Za-z\u00c0-\u024f]+")),
    ("ru", re.compile(r"[\u0400-\u04ff]+")),
)


LANGUAGES = ("zh", "ja", "ko", "en", "ru")  # what `detect_language` can tell apart


@dataclass
class FilterOptions:
    """Thresholds of the quality filters; None switches a filter off. Token limits must be positive (and the
    minimum at most the maximum) and languages among `LANGUAGES`: a wrong value would remove every example."""

    min_tokens: int | None = None
    max_tokens: int | None = None
    languages: list[str] | None = None
    drop_prompt_repeats: bool = True
    repeat_similarity: float = 0.9
    refusal_patterns: list[str] = field(default_factory=list)

    def __post_init__(self):
        for name, value in (("--min-tokens", self.min_tokens), ("--max-tokens", self.max_tokens)):
            if value is not None and value < 1:
                raise SftlabError(f"{name} {value}: a token limit must be at least 1")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise SftlabError(f"--min-tokens {self.min_tokens} is above --max-tokens {self.max_tokens}: "
                              "every response would be removed")
        if self.languages is not None:
            self.languages = parse_languages(",".join(self.languages))


def parse_languages(value: str) -> list[str]:
    """`--lang zh,en` as ['zh', 'en'] (case-insensitive); a language the detector cannot find (or an empty entry)
    is an error naming the option, since no response would ever be kept for it."""
    languages = [part.strip().lower() for part in value.split(",")]
    unknown = [part for part in languages if part not in LANGUAGES]
    if unknown:
        raise SftlabError(f"--lang {value}: {', '.join(repr(u) for u in unknown)} is not a language the detector tells "
                          f"apart; use a comma list of {', '.join(LANGUAGES)}")
    return languages


def detect_language(text: str) -> str:
    """The dominant writing system of `text` as zh, ja, ko, en, ru, or 'unknown' when it has no letters.

    Han, kana and hangul count per character, Latin and Cyrillic per word (a Chinese character carries
    about as much as an English word). Code in Markdown backticks is ignored, so a Chinese answer that
    contains a program stays zh. Japanese mixes kana with Han, so a kana share above 20% counts as ja.
    """
    text = CODE.sub(" ", text)
    counts = {code: len(pattern.findall(text)) for code, pattern in _SCRIPTS}
    letters = sum(counts.values())
    if letters == 0:
        return "unknown"
    if counts["ja"] / letters > 0.2:
        return "ja"
    return max(counts, key=lambda code: counts[code])


def load_refusal_patterns(path: str | Path | None = None) -> list[str]:
    """Regular expressions from `path`, or the built-in list (resources/refusal_patterns.txt)."""
    if path is None:
        text = resources.files("sftlab.resources").joinpath("refusal_patterns.txt").read_text(encoding="utf-8")
        source = "refusal_patterns.txt"
    else:
        if not Path(path).is_file():
            raise SftlabError(f"refusal pattern file not found: {path}")
        text, source = _decode(Path(path)), str(path)
    patterns = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            re.compile(line)
        except re.error as exc:
            raise SftlabError(f"{source}:{number}: not a valid regular expression ({exc})") from None
        patterns.append(line)
    return patterns


def repeats_prompt(prompt: str, response: str, similarity: float) -> bool:
    """True when the response is the prompt again: equal, contained in it, or at least `similarity` alike."""
    p, r = " ".join(prompt.split()).lower(), " ".join(response.split()).lower()
    if not p or not r:
        return False
    if r == p or (len(r) >= 8 and r in p):
        return True
    # ratio() is at most 2 * min(len) / (len + len) (`real_quick_ratio`), checked before the matcher is built:
    # building it indexes every character of the response, and most responses are much longer than their prompts
    if 2 * min(len(p), len(r)) / (len(p) + len(r)) < similarity:
        return False
    matcher = difflib.SequenceMatcher(None, p, r, autojunk=False)
    # the quick ratio is an upper bound of ratio(); checking it first skips the slow comparison
    return matcher.quick_ratio() >= similarity and matcher.ratio() >= similarity


class ExampleFilter:
    """Applies `FilterOptions` to one example at a time; `reason(example)` is None when it is kept."""

    def __init__(self, options: FilterOptions, tokenizer=None):
        if (options.min_tokens or options.max_tokens) and tokenizer is None:
            raise SftlabError("--min-tokens/--max-tokens count tokens of a tokenizer; pass --tokenizer DIR")
        self.options = options
        self.tokenizer = tokenizer
        self._refusals = [re.compile(p, re.IGNORECASE) for p in options.refusal_patterns]

    def reason(self, example: dict) -> str | None:
        opts = self.options
        response = example["text"] if stage_of(example) == "cls" else response_text(example)
        calls = response_tool_calls(example)
        if not response.strip() and not calls:
            return "empty response"
        if opts.min_tokens or opts.max_tokens:
            counted = "\n".join(text for text in (response, calls) if text)
            n = len(self.tokenizer(counted, add_special_tokens=False)["input_ids"])
            if opts.min_tokens and n < opts.min_tokens:
                return f"too short ({n} < {opts.min_tokens} tokens)"
            if opts.max_tokens and n > opts.max_tokens:
                return f"too long ({n} > {opts.max_tokens} tokens)"
        if opts.languages:
            lang = detect_language(response)
            if lang not in opts.languages and lang != "unknown":
                return f"language {lang} not in {','.join(opts.languages)}"
        if stage_of(example) == "sft":
            prompt = prompt_text(example, tool_results=False)  # an answer may pass a tool result on word for word
            if opts.drop_prompt_repeats and repeats_prompt(prompt, response, opts.repeat_similarity):
                return "response repeats the prompt"
            for pattern in self._refusals:
                if pattern.search(response):
                    return f"refusal/boilerplate: /{pattern.pattern}/"
        return None


def filter_examples(examples: list[dict], options: FilterOptions, tokenizer=None) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Split `examples` into kept ones and (example, reason) pairs for removed ones, order preserved."""
    check = ExampleFilter(options, tokenizer)
    kept, removed = [], []
    for example in examples:
        why = check.reason(example)
        if why is None:
            kept.append(example)
        else:
            removed.append((example, why))
    return kept, removed
