"""The written-out training step (skebrm._fused) against autograd, for every batch plan."""

from __future__ import annotations

import pytest
import torch

from skebrm._fused import fused_plan_gradients, supports_fused
from skebrm._objectives import GridNLL, NCEPlus
from skebrm._training import accumulate_gradients
from skebrm.energy import (
    BasisEnergyNet,
    EnergyNet,
    Workspace,
    dropout_drop_mask,
    dropout_keep_mask,
    sample_nce_noise,
    tanh_dropout,
)


def _problem(seed, *, rows=7, d=6, n_neg=20, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(rows, d, generator=g, dtype=dtype)
    y = 4 * torch.randn(rows, generator=g, dtype=dtype)
    s = torch.tensor([1.5, 3.5], dtype=dtype)
    return e, y, s, sample_nce_noise(y, s, 0.1, n_neg, generator=g)


def nce_plan(samples, y, s, penalty=0.05):
    return NCEPlus(s, 0.1, samples.shape[1] - 1, penalty).plan_from_samples(samples, y)


def _grads(net, *, fused, budget, seed=5, workspace=None, plan=None, e=None):
    if plan is None:
        e, y, s, samples = _problem(1)
        plan = nce_plan(samples, y, s)
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks for both paths
    loss = accumulate_gradients(
        net, e, plan, activation_budget=budget, fused=fused, workspace=workspace
    )
    return loss, [p.grad.clone() for p in net.parameters()]


def _grid_problem(seed, *, preference, nce, rows=8, d=6, dtype=torch.float64):
    """A plan with shared grid candidates (grid NLL, or NCE+ plus the preference term)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(rows, d, generator=g, dtype=dtype)
    y = 3 * torch.randn(rows, generator=g, dtype=dtype)
    s = torch.tensor([1.5, 3.5], dtype=dtype)
    centres = torch.linspace(-9.5, 9.5, 20, dtype=dtype)
    grid = (centres, -10.0, 1.0)
    weight = 0.7 if preference else 0.0
    like = torch.tensor([True, True, False, False, True, True, True, True])
    if nce:
        obj = NCEPlus(s, 0.1, 9, 0.05, preference_weight=weight, grid=grid)
    else:
        obj = GridNLL(grid, s, 0.1, 0.05, preference_weight=weight)
    plan = obj.plan(y, likelihood=like, pairs=preference, generator=g)
    return e, plan


@pytest.mark.parametrize(("nce", "preference"), [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("budget", [10**9, 300])  # one chunk; chunks of whole pairs
@pytest.mark.parametrize("reward_hidden", [(4, 5), ()])
def test_fused_gradients_equal_autograd_with_shared_grid_candidates(
    nce, preference, budget, reward_hidden
):
    torch.manual_seed(0)
    net = EnergyNet(6, reward_hidden=reward_hidden, hidden=(12, 7), dropout=0.3).double().train()
    e, plan = _grid_problem(2, preference=preference, nce=nce)
    assert plan.chunk_rows == (2 if preference else 1)
    loss_a, grads_a = _grads(net, fused=False, budget=budget, plan=plan, e=e)
    loss_f, grads_f = _grads(net, fused=True, budget=budget, plan=plan, e=e)
    assert abs(loss_a - loss_f) < 1e-11
    for a, f in zip(grads_a, grads_f, strict=True):
        torch.testing.assert_close(f, a, rtol=1e-10, atol=1e-12)
    assert all(float(g.abs().max()) > 0 for g in grads_f)


@pytest.mark.parametrize(
    ("dropout", "hidden", "train"),
    [
        (0.5, (12, 7), True),  # 8-bit masks
        (0.1, (12, 7), True),  # 16-bit masks
        (0.3, (10, 6, 5), True),  # three trunk layers
        (0.0, (9,), True),  # no dropout, one trunk layer
        (0.5, (12, 7), False),  # evaluation mode: dropout off
    ],
)
@pytest.mark.parametrize("budget", [10**9, 400])  # one chunk; chunks of 1-2 rows
def test_fused_gradients_equal_autograd(dropout, hidden, train, budget):
    torch.manual_seed(0)
    net = EnergyNet(6, reward_hidden=(4, 5), hidden=hidden, dropout=dropout).double()
    net.train(train)
    loss_a, grads_a = _grads(net, fused=False, budget=budget)
    loss_f, grads_f = _grads(net, fused=True, budget=budget)
    assert abs(loss_a - loss_f) < 1e-12
    for a, f in zip(grads_a, grads_f, strict=True):
        torch.testing.assert_close(f, a, rtol=1e-10, atol=1e-13)
    assert any(float(g.abs().max()) > 0 for g in grads_f)


def test_dropout_masks_change_the_gradient():
    # Guard against a comparison that would pass with dropout silently off.
    torch.manual_seed(0)
    net = EnergyNet(6, reward_hidden=(4,), hidden=(12, 7), dropout=0.5).double().train()
    _, a = _grads(net, fused=True, budget=10**9, seed=1)
    _, b = _grads(net, fused=True, budget=10**9, seed=2)
    assert not torch.allclose(a[-2], b[-2])


def test_reused_workspace_gives_the_same_gradients():
    torch.manual_seed(0)
    net = EnergyNet(6, reward_hidden=(4,), hidden=(12, 7), dropout=0.5).double().train()
    ws = Workspace()
    _, fresh = _grads(net, fused=True, budget=10**9)
    _grads(net, fused=True, budget=300, workspace=ws)  # leaves smaller chunks' data behind
    _, reused = _grads(net, fused=True, budget=10**9, workspace=ws)
    for a, b in zip(fresh, reused, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_float32_fused_step_is_close_to_autograd():
    # In float32 tanh is evaluated as 2·sigmoid(2x) − 1: equal to round-off, not bits.
    torch.manual_seed(0)
    net = EnergyNet(16, hidden=(64, 32), dropout=0.5).train()
    g = torch.Generator().manual_seed(3)
    e, y = torch.randn(9, 16, generator=g), 4 * torch.randn(9, generator=g)
    s = torch.tensor([3.5])
    samples = sample_nce_noise(y, s, 0.1, 50, generator=g)
    out = []
    for fused in (False, True):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = accumulate_gradients(net, e, nce_plan(samples, y, s), fused=fused)
        out.append((loss, [p.grad.clone() for p in net.parameters()]))
    assert abs(out[0][0] - out[1][0]) < 1e-5
    for a, f in zip(out[0][1], out[1][1], strict=True):
        torch.testing.assert_close(f, a, rtol=1e-4, atol=1e-5)


def test_which_networks_take_the_fused_path():
    assert supports_fused(EnergyNet(4))
    assert not supports_fused(BasisEnergyNet(4))

    class Custom(EnergyNet):
        pass

    assert not supports_fused(Custom(4))  # a subclass may change forward: autograd
    e, y, s, samples = _problem(0, d=4, dtype=torch.float32)
    with pytest.raises(TypeError, match="EnergyNet"):
        fused_plan_gradients(BasisEnergyNet(4), e, nce_plan(samples, y, s), rows_per_chunk=2)


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1, 0.37])
def test_keep_mask_is_the_complement_of_the_drop_mask(p):
    torch.manual_seed(11)
    drop = dropout_drop_mask((300, 70), p)
    torch.manual_seed(11)
    keep = dropout_keep_mask((300, 70), p, dtype=torch.float64)
    assert keep.dtype == torch.float64
    assert torch.equal(keep, (~drop).double())
    assert abs(float(drop.double().mean()) - p) < 0.01


def test_keep_mask_edges_and_out():
    out = torch.empty(5, 3)
    assert dropout_keep_mask((5, 3), 0.0, out=out) is out and bool((out == 1).all())
    assert bool((dropout_keep_mask((5, 3), 1.0) == 0).all())


def test_sigmoid_form_of_tanh_is_accurate_in_float32():
    x = torch.linspace(-12, 12, 200_001)
    out = tanh_dropout(x, 1e-9, training=True)  # nothing dropped: the fused tanh only
    assert float((out - torch.tanh(x)).abs().max()) < 3e-7


def test_fused_gradients_without_a_reward_branch():
    torch.manual_seed(0)
    net = EnergyNet(6, reward_hidden=(), hidden=(12, 7), dropout=0.5).double().train()
    loss_a, grads_a = _grads(net, fused=False, budget=400)
    loss_f, grads_f = _grads(net, fused=True, budget=400)
    assert abs(loss_a - loss_f) < 1e-12
    for a, f in zip(grads_a, grads_f, strict=True):
        torch.testing.assert_close(f, a, rtol=1e-10, atol=1e-13)
