"""The fused head loss (gradients made in forward) against autograd through plain logits, and fp32 master weights."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sftlab.train.loss import FusedHeadLoss, fused_head_loss, head_chunk_rows
from sftlab.train.optim import MasterWeightAdamW, build_optimizer


def _reference(hidden, weight, targets, softcap):
    logits = (hidden @ weight.T).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def _inputs(rows=37, dim=16, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, dim, generator=gen, requires_grad=True)
    return hidden, weight, torch.randint(0, vocab, (rows,), generator=gen)


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("rows", [8, 1000])
def test_fused_head_loss_matches_autograd(softcap, rows):
    hidden, weight, targets = _inputs()
    expected = _reference(hidden, weight, targets, softcap)
    (expected * 0.5).backward()  # a non-unit incoming gradient must scale the stored ones
    want = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    total = fused_head_loss(hidden, weight, targets, softcap, rows)
    (total * 0.5).backward()
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad, want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad, want[1], rtol=1e-4, atol=1e-5)
    assert weight.grad.is_contiguous()


def test_a_short_last_chunk_is_padded_so_the_matmul_shapes_repeat(monkeypatch):
    import sftlab.train.loss as loss_module

    monkeypatch.setattr(loss_module, "ROW_ALIGN", 8)
    widths = set()
    for count in (37, 41, 45):  # last chunks of 5, 9 and 13 rows: padded to 8, 16 and 16
        hidden, weight, targets = _inputs(rows=count, dim=12)
        with torch.profiler.profile(record_shapes=True) as prof:
            total = fused_head_loss(hidden, weight, targets, None, 16)
        widths |= {e.input_shapes[0][0] for e in prof.events() if e.name == "aten::mm" and e.input_shapes[0][1] == 12}
        torch.testing.assert_close(total, _reference(hidden, weight, targets, None), rtol=1e-5, atol=1e-5)
    assert widths == {8, 16}


def test_frozen_head_gets_no_gradient_and_input_gradient_is_right():
    hidden, weight, targets = _inputs()
    weight.requires_grad_(False)
    _reference(hidden, weight, targets, None).backward()
    want = hidden.grad.clone()
    hidden.grad = None
    FusedHeadLoss.apply(hidden, weight, targets, None, 10).backward()
    assert weight.grad is None
    torch.testing.assert_close(hidden.grad, want, rtol=1e-4, atol=1e-5)


def test_under_bf16_autocast_it_stays_close_to_the_autocast_reference():
    hidden, weight, targets = _inputs(rows=64, dim=32, vocab=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")
        total = fused_head_loss(hidden, weight, targets, None, 16)
    torch.testing.assert_close(total, expected, rtol=1e-3, atol=1e-3)
    total.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def _logit_gradient(logits, targets):
    """Gradient of the summed fp32 cross-entropy w.r.t. the logits: softmax - one_hot, in fp32."""
    logits = logits.float().detach().requires_grad_(True)
    F.cross_entropy(logits, targets, reduction="sum").backward()
    return logits.grad


def test_bf16_chunks_keep_a_confident_targets_gradient():
    # p_t rounds to 1.0 in bf16; its gradient p_t - 1 must still be minus the other tokens' mass, not 0
    hidden = torch.zeros(4, 8, dtype=torch.bfloat16)
    hidden[:, 0] = torch.tensor([12.0, 9.0, 0.5, 0.0])  # confident, less so, unsure, uniform
    weight = torch.zeros(300, 8, dtype=torch.bfloat16)
    weight[7, 0] = 1.0
    weight[:, 1] = torch.linspace(-1, 1, 300).to(torch.bfloat16)
    hidden[:, 1] = 0.5
    targets = torch.tensor([7, 7, 7, 3])
    hidden.requires_grad_(True)
    total = fused_head_loss(hidden, weight, targets, None, 4)
    logits = hidden.detach() @ weight.T
    # a bf16 p_t is within 2^-9 of its value: 0.002 on a token's loss, against up to 0.03 for a logit of 10 in bf16
    torch.testing.assert_close(total, F.cross_entropy(logits.float(), targets, reduction="sum"), rtol=1e-3, atol=1e-5)
    total.backward()
    want = _logit_gradient(logits, targets).to(torch.bfloat16)  # the fp32 gradient, rounded once
    assert want[0, 7] != 0 and -0.01 < float(want[0, 7]) < 0  # p_t is about 0.9998
    torch.testing.assert_close(hidden.grad.float(), (want.float() @ weight.float()), rtol=2e-2, atol=1e-6)


def test_an_underflowed_target_probability_gets_a_finite_exact_loss():
    hidden = torch.tensor([[200.0], [1.0]], requires_grad=True)
    weight = torch.tensor([[1.0], [-1.0], [0.0]])
    targets = torch.tensor([1, 0])  # row 0: the target is 400 below the best logit, exp underflows to 0
    total = fused_head_loss(hidden, weight, targets, None, 8)
    expected = F.cross_entropy(hidden.detach() @ weight.T, targets, reduction="sum")
    assert torch.isfinite(total) and float(expected) > 399
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-4)


def test_bf16_gradients_match_the_rounded_fp32_softmax():
    hidden, weight, targets = _inputs(rows=64, dim=32, vocab=300)
    hidden, weight = hidden.detach().to(torch.bfloat16), weight.detach().to(torch.bfloat16)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    fused_head_loss(hidden, weight, targets, None, 16).backward()
    grad = _logit_gradient(hidden.detach() @ weight.detach().T, targets).to(torch.bfloat16)
    torch.testing.assert_close(hidden.grad, grad @ weight.detach(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(weight.grad, grad.T @ hidden.detach(), rtol=2e-2, atol=2e-2)


def test_chunk_rows_bound_the_logits_memory():
    assert head_chunk_rows(16_000, 2) == 2048 and head_chunk_rows(16_000, 4) == 1024  # <= 64 MiB in the matmul dtype,
    assert head_chunk_rows(128_000, 2) == 256 and head_chunk_rows(16_000, 2, budget=2**20) == 256  # a multiple of 256
    assert head_chunk_rows(262_144, 2) == 256 and head_chunk_rows(10**9, 4) == 256  # never thinner than 256 rows


def _bf16_model(seed=0, value=None):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).to(torch.bfloat16)
    if value is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
    return model


def test_low_precision_parameters_get_fp32_master_weights():
    model = _bf16_model()
    assert isinstance(build_optimizer(model, 1e-3, 0.0), MasterWeightAdamW)
    assert not isinstance(build_optimizer(model, 1e-3, 0.0, master_weights=False), MasterWeightAdamW)
    assert not isinstance(build_optimizer(model.float(), 1e-3, 0.0), MasterWeightAdamW)


def test_master_weights_keep_updates_below_bf16_resolution():
    """Steps of 1e-4 on weights of 1.0 (bf16 spacing there: 2^-7) are lost by AdamW on bf16 weights; the fp32
    masters add them up exactly as fp32 AdamW does, and the model's weights move once the sum shows in bf16."""
    plain, mastered = _bf16_model(value=1.0), _bf16_model(value=1.0)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    opt_master = build_optimizer(mastered, 1e-4, 0.0)
    reference = [p.detach().float().clone().requires_grad_(True) for p in mastered.parameters()]
    opt_ref = torch.optim.AdamW(reference, lr=1e-4, weight_decay=0.0, fused=True)
    start = [p.detach().clone() for p in plain.parameters()]
    for _ in range(60):
        for model, opt in ((plain, opt_plain), (mastered, opt_master)):
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            opt.step()
            opt.zero_grad()
        for p in reference:
            p.grad = torch.ones_like(p)
        opt_ref.step()
    assert all(torch.equal(p, s) for p, s in zip(plain.parameters(), start))  # every update rounded away
    masters = [m for group in opt_master.param_groups for m in group["params"]]
    for master, ref, param in zip(masters, reference, mastered.parameters()):
        torch.testing.assert_close(master, ref.detach(), rtol=0, atol=0)  # exactly fp32 AdamW
        assert torch.equal(param, master.to(torch.bfloat16))
    assert all(not torch.equal(p, s) for p, s in zip(mastered.parameters(), start))


