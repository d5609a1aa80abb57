"""Text normalisation: Unicode NFKC, full-width/half-width, whitespace, control characters, HTML remnants,
optional traditional -> simplified Chinese (OpenCC), optional removal of spaces between Chinese characters.

    norm = Normalizer(NormalizeOptions(t2s=True))
    norm("<p>ＡＢＣ　１２３&amp;</p>")   # -> "ABC 123&"

Normalisation is idempotent (`norm(norm(t)) == norm(t)`): a pass that uncovers HTML (`&lt;p&gt;` unescaped, `＜ｐ＞`
under NFKC) is followed by another, until nothing changes.

NFKC maps full-width Latin letters, digits and the ideographic space to their half-width forms. With
`keep_cjk_punct` (the default) the full-width Chinese punctuation marks (，。！？：；（）etc.) are kept as they are,
because NFKC would otherwise turn them into ASCII punctuation, which changes Chinese text style. A full-width
comma between digits is kept too (`共１，０００人` -> `共1，000人`): a thousands separator typed full-width cannot be
told from a list of numbers (`100，200，300`), and reading a list as one number would change the text's meaning.

With `cjk_spaces` (off by default: a space between Chinese characters is sometimes meant, as in `第一条　为了` or
between lines of a poem), spaces between two Chinese characters or punctuation marks go (`中 国 人 民` -> `中国人民`);
spaces next to Latin letters or digits stay (`使用 Python 3`).

A Normalizer works on one text; `sftlab.datawork.records.map_texts(example, normalizer)` applies it to a whole
example, to a JSON tool result string value by string value (so `&quot;` cannot break the JSON), and never to
tool-call arguments or the tools list.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

from sftlab.errors import SftlabError

CJK_PUNCT = "，。！？：；（）【】「」『』、《》〈〉～—…·“”‘’"
_CJK_PUNCT_SPLIT = re.compile(f"([{re.escape(CJK_PUNCT)}])")
# Tags of HTML elements only, with attributes in HTML syntax: `List<String>`, `vector<int>` or `a<b && c>d` are
# not tags (a tag regex for any word would turn `if (a<b && c>d)` into `if (ad)`).
HTML_ELEMENTS = ("a abbr address article aside audio b big blockquote body br button caption center cite code col "
                 "dd del details div dl dt em figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr "
                 "html i iframe img input ins kbd label li link main mark meta nav noscript ol option p pre q s "
                 "script section select small source span strike strong style sub summary sup svg table tbody td "
                 "textarea tfoot th thead time title tr tt u ul video wbr").split()
_ATTRIBUTES = r"""(?:\s+[A-Za-z_:@][-\w:.@]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)*\s*/?>"""
_TAG = re.compile(rf"</?(?:{'|'.join(HTML_ELEMENTS)})\b{_ATTRIBUTES}|<!--.*?-->", re.DOTALL | re.IGNORECASE)
_BLOCK_TAG = re.compile(r"<(?:br|/p|/div|/li|/tr|/h[1-6])\s*/?>", re.IGNORECASE)
# Markdown code: fenced blocks (to the closing fence or the end) and inline spans.
CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]+`", re.DOTALL)
_HOLE = re.compile("\ue000(\\d+)\ue001")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_GAP = re.compile(f"(?<=[{_HAN}{re.escape(CJK_PUNCT)}])[ \t\u00a0\u3000]+(?=[{_HAN}{re.escape(CJK_PUNCT)}])")
_MAX_PASSES = 8


@dataclass
class NormalizeOptions:
    """Which normalisation steps run (all on by default except traditional -> simplified)."""

    nfkc: bool = True
    keep_cjk_punct: bool = True
    strip_html: bool = True
    control_chars: bool = True
    whitespace: bool = True
    t2s: bool = False
    cjk_spaces: bool = False  # remove spaces between two Chinese characters or marks (`中 国` -> `中国`)


class Normalizer:
    """A callable text normaliser built from `NormalizeOptions`."""

    def __init__(self, options: NormalizeOptions | None = None):
        self.options = options or NormalizeOptions()
        self._converter = _opencc_t2s() if self.options.t2s else None

    def __call__(self, text: str) -> str:
        """`text` normalised, idempotently: the steps repeat until the text stops changing, so what one pass
        uncovers (a tag escaped as `&lt;p&gt;` or written full-width `＜ｐ＞`, an entity escaped twice) is removed
        too, and normalising a normalised text changes nothing (at most `_MAX_PASSES` passes)."""
        for _ in range(_MAX_PASSES):
            once = self._once(text)
            if once == text:
                break
            text = once
        return text

    def _once(self, text: str) -> str:
        """One pass; Markdown code (fenced blocks, inline spans) only gets NFKC, control characters and t2s, so its
        tags, entities and spacing stay as written (a program's `"a  b"` or `List<String>`)."""
        opts = self.options
        code: list[str] = []
        if (opts.strip_html or opts.whitespace) and "`" in text and "\ue000" not in text and "\ue001" not in text:
            text = CODE.sub(lambda m: _hole(code, m.group()), text)
        if opts.strip_html:
            text = strip_html(text)
        text = self._characters(text)
        if opts.whitespace:
            text = normalize_whitespace(text)
        if opts.cjk_spaces:
            text = _CJK_GAP.sub("", text)
        return _HOLE.sub(lambda m: self._characters(code[int(m.group(1))]), text) if code else text

    def _characters(self, text: str) -> str:
        """The character-level steps: NFKC, control characters, traditional -> simplified."""
        opts = self.options
        if opts.nfkc:
            text = nfkc(text, opts.keep_cjk_punct)
        if opts.control_chars:
            text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        if self._converter is not None:
            text = self._converter.convert(text)
        return text


def _hole(code: list[str], segment: str) -> str:
    """Keep `segment` aside in `code` and return the placeholder that stands for it until it is put back."""
    code.append(segment)
    return f"\ue000{len(code) - 1}\ue001"


def nfkc(text: str, keep_cjk_punct: bool = True) -> str:
    """NFKC-normalise `text`, optionally leaving full-width Chinese punctuation alone."""
    if not keep_cjk_punct:
        return unicodedata.normalize("NFKC", text)
    parts = _CJK_PUNCT_SPLIT.split(text)
    return "".join(part if part in CJK_PUNCT and part else unicodedata.normalize("NFKC", part) for part in parts)


def strip_html(text: str) -> str:
    """Remove tags of HTML elements (`HTML_ELEMENTS`, attributes in HTML syntax) and comments (block tags become
    newlines) and unescape entities like &amp; and &nbsp;."""
    if "<" in text:
        text = _BLOCK_TAG.sub("\n", text)
        text = _TAG.sub("", text)
    return html.unescape(text) if "&" in text else text


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs inside lines, drop trailing spaces, keep at most one blank line, strip the
    text's ends. Leading indentation of a line is kept (code stays runnable)."""
    lines = []
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        lines.append(line[: len(line) - len(body)] + _SPACES.sub(" ", body).rstrip() if body.strip() else "")
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _opencc_t2s():
    try:
        import opencc
    except ImportError:  # pragma: no cover - opencc is a declared dependency
        raise SftlabError("--t2s needs the opencc package (pip install opencc)") from None
    return opencc.OpenCC("t2s")
