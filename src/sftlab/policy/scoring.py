"""The fine-tuned model as a scorer: P(是) against P(否) for each 是/否 prompt, batched.

`score_candidates(model_dir, prompts)` loads a run dir (its `model/` and the template in its
config.yaml), a model dir or an adapter dir with `sftlab.infer.loading.load_served`, renders each
prompt as a user turn followed by the assistant generation prompt exactly as training encodes it,
and reads the next-token distribution: score = p(是) / (p(是) + p(否)) over the first token of each
answer. Prompts are scored in left-padded batches (explicit position ids, logits of the last
position only), in fp32 or, with `precision="bf16"`, under bf16 autocast (about twice as fast on
CPUs with AMX; the ranking barely moves). A model with its own code (config.json's `auto_map`) loads only with
`trust_remote_code` (the policy commands' `--trust-remote-code`). When the two answers share their first token
under a tokenizer, it falls back to the full answer likelihood (`sftlab.eval.scoring.score_continuations`).
"""

from __future__ import annotations

from typing import Sequence

from sftlab.policy.examples import NO, YES


class ModelScorer:
    """A loaded model that scores 是/否 prompts; build once, call many times (push and API reuse it)."""

    def __init__(self, model_dir, batch_size: int = 8, max_length: int = 1024, precision: str = "fp32",
                 key: str = "--model", trust_remote_code: bool = False):
        from sftlab.infer.loading import load_served

        from sftlab.errors import SftlabError

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        if batch_size < 1:
            raise SftlabError(f"--batch-size must be at least 1, got {batch_size}")
        # errors name the option that gave model_dir; code shipped with the model runs only with --trust-remote-code
        self.served = load_served(model_dir, key=key, trust_remote_code=trust_remote_code)
        self.batch_size, self.max_length, self.precision = batch_size, max_length, precision
        self.version = str(model_dir)

    def _answer_split(self, prompt: str) -> tuple[list[int], int, int] | None:
        """(prompt ids, first id of 是, first id of 否), or None when the answers share their first token."""
        from sftlab.eval.scoring import encode_answer

        user = [{"role": "user", "content": prompt}]
        heads = []
        for answer in (YES, NO):
            ids, labels = encode_answer(self.served.tokenizer, user, answer, self.served.template)
            first = next(i for i, label in enumerate(labels) if label != -100)
            heads.append((ids[:first], ids[first]))
        (prefix, yes_id), (other_prefix, no_id) = heads
        if prefix != other_prefix or yes_id == no_id:
            return None
        return prefix[-self.max_length:], yes_id, no_id

    def __call__(self, prompts: Sequence[str]) -> list[float]:
        """Probability of 是 for each prompt."""
        import torch

        split = [self._answer_split(p) for p in prompts]
        scores = [0.0] * len(prompts)
        fast = [i for i, s in enumerate(split) if s is not None]
        slow = [i for i, s in enumerate(split) if s is None]
        order = sorted(fast, key=lambda i: len(split[i][0]))
        model = self.served.model
        device = next(model.parameters()).device
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), autocast:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                width = max(len(split[i][0]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):
                    seq = split[index][0]
                    ids[row, width - len(seq):] = torch.tensor(seq)
                    mask[row, width - len(seq):] = 1
                positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                            logits_to_keep=1)
                logits = out.logits[:, -1].float()
                for row, index in enumerate(batch):
                    _, yes_id, no_id = split[index]
                    pair = torch.stack([logits[row, yes_id], logits[row, no_id]])
                    scores[index] = float(torch.softmax(pair, dim=0)[0])
        if slow:
            scores_slow = self._full_likelihood([prompts[i] for i in slow])
            for index, value in zip(slow, scores_slow):
                scores[index] = value
        return scores

    def _full_likelihood(self, prompts: Sequence[str]) -> list[float]:
        from sftlab.eval.scoring import score_continuations, softmax

        messages = [[{"role": "user", "content": p}] for p in prompts]
        pairs = score_continuations(self.served.model, self.served.tokenizer, messages, [[YES, NO]] * len(prompts),
                                    self.served.template, self.batch_size)
        return [softmax(pair)[0] for pair in pairs]


def score_candidates(model_dir, prompts: Sequence[str], batch_size: int = 8, precision: str = "fp32",
                     trust_remote_code: bool = False) -> list[float]:
    """P(是) vs P(否) for each prompt under the model at `model_dir` (run dir, model dir or adapter dir)."""
    scorer = ModelScorer(model_dir, batch_size=batch_size, precision=precision, trust_remote_code=trust_remote_code)
    return scorer(prompts)
