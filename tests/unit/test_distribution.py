"""GridDistribution against closed forms, plain loops and Monte Carlo."""

import numpy as np
import pytest
from scipy.stats import norm

from skebrm import GridDistribution
from skebrm import _inference as inf


def _gaussian(mu, sd, low, high, size):
    c, w = inf.make_grid(low, high, size)
    f = -0.5 * ((c[None] - np.asarray(mu)[:, None]) / np.asarray(sd)[:, None]) ** 2
    return GridDistribution(f, low=low, width=w)


def test_layout_and_normalisation():
    rng = np.random.default_rng(0)
    d = GridDistribution(rng.normal(size=(5, 300)) * 10, low=-3.0, width=10 / 300)
    assert len(d) == 5 and d.n_cells == 300 and d.high == pytest.approx(7.0)
    np.testing.assert_allclose(d.centres, inf.make_grid(-3.0, 7.0, 300)[0])
    np.testing.assert_allclose(d.edges[[0, -1]], [-3.0, 7.0])
    np.testing.assert_allclose(d.masses.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(d.log_density_grid()).sum(1) * d.width, 1.0, rtol=1e-12)


def test_mean_and_std_match_a_gaussian():
    d = _gaussian([0.0, 3.0], [1.0, 2.5], -20, 20, 2000)
    np.testing.assert_allclose(d.mean(), [0.0, 3.0], atol=1e-6)
    np.testing.assert_allclose(d.std(), [1.0, 2.5], rtol=1e-4)


def test_variance_includes_the_within_cell_spread():
    # one cell holds all the mass: a uniform on [0, 1)
    d = GridDistribution(np.log([[1e-300, 1.0, 1e-300]]), low=-1.0, width=1.0)
    assert d.mean()[0] == pytest.approx(0.5)
    assert d.var()[0] == pytest.approx(1 / 12)


def _loop_quantile(p, low, w, q):
    acc = 0.0
    for i, pi in enumerate(p):
        if acc + pi >= q:
            return low + i * w + (q - acc) / pi * w
        acc += pi
    return low + len(p) * w


def test_quantiles_match_a_loop_and_a_gaussian():
    d = _gaussian([1.0], [2.0], -10, 10, 1000)
    qs = [0.025, 0.1, 0.5, 0.9, 0.975]
    got = d.quantiles(qs)[0]
    p = d.masses[0]
    np.testing.assert_allclose(got, [_loop_quantile(p, -10, d.width, q) for q in qs], atol=1e-9)
    np.testing.assert_allclose(got, norm.ppf(qs, loc=1.0, scale=2.0), atol=2e-3)
    np.testing.assert_allclose(d.interval(0.05)[0], got[[0, -1]])


def test_cdf_inverts_the_quantiles_and_log_density_is_its_derivative():
    rng = np.random.default_rng(1)
    d = GridDistribution(rng.normal(size=(4, 40)) * 3, low=-2.0, width=0.1)
    qs = np.array([0.07, 0.5, 0.93])
    q = d.quantiles(qs)
    for k in range(3):
        np.testing.assert_allclose(d.cdf(q[:, k]), qs[k], atol=1e-12)
    # one density convention: d/dr CDF = exp(log_density) inside every cell
    r = d.low + (np.array([3, 17, 25, 39]) + 0.37) * d.width
    eps = 1e-6
    slope = (d.cdf(r + eps) - d.cdf(r - eps)) / (2 * eps)
    np.testing.assert_allclose(np.exp(d.log_density(r)), slope, rtol=1e-6)
    # and at the centres it is the grid log-density
    j = np.array([3, 17, 25, 39])
    np.testing.assert_allclose(d.log_density(d.centres[j]), d.log_density_grid()[range(4), j])
    assert np.all(np.isneginf(d.log_density(np.full(4, d.high + 0.01))))
    np.testing.assert_array_equal(d.cdf(np.full(4, d.low - 1)), 0.0)
    np.testing.assert_array_equal(d.cdf(np.full(4, d.high + 1)), 1.0)


