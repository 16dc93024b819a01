"""Grid statistics and the ascent against closed forms and plain loops."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from skebrm import _inference as inf


class QuadraticEnergy:
    """f(e, r) = −a·(r − m)² with h = [m, a] per row: a Gaussian N(m, 1/(2a))."""

    def energy_from_embedded(self, h, r):
        return -h[:, 1:2] * (r - h[:, :1]) ** 2


def _gaussian_energies(mu, sd, centres):
    return -0.5 * ((centres[None] - np.asarray(mu)[:, None]) / np.asarray(sd)[:, None]) ** 2


def test_grid_is_cell_centred():
    c, w = inf.make_grid(-1.0, 1.0, 4)
    assert w == 0.5
    np.testing.assert_allclose(c, [-0.75, -0.25, 0.25, 0.75])


def test_mean_std_match_gaussian():
    c, w = inf.make_grid(-20, 20, 2000)
    mean, std = inf.grid_mean_std(_gaussian_energies([0.0, 3.0], [1.0, 2.5], c), c, w)
    np.testing.assert_allclose(mean, [0.0, 3.0], atol=1e-6)
    np.testing.assert_allclose(std, [1.0, 2.5], rtol=1e-4)


def test_density_integrates_to_one():
    c, w = inf.make_grid(-3, 7, 300)
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 300)) * 10
    np.testing.assert_allclose(np.exp(inf.grid_log_density(f, w)).sum(1) * w, 1.0, rtol=1e-12)


def _loop_quantile(f, c, w, q):
    p = np.exp(f - f.max())
    p /= p.sum()
    acc = 0.0
    for i, pi in enumerate(p):
        if acc + pi >= q:
            return c[i] - w / 2 + (q - acc) / pi * w
        acc += pi
    return c[-1] + w / 2


def test_quantiles_match_loop_and_gaussian():
    c, w = inf.make_grid(-10, 10, 1000)
    f = _gaussian_energies([1.0], [2.0], c)
    qs = [0.025, 0.1, 0.5, 0.9, 0.975]
    got = inf.grid_quantiles(f, c, w, qs)[0]
    np.testing.assert_allclose(got, [_loop_quantile(f[0], c, w, q) for q in qs], atol=1e-9)
    np.testing.assert_allclose(got, norm.ppf(qs, loc=1.0, scale=2.0), atol=2e-3)


def test_preference_probability_matches_closed_form_and_monte_carlo():
    c, w = inf.make_grid(-15, 15, 3000)
    fa = _gaussian_energies([1.0, 0.0], [1.0, 3.0], c)
    fb = _gaussian_energies([0.0, 0.5], [2.0, 1.0], c)
    got = inf.grid_preference_probability(fa, fb)
    want = norm.cdf(np.array([1.0, -0.5]) / np.sqrt(np.array([1 + 4, 9 + 1])))
    np.testing.assert_allclose(got, want, atol=1e-4)
    rng = np.random.default_rng(0)
    mc = np.mean(rng.normal(1, 1, 200_000) > rng.normal(0, 2, 200_000))
    assert got[0] == pytest.approx(mc, abs=5e-3)
    # identical distributions: exactly one half
    np.testing.assert_allclose(inf.grid_preference_probability(fa, fa), 0.5, atol=1e-12)


def test_ascend_reaches_the_mode_monotonically():
    h = torch.tensor([[2.0, 0.5], [-3.0, 2.0], [0.0, 0.1]])
    r0 = torch.tensor([-1.0, 4.0, 0.0])
    r, f, path = inf.ascend(QuadraticEnergy(), h, r0, max_steps=200, return_path=True)
    np.testing.assert_allclose(r.numpy(), [2.0, -3.0, 0.0], atol=1e-4)
    assert torch.all(path[1:] >= path[:-1])
    np.testing.assert_allclose(f.numpy(), path[-1].numpy())


def test_ascend_zero_steps_returns_start():
    h = torch.tensor([[2.0, 0.5]])
    r, _ = inf.ascend(QuadraticEnergy(), h, torch.tensor([0.3]), max_steps=0)
    assert r.item() == pytest.approx(0.3)
