"""PII redaction for `sftlab data clean --redact-pii`: replaces e-mail addresses, phone numbers, mainland-China
resident ID numbers, bank/credit card numbers and IPv4 addresses with typed placeholders.

    redactor = Redactor(parse_kinds("email,phone"))
    redactor("Mail a.b@corp.com or call 138 1234 5678")   # -> "Mail [EMAIL] or call [PHONE]"
    redactor.counts                                       # -> {"email": 1, "phone": 1}
    redactor.redact_example(example)   # a copy: contents, tool-call arguments and tool results redacted
    redactor.fields                    # -> {"contents": 2, "tool_arguments": 0, "tool_results": 0}

Detection is regular expressions plus validation: ID numbers need a real birth date and a correct ISO 7064
MOD 11-2 check character, card numbers a correct Luhn digit, IPv4 addresses must parse with `ipaddress`.
Kinds run in the fixed order of `KINDS`, so text taken by an earlier kind (an 18-digit ID that is also
Luhn-valid) gets that kind's placeholder. Business hotlines (400/800 service numbers, North American toll-free
numbers) are public, not personal, and stay (`is_service_number`). Digits are ASCII digits; `data clean`
normalises full-width digits first (NFKC) unless `--no-normalize`/`--no-nfkc` is given. docs/data.md lists what
is and is not detected.

In tool-calling examples, call arguments (an object, or JSON text of one) and tool results that are JSON text
(an object or array) have their string values redacted, never keys, numbers or structure, so JSON stays valid
and JSON text stays text (`sftlab.datawork.jsontext` walks the JSON); other tool results are redacted as plain
text. The `tools` list, call names and ids are left alone. The fields of the input rows kept beside an example
(`_extra`: ids, metadata, see `records.load_examples`) have their string values redacted in the same way.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import re
from typing import Callable

from sftlab.datawork.jsontext import map_arguments, map_json_or_text, map_json_value
from sftlab.errors import SftlabError

KINDS = ("email", "id", "card", "phone", "ip")
FIELDS = ("contents", "tool_arguments", "tool_results")  # where replacements are counted (Redactor.fields),
# and "other_fields" (the rows' extra fields) once one of those has a replacement
PLACEHOLDERS = {"email": "[EMAIL]", "id": "[ID]", "card": "[CARD]", "phone": "[PHONE]", "ip": "[IP]"}

_NOT_BEFORE = r"(?<![0-9A-Za-z])"  # digit kinds never start or end inside a longer run of digits or letters
_NOT_AFTER = r"(?![0-9A-Za-z])"
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])")
_CN_ID = re.compile(_NOT_BEFORE + r"[1-9][0-9]{5}(?:19|20)[0-9]{9}[0-9Xx]" + _NOT_AFTER)
_CARD = re.compile(r"(?<![0-9A-Za-z+])(?:"  # never right after "+": +8613812345678 is a phone number
                   r"[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,3})?"  # 4-4-4[-4][-1..3]
                   r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5}"                               # 4-6-5 (Amex, Diners)
                   r"|[0-9]{13,19})" + _NOT_AFTER)
_PHONES = (
    # +CC then digit groups (8-15 digits in all, see _phone_length): +44 20 7946 0958, +86-10-1234-5678
    re.compile(r"(?<![0-9A-Za-z+])\+[1-9][0-9]{0,2}(?:[ .-]?\(0?[0-9]{1,4}\))?(?:[ .-]?[0-9]{1,5}){1,5}(?![0-9])"),
    # mainland-China mobile: 13812345678, 138 1234 5678, 138-1234-5678, optional +86 / 0086
    re.compile(_NOT_BEFORE + r"(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}" + _NOT_AFTER),
    # North American: (415) 555-2671, 415-555-2671, 415.555.2671, 1-415-555-2671 (separators required)
    re.compile(r"(?<![0-9A-Za-z+])(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}"
               + _NOT_AFTER),
)
# a quad right after a letter (v1.2.3.4) or after "version", "ver", "版本", "版本号" (optional colon) is a version
_VERSION_WORD = re.compile(r"(?:version|ver\.?|版本号?)\s*[:：]?\s*", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![0-9A-Za-z.])(?:" + _VERSION_WORD.pattern + r")?[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
                   r"(?![0-9A-Za-z]|\.[0-9])", re.IGNORECASE)
_ID_WEIGHTS = [2 ** (17 - i) % 11 for i in range(17)]
_ID_CHECK = "10X98765432"


def parse_kinds(value: str | None, option: str = "--redact-pii") -> list[str]:
    """'phone,email' -> ['email', 'phone'] (in `KINDS` order); 'all' or None -> every kind."""
    names = [name.strip().lower() for name in ("all" if value is None else value).split(",") if name.strip()]
    if "all" in names:
        return list(KINDS)
    unknown = [name for name in names if name not in KINDS]
    if unknown or not names:
        given = f"unknown kind {unknown[0]!r}" if unknown else "no kind given"
        raise SftlabError(f"{option}: {given}; valid kinds: {', '.join(KINDS)} (or all)")
    return [kind for kind in KINDS if kind in names]


def luhn_valid(digits: str) -> bool:
    """True when the last digit of `digits` is its Luhn check digit."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def cn_id_valid(number: str) -> bool:
    """True for an 18-character mainland-China resident ID with a real birth date and a correct check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    check = _ID_CHECK[sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS)) % 11]
    return number[17].upper() == check


def _whole(valid: Callable[[str], bool]) -> Callable[[str], int]:
    return lambda text: len(text) if valid(text) else 0


def _card_valid(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


# public business numbers, not personal data: mainland-China 400/800 service hotlines (400-820-8888) and North
# American toll-free numbers (1-800-555-0199); both are 10 digits after the country code (86 or 1) if any
_CN_HOTLINE_PREFIXES = ("400", "800")
_NANP_TOLL_FREE = ("800", "833", "844", "855", "866", "877", "888")


def is_service_number(text: str) -> bool:
    """True for a business hotline: 400/800 + 7 digits, optionally after +86/0086, or a North American
    toll-free number (800, 833, 844, 855, 866, 877, 888 + 7 digits), optionally after 1/+1."""
    digits = re.sub(r"[^0-9]", "", text)
    if len(digits) == 12 and digits.startswith("86") or len(digits) == 14 and digits.startswith("0086"):
        return digits[-10:-7] in _CN_HOTLINE_PREFIXES
    if len(digits) == 11 and digits.startswith("1"):
        return digits[1:4] in _NANP_TOLL_FREE
    return len(digits) == 10 and digits[:3] in _CN_HOTLINE_PREFIXES + _NANP_TOLL_FREE


def _phone_length(text: str) -> int:
    """Characters of `text` that form the phone number: trailing digit groups beyond 15 digits (a number
    followed by a space and more digits) are left out; 0 when fewer than 8 digits remain or the number is a
    business hotline (`is_service_number`)."""
    while sum(char.isdigit() for char in text) > 15:
        cut = max(text.rfind(" "), text.rfind("-"), text.rfind("."))
        if cut <= 0:
            return 0
        text = text[:cut]
    if sum(char.isdigit() for char in text) < 8 or is_service_number(text):
        return 0
    return len(text)


def _ipv4_length(text: str) -> int:
    if _VERSION_WORD.match(text):
        return 0
    try:
        ipaddress.IPv4Address(text)  # rejects octets above 255 and leading zeros
    except ValueError:
        return 0
    return len(text)


# kind -> (pattern, how many leading characters of a match are PII: 0 = none)
_DETECTORS: dict[str, list[tuple[re.Pattern, Callable[[str], int]]]] = {
    "email": [(_EMAIL, len)],
    "id": [(_CN_ID, _whole(cn_id_valid))],
    "card": [(_CARD, _whole(_card_valid))],
    # a mainland-China mobile (_PHONES[1]) is personal whatever follows its 1: 1800..., 1888... are mobiles,
    # not North American toll-free numbers, so the hotline test is not applied to it
    "phone": [(_PHONES[0], _phone_length), (_PHONES[1], len), (_PHONES[2], _phone_length)],
    "ip": [(_IPV4, _ipv4_length)],
}


class Redactor:
    """A callable that redacts the chosen kinds of PII from a text and counts replacements per kind; its
    `redact_example` also reaches tool calls and tool results and counts replacements per field (`FIELDS`)."""

    def __init__(self, kinds: list[str] | None = None):
        self.kinds = [kind for kind in KINDS if kinds is None or kind in kinds]
        self.counts = {kind: 0 for kind in self.kinds}
        self.fields = {name: 0 for name in FIELDS}

    def __call__(self, text: str) -> str:
        for kind in self.kinds:
            for pattern, measure in _DETECTORS[kind]:
                text = pattern.sub(lambda match, k=kind, m=measure: self._replace(match.group(0), k, m), text)
        return text

    def _replace(self, found: str, kind: str, measure: Callable[[str], int]) -> str:
        length = measure(found)
        if not length:
            return found
        self.counts[kind] += 1
        return PLACEHOLDERS[kind] + found[length:]

    def redact_example(self, example: dict) -> dict:
        """A redacted copy of a canonical example: message contents (or `text`), tool-call arguments, tool
        results and the string values of the row's other fields (`_extra`, at any depth); the `tools` list, call
        names and ids and labels are unchanged."""
        out = copy.deepcopy(example)
        if out.get("_extra"):
            out["_extra"] = self._counted("other_fields", lambda value: map_json_value(value, self), out["_extra"])
        if "messages" not in out:
            out["text"] = self._counted("contents", self, out["text"])
            return out
        for message in out["messages"]:
            tool = message.get("role") == "tool"
            if isinstance(message.get("content"), str):  # may be null beside tool_calls (OpenAI form)
                redact = (lambda text: map_json_or_text(text, self)) if tool else self
                message["content"] = self._counted("tool_results" if tool else "contents", redact, message["content"])
            for call in message.get("tool_calls") or []:
                function = call["function"]
                function["arguments"] = self._counted("tool_arguments", lambda value: map_arguments(value, self),
                                                      function["arguments"])
        return out

    def _counted(self, field: str, redact: Callable, value):
        before = sum(self.counts.values())
        value = redact(value)
        found = sum(self.counts.values()) - before
        if found or field in self.fields:  # other_fields is listed only when it has replacements
            self.fields[field] = self.fields.get(field, 0) + found
        return value
