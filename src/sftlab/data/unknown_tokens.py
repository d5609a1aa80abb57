"""The tokenizer's unknown token counted in token sequences, for the run log and `sftlab data stats`.

    unknown = UnknownTokens(tokenizer.unk_token_id)
    unknown.add(ids, "train.jsonl:3")             # per sequence
    unknown.summary(total_tokens)                 # {"count", "share", "examples", "first"}
"""

from __future__ import annotations


class UnknownTokens:
    """Counts the tokenizer's unknown token (`[UNK]`, `<unk>`) in token sequences: text the tokenizer cannot
    represent (Chinese through an English-only WordPiece vocabulary) trains as that one token. Used for the run's
    rows (`TokenizeStats.unknown_tokens`) and by `sftlab data stats`."""

    def __init__(self, unk_id: int | None):
        self.unk_id, self.count, self.examples, self.first = unk_id, 0, 0, None

    def add(self, ids, src: str | None) -> None:
        found = sum(1 for token in ids if token == self.unk_id) if self.unk_id is not None else 0
        if found:
            self.count += found
            self.examples += 1
            self.first = self.first or src

    def summary(self, total: int) -> dict:
        """{} without an unknown token; else count, share of `total` tokens, examples holding one, the first's src."""
        if self.unk_id is None:
            return {}
        return {"count": self.count, "share": round(self.count / total, 4) if total else 0.0,
                "examples": self.examples, "first": self.first}
