"""The supervised-position causal-LM loss matches transformers' full-logits loss and its gradients."""

import pytest
import torch

from sftlab.models.tiny import ARCH_TEMPLATE, make_tiny_model, make_tokenizer
from sftlab.train.loss import IGNORE_INDEX, causal_lm_loss_sum, classification_loss_sum, count_supervised_tokens, row_logprobs


def _lm_batch(vocab: int, pad_id: int):
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab, (3, 12), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # a padded row
    input_ids[1, 9:] = pad_id
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX  # prompt positions
    labels[attention_mask == 0] = IGNORE_INDEX
    labels[2, 6] = IGNORE_INDEX  # a hole in the middle
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
@pytest.mark.parametrize("chunk", [1024, 5])
def test_head_on_supervised_positions_matches_full_logits(arch, chunk):
    tok = make_tokenizer(ARCH_TEMPLATE[arch])
    model = make_tiny_model(arch, tok, hidden=32, layers=1)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 0.5  # small cap so soft-capping changes the loss
    model.eval()  # no dropout, so both passes see the same network
    batch = _lm_batch(len(tok), tok.pad_token_id)

    model.zero_grad()
    reference = model(**batch).loss
    count = count_supervised_tokens(batch["labels"])
    (reference * count).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    total, n = causal_lm_loss_sum(model, batch, chunk=chunk)
    total.backward()
    assert n == count == 3 * 11 - 3 * 3 - 3 - 1
    torch.testing.assert_close(total / n, reference, rtol=1e-5, atol=1e-6)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype, autocast, item", [(torch.float32, False, 4), (torch.bfloat16, False, 2),
                                                 (torch.float32, True, 2)])
def test_fused_head_chunks_are_sized_in_the_matmul_dtype(dtype, autocast, item, monkeypatch):
    import sftlab.train.loss as loss_module

    tok = make_tokenizer("chatml")
    model = make_tiny_model("qwen2", tok, hidden=32, layers=1).to(dtype)
    rows = []
    fused = loss_module.fused_head_loss
    monkeypatch.setattr(loss_module, "fused_head_loss", lambda *args: rows.append(args[-1]) or fused(*args))
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        causal_lm_loss_sum(model, _lm_batch(len(tok), tok.pad_token_id))
    assert rows == [loss_module.head_chunk_rows(len(tok), item)]
    expected = loss_module.FUSED_CHUNK_BYTES // (item * len(tok)) // loss_module.ROW_ALIGN * loss_module.ROW_ALIGN
    assert loss_module.head_chunk_rows(len(tok), item) == expected


def test_no_supervised_positions_gives_zero_and_backward_works():
    tok = make_tokenizer("chatml")
    model = make_tiny_model("qwen2", tok, hidden=32, layers=1)
    batch = _lm_batch(len(tok), tok.pad_token_id)
    batch["labels"][:] = IGNORE_INDEX
    total, n = causal_lm_loss_sum(model, batch)
    total.backward()
    assert n == 0 and float(total.detach()) == 0.0


def test_classification_loss_is_summed_and_weighted():
    tok = make_tokenizer("none")
    model = make_tiny_model("bert", tok, num_labels=3, hidden=32, layers=1).eval()
    batch = {"input_ids": torch.randint(5, len(tok), (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 1])}
    total, n = classification_loss_sum(model, batch)
    mean = torch.nn.functional.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert n == 4
    torch.testing.assert_close(total / n, mean)
    weighted, _ = classification_loss_sum(model, batch, class_weights=torch.tensor([2.0, 1.0, 1.0]))
    assert float(weighted.detach()) > float(total.detach())
    from sftlab.train import validate

    unweighted, _ = validate.loss_sum(model, batch, "cls")  # validation loss: no class weights, whatever data.balance
    torch.testing.assert_close(unweighted, total)


def test_class_weights_are_balanced_over_the_training_labels():
    from types import SimpleNamespace

    from sftlab.config import load_config
    from sftlab.train.setup import _classifier_weights

    cfg = load_config(None, ["train.stage=cls", "data.balance=class_weight"], base={"model": {"path": "m"}, "data": {"train": "t"}})
    prepared = SimpleNamespace(train=[{"label": 0}] * 3 + [{"label": 1}], label_names=["a", "b", "c"])
    # sklearn "balanced": n_samples / (n_present_classes * count); a label absent from train keeps weight 1
    torch.testing.assert_close(_classifier_weights(prepared, cfg), torch.tensor([4 / 6, 4 / 2, 1.0]))
    cfg.data.balance = "none"
    assert _classifier_weights(prepared, cfg) is None


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_row_logprobs_match_full_log_softmax(arch):
    tok = make_tokenizer(ARCH_TEMPLATE[arch])
    model = make_tiny_model(arch, tok, hidden=32, layers=1)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 0.5
    model.eval()
    batch = _lm_batch(len(tok), tok.pad_token_id)
    sums, counts = row_logprobs(model, batch, chunk=4)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask
    torch.testing.assert_close(sums, picked.sum(dim=1), rtol=1e-5, atol=1e-5)
    assert counts.tolist() == mask.sum(dim=1).tolist()