def test_master_weights_survive_a_state_dict_round_trip():
    model = _bf16_model()
    opt = build_optimizer(model, 1e-3, 0.0)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    state = copy.deepcopy(opt.state_dict())  # as written to and read from optimizer.pt
    resumed = _bf16_model(seed=1)  # different weights: loading the state must restore them from the masters
    opt2 = build_optimizer(resumed, 1e-3, 0.0)
    opt2.load_state_dict(state)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    grads = [torch.randn_like(p) for p in model.parameters()]
    for m, o in ((model, opt), (resumed, opt2)):
        for p, g in zip(m.parameters(), grads):
            p.grad = g.clone()
        o.step()
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_bf16_model_trains_through_master_weights_in_the_loop(tmp_path):
    """model.dtype=bfloat16 with train.precision=bf16: AdamW keeps fp32 masters and the bf16 weights follow them."""
    from pathlib import Path

    from sftlab.config import load_config
    from sftlab.train.loop import cleanup, optimizer_step
    from sftlab.train.rundir import prepare_output_dir
    from sftlab.train.setup import build_session
    from test_train_loop import tiny_run

    cfg = load_config(None, [], base=tiny_run(tmp_path, model={"dtype": "bfloat16"}, train={"precision": "bf16"}))
    prepare_output_dir(Path(cfg.output.dir), resume=False, overwrite=False)
    session, _ = build_session(cfg, Path(cfg.output.dir), None, None)
    try:
        before = session.model.lm_head.weight.detach().clone()
        loss, _ = optimizer_step(session, [[0, 1, 2, 3]])
        optimizer = session.optimizer.optimizer
        masters = [m for group in optimizer.param_groups for m in group["params"]]
    finally:
        cleanup(session)
    assert isinstance(optimizer, MasterWeightAdamW) and all(m.dtype == torch.float32 for m in masters)
    assert session.model.lm_head.weight.dtype == torch.bfloat16 and torch.isfinite(torch.tensor(loss))
    assert not torch.equal(session.model.lm_head.weight, before)
    for master, param in zip(masters, [p for g in optimizer.model_params for p in g]):
        assert torch.equal(param, master.to(torch.bfloat16))


