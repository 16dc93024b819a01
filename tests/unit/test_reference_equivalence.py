"""The library's factored EBRM against the faithful reference in ``benchmarks/reference.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from skebrm._inference import ascend, grid_energies
from skebrm.energy import EnergyNet, nce_plus_loss, sample_nce_noise

_REFERENCE_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference.py"


def _load_reference():
    name = "skebrm_benchmarks_reference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def _tiny_pair(seed=0, d=6, dtype=torch.float64):
    torch.manual_seed(seed)
    net = EnergyNet(d, reward_hidden=(4, 5), hidden=(12, 7), dropout=0.5).to(dtype).eval()
    return net, ref.ReferenceEnergyNet.from_energy_net(net)


def test_reference_shares_the_state_dict():
    net, reference = _tiny_pair()
    a, b = net.state_dict(), reference.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not reference.training


def test_same_energies_on_same_weights():
    net, reference = _tiny_pair()
    g = torch.Generator().manual_seed(1)
    e = torch.randn(5, 6, generator=g, dtype=torch.float64)
    r = 3 * torch.randn(5, 9, generator=g, dtype=torch.float64)
    torch.testing.assert_close(net(e, r), reference(e, r), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigmas", [(3.5,), (1.0, 2.5, 6.0)])
def test_same_loss_and_gradients_on_same_noise(sigmas):
    net, reference = _tiny_pair(seed=2)
    g = torch.Generator().manual_seed(3)
    e = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = 4 * torch.randn(8, generator=g, dtype=torch.float64)
    s = torch.tensor(sigmas, dtype=torch.float64)
    samples = sample_nce_noise(y, s, 0.1, 31, generator=g)
    loss_lib = nce_plus_loss(net(e, samples), samples, y, s, 0.05)
    loss_ref = ref.reference_nce_plus_loss(reference(e, samples), samples, y, s, 0.05)
    torch.testing.assert_close(loss_lib, loss_ref, rtol=1e-10, atol=1e-12)
    grads_lib = torch.autograd.grad(loss_lib, list(net.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(reference.parameters()))
    for a, b in zip(grads_lib, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_reference_loss_differs_when_positive_moves():
    # Guard against a vacuous comparison: the loss must depend on which column is positive.
    net, reference = _tiny_pair(seed=4)
    g = torch.Generator().manual_seed(5)
    e = torch.randn(4, 6, generator=g, dtype=torch.float64)
    y = torch.randn(4, generator=g, dtype=torch.float64)
    s = torch.tensor([2.0], dtype=torch.float64)
    samples = sample_nce_noise(y, s, 0.1, 15, generator=g)
    swapped = samples.flip(1)
    a = ref.reference_nce_plus_loss(reference(e, samples), samples, y, s, 0.0)
    b = ref.reference_nce_plus_loss(reference(e, swapped), swapped, y, s, 0.0)
    assert not torch.isclose(a, b)


def test_reference_noise_shapes_and_scales():
    torch.manual_seed(0)
    y = torch.linspace(-3, 3, 400, dtype=torch.float64)
    s = torch.tensor([1.0, 3.0], dtype=torch.float64)
    samples = ref.reference_noise(y, s, 0.1, 50)
    assert samples.shape == (400, 51)
    pos = samples[:, 0] - y
    neg = samples[:, 1:] - y[:, None]
    # Mixture of N(0, 1) and N(0, 9): variance 5; the positive's is 0.01 of that.
    assert abs(float(neg.var()) - 5.0) < 0.5
    assert abs(float(pos.var()) - 0.05) < 0.015


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_modes_from_same_starting_points(seed):
    net, reference = _tiny_pair(seed=seed)
    g = torch.Generator().manual_seed(10 + seed)
    e = torch.randn(16, 6, generator=g, dtype=torch.float64)
    r0 = 4 * torch.randn(16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        r_lib, _ = ascend(net, net.embed(e), r0, max_steps=50, step_size=0.5, shrink=0.2)
    r_ref = ref.reference_ascent(reference, e, r0, n_steps=50, step_size=0.5, shrink=0.2)
    assert float((r_lib - r0).abs().max()) > 1e-3  # the ascent moved
    torch.testing.assert_close(r_lib, r_ref, rtol=1e-7, atol=1e-7)


def test_reference_ascent_never_lowers_the_energy():
    net, reference = _tiny_pair(seed=7)
    g = torch.Generator().manual_seed(8)
    e = torch.randn(10, 6, generator=g, dtype=torch.float64)
    r0 = 3 * torch.randn(10, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f_prev = reference(e, r0[:, None])[:, 0]
    r = r0
    for _ in range(5):
        r = ref.reference_ascent(reference, e, r, n_steps=3)
        with torch.no_grad():
            f = reference(e, r[:, None])[:, 0]
        assert (f >= f_prev).all()
        f_prev = f
    assert float((r - r0).abs().max()) > 1e-3


def test_grid_energies_match_the_reference():
    net, reference = _tiny_pair(seed=3)
    g = torch.Generator().manual_seed(4)
    e = torch.randn(7, 6, generator=g, dtype=torch.float64)
    grid = torch.linspace(-10, 10, 33, dtype=torch.float64)
    with torch.no_grad():
        f_lib = grid_energies(net, net.embed(e), grid, chunk=50)
        f_ref = reference(e, grid.expand(7, -1))
    torch.testing.assert_close(f_lib, f_ref, rtol=1e-12, atol=1e-12)


def test_flop_count_matches_a_hand_count():
    flops = ref.reference_flops_per_row(10, 3, reward_hidden=(2,), hidden=(4,))
    # per candidate: branch 2*1*2, first 2*(10+2)*4, head 2*4*1
    per = 4 + 96 + 8
    assert flops == {"forward": 3.0 * per, "train": 9.0 * per}


def test_microbatched_gradients_equal_the_reference_full_batch_gradient():
    from skebrm._objectives import NCEPlus
    from skebrm._training import accumulate_gradients

    net, reference = _tiny_pair(seed=5)
    g = torch.Generator().manual_seed(6)
    e = torch.randn(7, 6, generator=g, dtype=torch.float64)
    y = 4 * torch.randn(7, generator=g, dtype=torch.float64)
    s = torch.tensor([1.5, 3.5], dtype=torch.float64)
    samples = sample_nce_noise(y, s, 0.1, 20, generator=g)
    # width 12 × 21 candidates: a budget of 600 gives micro-batches of 2 rows (2, 2, 2, 1).
    plan = NCEPlus(s, 0.1, 20, 0.05).plan_from_samples(samples, y)
    loss = accumulate_gradients(net, e, plan, activation_budget=600)
    loss_ref = ref.reference_nce_plus_loss(reference(e, samples), samples, y, s, 0.05)
    loss_ref.backward()
    assert abs(loss - float(loss_ref.detach())) < 1e-10
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_training_mode_dropout_matches_nn_dropout_in_distribution_and_gradient():
    from skebrm.energy import dropout_drop_mask, tanh_dropout

    torch.manual_seed(0)
    for p in (0.5, 0.1, 0.3):
        drop = dropout_drop_mask((200, 500), p)
        assert drop.dtype == torch.bool
        assert abs(float(drop.float().mean()) - p) < 0.01
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    out = tanh_dropout(x, 0.25, training=True)
    kept = out != 0
    assert 0.6 < float(kept.double().mean()) < 0.9
    # Kept entries are tanh(x) / (1 − p); the gradient is that of tanh(x) · mask / (1 − p).
    torch.testing.assert_close(out[kept], torch.tanh(x)[kept] / 0.75)
    (grad,) = torch.autograd.grad(out.sum(), x)
    expected = (1 - torch.tanh(x) ** 2) * kept / 0.75
    torch.testing.assert_close(grad, expected.detach())
    assert torch.equal(tanh_dropout(x, 0.25, training=False), torch.tanh(x))


def test_library_training_energies_have_the_dropout_scale_of_the_reference():
    # In training mode the library folds 1/(1 − p) into the next layer's weight; with the
    # same dropout masks it must equal the reference's nn.Dropout network. Use p so small
    # that no entry is dropped in either network: then both are deterministic.
    torch.manual_seed(0)
    net = EnergyNet(5, reward_hidden=(4,), hidden=(9, 6), dropout=1e-9).double().train()
    reference = ref.ReferenceEnergyNet.from_energy_net(net)
    e = torch.randn(3, 5, dtype=torch.float64)
    r = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(net(e, r), reference(e, r))
    # And the scale is applied: with p = 0.5 the kept activations are doubled, so the
    # energies differ from evaluation mode.
    net_half = EnergyNet(5, reward_hidden=(4,), hidden=(9, 6), dropout=0.5).double()
    net_half.load_state_dict(net.state_dict())
    assert not torch.allclose(net_half.train()(e, r), net_half.eval()(e, r))


def test_drop_mask_edges():
    from skebrm.energy import dropout_drop_mask

    assert not dropout_drop_mask((1000,), 1e-9).any()
    assert dropout_drop_mask((1000,), 1 - 1e-9).all()
    half = dropout_drop_mask((100_000,), 0.5).float().mean()
    assert abs(float(half) - 0.5) < 0.01


@pytest.mark.parametrize("kind", ["mlp", "basis"])
def test_written_out_slope_equals_jvp(kind):
    from torch.func import jvp

    from skebrm.energy import BasisEnergyNet

    torch.manual_seed(0)
    if kind == "mlp":
        net = EnergyNet(7, reward_hidden=(3, 4), hidden=(11, 5)).double().eval()
    else:
        net = BasisEnergyNet(7, hidden=(11, 5), n_basis=9, low=-6, high=6).double().eval()
    h = net.embed(torch.randn(9, 7, dtype=torch.float64))
    r = 3 * torch.randn(9, dtype=torch.float64)
    f, g = net.energy_and_slope(h, r)
    f_jvp, g_jvp = jvp(
        lambda rr: net.energy_from_embedded(h, rr.unsqueeze(1)).squeeze(1),
        (r,),
        (torch.ones_like(r),),
    )
    torch.testing.assert_close(f, f_jvp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_jvp, rtol=1e-12, atol=1e-12)
    if kind == "mlp":
        with pytest.raises(RuntimeError, match="evaluation mode"):
            net.train().energy_and_slope(h, r)
