"""GridDistribution.entropic_risk against a plain loop, quadrature and its two limits."""

import math

import numpy as np
import pytest

from skebrm import GridDistribution


def _loop_entropic(p, low, width, beta):
    """-beta log E[exp(-r / beta)] for a density uniform inside each cell, cell by cell."""
    total = 0.0
    for j, pj in enumerate(p):
        a, b = low + j * width, low + (j + 1) * width
        # the integral of exp(-r / beta) / width over [a, b)
        total += pj * beta / width * (math.exp(-a / beta) - math.exp(-b / beta))
    return -beta * math.log(total)


def _random(n=4, cells=7, seed=0, low=-1.5, width=0.4):
    rng = np.random.default_rng(seed)
    return GridDistribution(rng.normal(size=(n, cells)) * 2, low=low, width=width)


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5, 10.0])
def test_matches_a_plain_loop(beta):
    d = _random()
    want = [_loop_entropic(row, d.low, d.width, beta) for row in d.masses]
    np.testing.assert_allclose(d.entropic_risk(beta), want, rtol=1e-12, atol=1e-12)


def test_matches_quadrature_of_the_piecewise_uniform_density():
    d = _random(n=2, cells=5, seed=3)
    beta = 0.7
    fine = np.linspace(d.low, d.high, 200_001)
    mid = 0.5 * (fine[1:] + fine[:-1])
    want = []
    for i in range(2):
        pdf = np.exp(
            GridDistribution(d.log_masses[[i] * mid.size], d.low, d.width).log_density(mid)
        )
        want.append(-beta * np.log(np.sum(pdf * np.exp(-mid / beta)) * (fine[1] - fine[0])))
    np.testing.assert_allclose(d.entropic_risk(beta), want, rtol=1e-6)


def test_large_beta_gives_the_mean():
    d = _random(seed=1)
    np.testing.assert_allclose(d.entropic_risk(1e9), d.mean(), rtol=0, atol=1e-7)
    # the first correction is -Var / (2 beta) (a second-order cumulant expansion)
    beta = 1e3
    np.testing.assert_allclose(
        d.entropic_risk(beta), d.mean() - d.var() / (2 * beta), rtol=0, atol=1e-6
    )


def test_small_beta_gives_the_lowest_reward_with_positive_mass():
    p = np.array([[0.0, 0.0, 0.3, 0.7], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    lm = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -np.inf)
    d = GridDistribution(lm, low=1.0, width=0.5)
    # the left edge of the lowest cell with positive mass (the infimum of the support)
    worst = np.array([2.0, 1.0, 2.5])
    np.testing.assert_allclose(d.entropic_risk(1e-6), worst, atol=1e-4)
    np.testing.assert_allclose(d.entropic_risk(1e-300), worst, atol=1e-12)


def test_lies_between_the_worst_case_and_the_mean_and_decreases_as_beta_falls():
    d = _random(n=6, cells=30, seed=2)
    betas = [1e-3, 0.01, 0.1, 1.0, 10.0, 100.0]
    values = np.stack([d.entropic_risk(b) for b in betas])
    assert np.all(np.diff(values, axis=0) >= -1e-12)
    assert np.all(values >= d.low - 1e-12) and np.all(values <= d.mean() + 1e-12)


def test_stable_far_from_the_origin_and_for_tiny_masses():
    # exp(-r / beta) overflows a naive sum here; log-sum-exp does not
    lm = np.array([[-700.0, 0.0, -1.0], [0.0, -745.0, -3.0]])
    d = GridDistribution(lm, low=-5000.0, width=2.0)
    for beta in [0.01, 1.0, 1e6]:
        out = d.entropic_risk(beta)
        assert np.all(np.isfinite(out)) and np.all(out >= d.low) and np.all(out <= d.high)
    np.testing.assert_allclose(
        d.entropic_risk(1.0),
        [_loop_entropic(row, 0.0, 2.0, 1.0) - 5000.0 for row in d.masses],
        rtol=1e-12,
    )


def test_is_translation_equivariant():
    d = _random(seed=4)
    shifted = GridDistribution(d.log_masses, low=d.low + 3.25, width=d.width)
    np.testing.assert_allclose(shifted.entropic_risk(0.5), d.entropic_risk(0.5) + 3.25, atol=1e-12)


@pytest.mark.parametrize("beta", [0, -1.0, float("inf"), float("nan"), "1", None, True, [1.0]])
def test_rejects_an_invalid_beta(beta):
    with pytest.raises(
        ValueError, match=r"GridDistribution.entropic_risk: beta must be a positive"
    ):
        _random().entropic_risk(beta)


def test_accepts_numpy_and_int_betas():
    d = _random()
    np.testing.assert_allclose(d.entropic_risk(np.float32(2.0)), d.entropic_risk(2))