@pytest.mark.parametrize("chunk_bytes", [1, 600, 2**40])
def test_master_weight_steps_in_chunks_equal_fp32_adamw(chunk_bytes, monkeypatch):
    """MasterWeightAdamW makes fp32 gradients a chunk at a time: every chunk size (one parameter per chunk,
    a few, all at once) gives bit-for-bit the fp32 AdamW of the masters, and the model gets their bf16."""
    import sftlab.train.optim as optim

    monkeypatch.setattr(optim, "STEP_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape).to(torch.bfloat16)) for shape in ((8, 16), (16,), (4, 8), (3,))]
    reference = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    groups = [{"params": params[:3], "weight_decay": 0.1}, {"params": params[3:], "weight_decay": 0.0}]
    ours = MasterWeightAdamW(groups, lr=1e-2, fused=True)
    theirs = torch.optim.AdamW([{"params": reference[:3], "weight_decay": 0.1},
                                {"params": reference[3:], "weight_decay": 0.0}], lr=1e-2, fused=True)
    for step in range(3):
        for index, (param, ref) in enumerate(zip(params, reference)):
            if step == 1 and index == 2:  # a parameter without a gradient this step is left alone
                param.grad, ref.grad = None, None
                continue
            grad = torch.randn(param.shape).to(torch.bfloat16)
            param.grad, ref.grad = grad, grad.float()
        ours.step()
        theirs.step()
        ours.zero_grad()
        theirs.zero_grad()
    masters = [m for group in ours.param_groups for m in group["params"]]
    for master, ref, param in zip(masters, reference, params):
        assert torch.equal(master, ref) and torch.equal(param, ref.to(torch.bfloat16))
    assert len(optim.MasterWeightAdamW._chunks(ours)) == 0  # no gradients left after zero_grad


@pytest.mark.parametrize("fused", [True, False])
def test_clipping_inside_the_master_weight_step_equals_clipping_the_gradients(fused):
    """clip_in_step: the norm torch reports, the gradients left as they are, and the same update as torch's
    clip_grad_norm_ followed by AdamW; only for the next step, and only when the norm is above the limit."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape).to(torch.bfloat16)) for shape in ((8, 16), (16,))]
    reference = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    ours = MasterWeightAdamW([{"params": params, "weight_decay": 0.1}], lr=1e-2, fused=fused)
    theirs = torch.optim.AdamW([{"params": reference, "weight_decay": 0.1}], lr=1e-2, fused=fused, foreach=not fused)
    for step, max_norm in enumerate((0.5, 1e9, 0.5)):
        grads = [torch.randn(p.shape).to(torch.bfloat16) * 3 for p in params]
        for param, ref, grad in zip(params, reference, grads):
            param.grad, ref.grad = grad.clone(), grad.float()
        expected_norm = float(torch.nn.utils.clip_grad_norm_(reference, max_norm))
        norm = ours.clip_in_step(max_norm)
        assert norm == pytest.approx(expected_norm, rel=1e-6) and norm > 0.5
        assert all(torch.equal(param.grad, grad) for param, grad in zip(params, grads))  # not rescaled in place
        ours.step()
        theirs.step()
        ours.zero_grad()
        theirs.zero_grad()
        masters = ours.param_groups[0]["params"]
        for master, ref in zip(masters, reference):
            torch.testing.assert_close(master, ref, rtol=1e-6, atol=1e-7), step
    assert ours.clip_divisor is None and getattr(ours, "grad_scale", None) is None  # nothing carried to a later step


def test_master_weight_step_runs_a_closure_with_gradients_and_returns_its_loss():
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = MasterWeightAdamW([{"params": [param], "weight_decay": 0.0}], lr=1e-2, fused=True)

    def closure():
        optimizer.zero_grad()
        loss = (param.float() ** 2).sum()
        loss.backward()  # fails under no_grad: the loss would have no grad_fn
        return loss

    assert optimizer.step(closure).item() == 4.0
    assert torch.all(param < 1)
