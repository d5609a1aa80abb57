"""Continuous batching over one shared KV cache: rows join at step boundaries and leave when done.

The batch is left-padded: every row's tokens end at the right edge, an attention mask marks the
real tokens and position ids count only real tokens, so each row computes what it would compute
alone. New rows are prefilled together, their cache is left-padded to the batch's length and
concatenated on the batch axis; finished rows are dropped with `batch_select_indices` and columns
that became padding for every row are trimmed. All rows of one batch use the same adapter.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from sftlab.infer.sampling import SamplingParams, choose_next_token


@dataclass(eq=False)
class Row:
    """One answer being generated: its prompt, settings and the tokens produced so far."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    generator: torch.Generator | None = None

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason


class DecodeBatch:
    """The rows currently decoding together, their KV cache and attention mask."""

    def __init__(self, model, pad_id: int, stop_ids: set[int], max_context: int,
                 activate: Callable[[str | None], contextlib.AbstractContextManager] | None = None):
        self.model = model
        self.pad_id = pad_id
        self.stop_ids = set(stop_ids)
        self.max_context = max_context
        self.activate = activate or (lambda adapter: contextlib.nullcontext())
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.device = next(model.parameters()).device
        forward = getattr(model, "get_base_model", lambda: model)().forward
        parameters = inspect.signature(forward).parameters
        self._keep_last_logits = "logits_to_keep" in parameters
        # transformers 5.x renamed forward's `past_key_values` to `cache` and warns on the old name
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"

    @property
    def adapter(self) -> str | None:
        return self.rows[0].adapter if self.rows else None

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def admit(self, new_rows: list[Row]) -> list[Row]:
        """Prefill `new_rows` (same adapter as the batch), choose their first token and join them to the batch."""
        if not new_rows:
            return []
        self.drop_finished()
        if self.rows and any(row.adapter != self.adapter for row in new_rows):
            raise ValueError("all rows of a batch must use the same adapter")
        width = max(len(row.prompt_ids) for row in new_rows)
        ids = torch.full((len(new_rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new_rows), width), dtype=torch.long)
        for i, row in enumerate(new_rows):
            ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids, dtype=torch.long)
            mask[i, width - len(row.prompt_ids):] = 1
            row.generator = row.params.make_generator()
        from transformers import DynamicCache

        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._forward(ids, mask, positions, cache, new_rows[0].adapter)
        self._merge(new_rows, cache, mask)
        self._choose(new_rows, logits)
        return new_rows

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Feed every unfinished row its last token and choose the next one; returns the rows that advanced."""
        self.drop_finished()
        if not self.rows:
            return []
        last = torch.tensor([[row.generated[-1]] for row in self.rows], dtype=torch.long)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True) - 1
        logits = self._forward(last, self.mask, positions, self.cache, self.adapter)
        self._choose(self.rows, logits)
        return list(self.rows)

    def drop_finished(self) -> list[Row]:
        """Remove finished rows from the batch and cache; returns them."""
        done = [row for row in self.rows if row.finish_reason is not None]
        if not done:
            return []
        keep = [i for i, row in enumerate(self.rows) if row.finish_reason is None]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return done
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index.cpu()]
        first_used = int((self.mask.sum(dim=0) > 0).nonzero()[0].item())
        if first_used:
            self.mask = self.mask[:, first_used:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first_used:], layer.values[:, :, first_used:]
        return done

    def _forward(self, ids, mask, positions, cache, adapter) -> torch.Tensor:
        extra = {"logits_to_keep": 1} if self._keep_last_logits else {}
        extra[self._cache_keyword] = cache
        with self.activate(adapter):
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=positions.to(self.device), use_cache=True, **extra)
        return out.logits[:, -1, :].float().cpu()

    def _choose(self, rows: list[Row], logits: torch.Tensor) -> None:
        for row, row_logits in zip(rows, logits):
            token = choose_next_token(row_logits, row.params, row.generator)
            if token in self.stop_ids:
                row.finish("stop")
                continue
            row.generated.append(token)
            if len(row.generated) >= row.params.max_new_tokens:
                row.finish("length")
            elif len(row.prompt_ids) + len(row.generated) >= self.max_context:
                row.finish("length")

    def _merge(self, new_rows: list[Row], cache, mask: torch.Tensor) -> None:
        """Join a freshly prefilled cache to the batch's, left-padding the shorter one in time."""
        if not self.rows:
            self.rows, self.cache, self.mask = list(new_rows), cache, mask
            return
        from transformers import DynamicCache

        width = max(self.mask.shape[1], mask.shape[1])
        pad_old, pad_new = width - self.mask.shape[1], width - mask.shape[1]
        layers = []
        for old, new in zip(self.cache.layers, cache.layers):
            keys = torch.cat([F.pad(old.keys, (0, 0, pad_old, 0)), F.pad(new.keys, (0, 0, pad_new, 0))], dim=0)
            values = torch.cat([F.pad(old.values, (0, 0, pad_old, 0)), F.pad(new.values, (0, 0, pad_new, 0))], dim=0)
            layers.append((keys, values))
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([F.pad(self.mask, (pad_old, 0)), F.pad(mask, (pad_new, 0))], dim=0)
        self.rows.extend(new_rows)
