"""The energy networks and the NCE+ loss against plain reference implementations."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from skebrm.energy import (
    BasisEnergyNet,
    EnergyNet,
    mixture_log_density,
    nce_plus_loss,
    sample_nce_noise,
)


def _loop_nce_plus(f, samples, y, sigmas, penalty):
    """NCE+ with explicit loops and scipy densities (float64)."""
    n, m1 = f.shape
    total = 0.0
    for i in range(n):
        logits = []
        for m in range(m1):
            q = np.mean([norm.pdf(samples[i, m], loc=y[i], scale=s) for s in sigmas])
            logits.append(f[i, m] - math.log(q))
        mx = max(logits)
        lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
        total += lse - logits[0]
    reg = sum(f[i, m] ** 2 for i in range(n) for m in range(m1)) / (n * m1)
    return total / n + penalty * reg


@pytest.mark.parametrize("sigmas", [(3.5,), (0.5, 2.0, 4.0)])
def test_nce_plus_loss_matches_loop(sigmas):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, generator=g, dtype=torch.float64)
    sig = torch.tensor(sigmas, dtype=torch.float64)
    samples = sample_nce_noise(y, sig, 0.1, 6, generator=g)
    f = torch.randn(4, 7, generator=g, dtype=torch.float64)
    got = nce_plus_loss(f, samples, y, sig, 0.05).item()
    want = _loop_nce_plus(f.numpy(), samples.numpy(), y.numpy(), sigmas, 0.05)
    assert got == pytest.approx(want, rel=1e-10)


def test_nce_plus_loss_is_stable_for_large_energies():
    y = torch.zeros(2, dtype=torch.float64)
    sig = torch.tensor([3.5], dtype=torch.float64)
    samples = torch.tensor([[0.1, 2.0, -3.0], [0.0, 1.0, 5.0]], dtype=torch.float64)
    f = torch.tensor([[1000.0, 990.0, 0.0], [-1000.0, 5.0, 0.0]], dtype=torch.float64)
    loss = nce_plus_loss(f, samples, y, sig, 0.0)
    assert torch.isfinite(loss)


def test_mixture_log_density_matches_scipy():
    x = torch.linspace(-6, 6, 25, dtype=torch.float64)
    sig = torch.tensor([0.5, 3.0], dtype=torch.float64)
    want = np.log(0.5 * norm.pdf(x.numpy(), scale=0.5) + 0.5 * norm.pdf(x.numpy(), scale=3.0))
    np.testing.assert_allclose(mixture_log_density(x, sig).numpy(), want, rtol=1e-12)


def test_noise_samples_have_the_stated_scales():
    g = torch.Generator().manual_seed(1)
    y = torch.full((4000,), 2.0)
    s = sample_nce_noise(y, torch.tensor([3.5]), 0.1, 50, generator=g)
    assert s.shape == (4000, 51)
    assert s[:, 0].mean().item() == pytest.approx(2.0, abs=0.02)
    assert s[:, 0].std().item() == pytest.approx(0.35, rel=0.05)
    assert s[:, 1:].std().item() == pytest.approx(3.5, rel=0.02)


def test_factored_equals_concatenated(load_script):
    # the literal concatenation [e, φ(r)] is the reference implementation's forward
    reference = load_script("benchmarks/reference.py").ReferenceEnergyNet
    torch.manual_seed(0)
    net = EnergyNet(12, reward_hidden=(4, 8), hidden=(16, 8), dropout=0.5).eval()
    e = torch.randn(5, 12)
    r = torch.randn(5, 9) * 3
    np.testing.assert_allclose(
        net(e, r).detach().numpy(),
        reference.from_energy_net(net)(e, r).detach().numpy(),
        atol=1e-5,
    )


def test_paper_architecture_shapes():
    net = EnergyNet(384)
    assert [m.out_features for m in net.reward_net if isinstance(m, torch.nn.Linear)] == [
        16,
        32,
        64,
    ]
    assert net.first.in_features == 384 + 64
    linear = [m for m in net.trunk if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in [net.first, *linear]] == [1024, 512, 1]
    assert all(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in net.trunk[1::3])


def test_basis_energy_is_inner_product():
    torch.manual_seed(0)
    net = BasisEnergyNet(6, hidden=(8,), n_basis=5, low=-2, high=2).eval()
    e, r = torch.randn(3, 6), torch.randn(3, 4)
    g = net.g(e)
    want = torch.stack(
        [
            torch.stack(
                [
                    sum(
                        g[i, k] * torch.exp(-0.5 * ((r[i, j] - c) / net.width) ** 2)
                        for k, c in enumerate(net.centres)
                    )
                    for j in range(4)
                ]
            )
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(net(e, r).detach().numpy(), want.detach().numpy(), atol=1e-5)


def test_energy_net_rejects_empty_trunk():
    with pytest.raises(ValueError, match="hidden must name at least one"):
        EnergyNet(4, hidden=())


def test_evaluation_form_follows_weight_changes_and_is_not_pickled():
    import pickle

    torch.manual_seed(0)
    net = EnergyNet(5, reward_hidden=(4,), hidden=(9, 6)).double().eval()
    e = torch.randn(3, 5, dtype=torch.float64)
    r = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        before = net(e, r)
        net.trunk[-1].bias.add_(1.5)  # in place: the cached folded weights must refresh
        after = net(e, r)
    torch.testing.assert_close(after, before + 1.5)
    torch.testing.assert_close(after, net(e, r).detach())  # autograd (tanh) form agrees
    assert "_sigmoid_form_cache" in net.__dict__
    assert "_sigmoid_form_cache" not in pickle.loads(pickle.dumps(net)).__dict__
