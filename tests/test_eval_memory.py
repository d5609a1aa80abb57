"""Evaluation's memory: the output head's logits are made one chunk of `eval_head_rows` positions at a time.

Before, evaluation ran the head over 1,024 positions at once (the loss's default without gradients): for Gemma 3
270M's 262,144-token head, 0.5 GiB of bf16 logits, a 1 GiB float32 copy and a 1 GiB log-softmax, which put a pt
run's peak 1-2 GiB over its training steps'. These tests count the largest tensor any op makes during an
evaluation (a dispatch hook, no timing or resident-memory threshold) on a tiny model whose head dominates.
"""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from sftlab.models.tiny import make_tokenizer, tiny_config
from sftlab.train import loss as loss_module
from sftlab.train.validate import eval_head_rows, evaluate_batches

VOCAB = 65536  # the smallest vocabulary whose float32 chunks are MIN_FUSED_ROWS rows (as 262k ones are); the
# head's [positions x VOCAB] logits outweigh everything else the tiny model makes


class _LargestTensor(TorchDispatchMode):
    """The bytes of the largest tensor among the outputs of the ops run under it."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.most = max(self.most, tensor.numel() * tensor.element_size())
        return out


def _model_and_batch(rows: int = 8, tokens: int = 80):
    tok = make_tokenizer("chatml")
    config = tiny_config("qwen2", tok, hidden=32, layers=1)
    config.vocab_size = VOCAB
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    input_ids = torch.randint(0, VOCAB, (rows, tokens))
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
    return model, batch


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluation_makes_the_heads_logits_one_chunk_at_a_time(precision):
    model, batch = _model_and_batch()
    rows = eval_head_rows(model)
    positions = batch["labels"][:, 1:].numel()
    assert rows == loss_module.MIN_FUSED_ROWS == 256 and positions > 2 * rows  # the batch spans three chunks
    autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    with torch.no_grad():
        expected = model(**batch).loss.item()  # transformers' full logits, computed before the hook is on
    hook = _LargestTensor()
    with hook:
        metrics = evaluate_batches(model, [dict(batch)], "pt", autocast)
    assert hook.most <= rows * VOCAB * 4  # one chunk's float32 logits; all positions at once would be 2.5x that
    assert hook.most < positions * VOCAB * 4
    tolerance = 1e-5 if precision == "fp32" else 2e-2  # bf16 matmuls against transformers' fp32 ones
    assert metrics["loss"] == pytest.approx(expected, rel=tolerance)


def test_chunks_follow_the_fused_head_losss_budget():
    """Evaluation sizes its float32 chunks by the training head's byte budget, at least MIN_FUSED_ROWS rows."""
    model, _ = _model_and_batch()
    assert eval_head_rows(model) == loss_module.head_chunk_rows(VOCAB, 4)
    small_vocab = AutoModelForCausalLM.from_config(tiny_config("qwen2", make_tokenizer("chatml"), hidden=32, layers=1))
    vocab = small_vocab.get_output_embeddings().weight.shape[0]
    rows = eval_head_rows(small_vocab)
    assert rows % loss_module.ROW_ALIGN == 0 and rows * vocab * 4 <= loss_module.FUSED_CHUNK_BYTES


def test_scoring_rows_makes_the_heads_logits_one_chunk_at_a_time():
    """`row_logprobs` (sftlab eval's scoring, task metrics) also ran 1,024 positions at a time by default."""
    model, batch = _model_and_batch()
    with torch.no_grad():
        expected, counts = loss_module.row_logprobs(model, batch, chunk=10**6)  # every position at once
        hook = _LargestTensor()
        with hook:
            sums, _ = loss_module.row_logprobs(model, batch)
    assert hook.most <= loss_module.MIN_FUSED_ROWS * VOCAB * 4
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-4)
    assert int(counts.sum()) == batch["labels"][:, 1:].numel()
