"""train.gradient_checkpointing: selective keeps the matmul/attention outputs, recomputes the rest, same gradients."""

import pytest
import torch

from sftlab.config import load_config
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tiny_model
from sftlab.train.checkpointing import enable_activation_checkpointing
from sftlab.train.loss import causal_lm_loss_sum


def _batch(vocab: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 24), generator=generator)
    labels = ids.clone()
    labels[:, :8] = -100
    return {"input_ids": ids, "labels": labels}


def _saved_bytes_and_grads(model, batch):
    """Bytes still allocated when forward ends (what autograd keeps), the loss and every parameter's gradient."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        total, count = causal_lm_loss_sum(model, batch)
    kept = sum(event.self_cpu_memory_usage for event in prof.events())
    (total / count).backward()
    return kept, total.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
def test_selective_checkpointing_keeps_less_and_gives_the_same_gradients(arch):
    torch.manual_seed(0)
    plain = make_tiny_model(arch)
    plain.train()
    batch = _batch(plain.config.vocab_size)
    results = {}
    for mode in (False, "selective", True):
        model = make_tiny_model(arch)
        model.load_state_dict(plain.state_dict())
        model.train()
        enable_activation_checkpointing(model, mode)
        results[mode] = _saved_bytes_and_grads(model, batch)
    (plain_bytes, plain_loss, plain_grads) = results[False]
    (selective_bytes, selective_loss, selective_grads) = results["selective"]
    assert results[True][0] < selective_bytes < 0.8 * plain_bytes  # full < selective < none (0.73, 0.57 measured)
    assert selective_loss == pytest.approx(plain_loss, rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(selective_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_checkpointing_value_names_the_field(tmp_path):
    with pytest.raises(SftlabError, match="train.gradient_checkpointing"):
        load_config(None, ["train.gradient_checkpointing=sometimes", f"model.path={tmp_path}", "data.train=x.jsonl"])
