"""Turn generated token ids into text pieces as they arrive, honouring stop strings.

Text is re-decoded from all generated ids at each step (so multi-byte characters split over several
tokens come out whole), and any tail that could still become a stop string is held back until it
either completes the stop string (generation ends there, the stop string is not returned) or diverges.
"""

from __future__ import annotations


class IncrementalText:
    """Accumulates token ids of one answer and hands out the new, final part of its text."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def push(self, token_ids: list[int]) -> str:
        """Add tokens (stop tokens excluded by the caller) and return text that is now safe to show."""
        self.ids.extend(token_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop:
            at = text.find(stop, max(0, len(self.emitted) - len(stop) + 1))
            if at != -1:
                self.stopped = True
                text = text[:at]
        if not self.stopped:
            text = text.rstrip("\ufffd")  # an incomplete multi-byte character waits for its next token
            text = text[: len(text) - self._held_tail(text)]
        return self._advance(text)

    def add(self, token_ids: list[int]) -> None:
        """Add tokens without decoding (for answers that are only read whole, without stop strings)."""
        self.ids.extend(token_ids)

    def finish(self) -> str:
        """Flush what was held back once generation is over."""
        if self.stopped:
            return ""
        return self._advance(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    @property
    def text(self) -> str:
        return self.emitted

    def _held_tail(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.emitted) or not text.startswith(self.emitted):
            return ""
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta
