"""Per-request decoding settings and next-token choice (greedy, or temperature / top-p with a seed).

Every row in a batch keeps its own settings and its own `torch.Generator`, so a seeded sampled answer
does not depend on which other requests happen to share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


@dataclass
class SamplingParams:
    """How one request decodes. temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def make_generator(self) -> torch.Generator | None:
        """A generator seeded from `seed` (or from torch's global RNG when unset); None when greedy."""
        if self.greedy:
            return None
        generator = torch.Generator()
        generator.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        return generator


def choose_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token id from one row of logits `[vocab]`."""
    if params.greedy:
        return int(torch.argmax(logits).item())
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = logits.float().unsqueeze(0)
    scores = TemperatureLogitsWarper(params.temperature)(None, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs[0], 1, generator=generator).item())
