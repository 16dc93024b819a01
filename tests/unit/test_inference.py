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


def test_grid_newton_step_is_the_inverse_curvature_of_a_quadratic():
    h = torch.tensor([[1.3, 0.5], [-2.0, 4.0], [0.0, 0.01]], dtype=torch.float64)
    centres, width = inf.make_grid(-6.0, 6.0, 240)
    grid = torch.as_tensor(centres)
    f = QuadraticEnergy().energy_from_embedded(h, grid.expand(3, -1))
    steps = inf.grid_newton_steps(f, width)
    # f'' = −2a exactly for a quadratic: the step is 1 / (2a)
    np.testing.assert_allclose(steps.numpy(), 1 / (2 * h[:, 1].numpy()), rtol=1e-9)
    # one step from the best grid point lands on the vertex; the ascent then stops
    start = grid[f.argmax(dim=1)]
    r, _, path = inf.ascend(
        QuadraticEnergy(), h, start, step_size=steps, tol=1e-4 * width, return_path=True
    )
    np.testing.assert_allclose(r.numpy(), h[:, 0].numpy(), atol=1e-12)
    assert path.shape[0] <= 4  # start, one move, the stop


def test_grid_newton_step_falls_back_to_the_cell_width_on_flat_or_convex_tops():
    f = torch.tensor([[0.0, 1.0, 1.0, 0.0], [2.0, 1.0, 0.5, 1.5], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(
        inf.grid_newton_steps(f, 0.25).numpy(), [0.25 / 1.0 * 0.25, 0.25, 0.25]
    )


def test_frozen_rows_do_not_move_and_do_not_depend_on_other_rows():
    h = torch.tensor([[2.0, 0.5], [-3.0, 0.001]], dtype=torch.float64)
    r0 = torch.tensor([1.0, 4.0], dtype=torch.float64)
    both, _ = inf.ascend(QuadraticEnergy(), h, r0, max_steps=30, tol=1e-3)
    alone, _ = inf.ascend(QuadraticEnergy(), h[:1], r0[:1], max_steps=30, tol=1e-3)
    assert both[0].item() == alone[0].item()


def test_pad_rows_and_tiles():
    t = torch.arange(6.0).reshape(3, 2)
    p = inf.pad_rows(t, inf.tile_rows(3))
    assert p.shape == (inf.ROW_TILE, 2) and torch.equal(p[:3], t) and not p[3:].any()
    assert inf.pad_rows(t, 3) is t
    assert inf.tile_rows(inf.ROW_TILE) == inf.ROW_TILE and inf.tile_rows(0) == 0