def test_preference_probability_matches_a_closed_form_a_loop_and_monte_carlo():
    da = _gaussian([1.0, 0.0], [1.0, 3.0], -15, 15, 3000)
    db = _gaussian([0.0, 0.5], [2.0, 1.0], -15, 15, 3000)
    got = da.preference_probability(db)
    want = norm.cdf(np.array([1.0, -0.5]) / np.sqrt(np.array([1 + 4, 9 + 1])))
    np.testing.assert_allclose(got, want, atol=1e-4)
    # a plain double loop over cells on a small grid (same cell counts ½)
    rng = np.random.default_rng(2)
    a = GridDistribution(rng.normal(size=(1, 12)), low=0.0, width=1.0)
    b = GridDistribution(rng.normal(size=(1, 12)), low=0.0, width=1.0)
    pa, pb = a.masses[0], b.masses[0]
    loop = sum(
        pa[i] * pb[j] * (1.0 if i > j else 0.5 if i == j else 0.0)
        for i in range(12)
        for j in range(12)
    )
    assert a.preference_probability(b)[0] == pytest.approx(loop, rel=1e-12)
    # Monte Carlo from the piecewise-uniform distributions themselves
    n = 400_000
    ra = rng.choice(12, size=n, p=pa) + rng.random(n)
    rb = rng.choice(12, size=n, p=pb) + rng.random(n)
    assert a.preference_probability(b)[0] == pytest.approx(np.mean(ra > rb), abs=4e-3)


def test_moving_mass_up_raises_the_preference_probability():
    rng = np.random.default_rng(3)
    lm = rng.normal(size=(6, 30)) * 4
    lm[:, -1] = -np.inf  # the top cell is empty, so the whole distribution can move up
    a = GridDistribution(lm, low=0.0, width=1.0)
    b = GridDistribution(rng.normal(size=(6, 30)) * 4, low=0.0, width=1.0)
    shifted = GridDistribution(np.roll(lm, 1, axis=1), low=0.0, width=1.0)
    assert np.all(shifted.preference_probability(b) > a.preference_probability(b))
    # a point mass far above every other cell is preferred with certainty
    top = np.full((6, 30), -np.inf)
    top[:, -1] = 0.0
    low = np.full((6, 30), -np.inf)
    low[:, 0] = 0.0
    hi_d, lo_d = (GridDistribution(v, low=0.0, width=1.0) for v in (top, low))
    np.testing.assert_array_equal(hi_d.preference_probability(lo_d), 1.0)


def test_rows_can_be_selected():
    d = _gaussian([0.0, 1.0, 2.0], [1.0, 1.0, 1.0], -8, 8, 64)
    d2 = GridDistribution(d.log_masses, low=d.low, width=d.width, mode=[0.1, 1.1, 2.1])
    np.testing.assert_allclose(d[1:].mean(), d.mean()[1:])
    np.testing.assert_allclose(d2[[2, 0]].mode, [2.1, 0.1])
    assert len(d[0]) == 1 and d[np.array([True, False, True])].n_cells == 64
    assert d.mode[0] == pytest.approx(d.centres[np.argmax(d.masses[0])])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"log_masses must have shape \(n, G\)"):
        GridDistribution(np.zeros(5), low=0.0, width=1.0)
    with pytest.raises(ValueError, match="width must be a positive float"):
        GridDistribution(np.zeros((1, 5)), low=0.0, width=0.0)
    with pytest.raises(ValueError, match="must not contain NaN"):
        GridDistribution(np.full((1, 5), np.nan), low=0.0, width=1.0)
    d = GridDistribution(np.zeros((2, 5)), low=0.0, width=1.0)
    with pytest.raises(ValueError, match=r"q must be levels in \[0, 1\]"):
        d.quantiles([1.5])
    with pytest.raises(ValueError, match=r"r must have shape \(2,\)"):
        d.log_density([0.0])
    with pytest.raises(ValueError, match="same grid"):
        d.preference_probability(GridDistribution(np.zeros((2, 5)), low=1.0, width=1.0))
    with pytest.raises(TypeError, match="must be a GridDistribution"):
        d.preference_probability(np.zeros((2, 5)))


def test_a_row_without_mass_is_refused():
    lm = np.zeros((3, 4))
    lm[1] = -np.inf
    with pytest.raises(ValueError, match="row 1 is -inf in every cell"):
        GridDistribution(lm, low=0.0, width=1.0)
    lm[1, 2] = 0.0  # one finite cell is enough: all the mass is there
    d = GridDistribution(lm, low=0.0, width=1.0)
    assert d.mean()[1] == 2.5 and np.isfinite(d.std()).all()
