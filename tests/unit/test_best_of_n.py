"""Best-of-n estimator: brute force over all n-subsets (ties too), Monte Carlo, bad inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from skebrm import metrics
from skebrm.metrics import (
    BestOfNCurve,
    best_of_n,
    best_of_n_curve,
    best_of_n_per_prompt,
    best_of_n_weights,
    kl_best_of_n,
    plot_best_of_n,
)


def _brute_force(proxy_row, gold_row, n):
    """Mean over every n-subset of the gold of its proxy-best member (ties: their mean gold)."""
    values = []
    for subset in itertools.combinations(range(len(proxy_row)), n):
        best = max(proxy_row[i] for i in subset)
        tied = [gold_row[i] for i in subset if proxy_row[i] == best]
        values.append(sum(tied) / len(tied))
    return sum(values) / len(values)


@pytest.mark.parametrize("n_samples", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_brute_force_enumeration(n_samples, ties):
    rng = np.random.default_rng(n_samples + 10 * ties)
    n_prompts = 6
    if ties:  # few distinct proxy values: many ties, also at the top
        proxy = rng.integers(0, 3, size=(n_prompts, n_samples)).astype(float)
    else:
        proxy = rng.normal(size=(n_prompts, n_samples))
    gold = rng.normal(size=(n_prompts, n_samples))
    ns = list(range(1, n_samples + 1))
    per_prompt = best_of_n_per_prompt(proxy, gold, ns)
    expected = np.array([[_brute_force(p, g, n) for n in ns] for p, g in zip(proxy, gold)])
    np.testing.assert_allclose(per_prompt, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(best_of_n(proxy, gold, ns), expected.mean(axis=0), atol=1e-12)


def test_gold_is_permuted_with_the_proxy_order():
    # the proxy ranks the samples in reverse of their storage order; gold stored ascending
    proxy = np.array([[3.0, 2.0, 1.0, 0.0]])
    gold = np.array([[10.0, 20.0, 30.0, 40.0]])
    # n = N picks the proxy's top, which is sample 0 (gold 10), not the last stored one
    assert best_of_n(proxy, gold, [4])[0] == 10.0
    assert best_of_n(proxy, gold, [1])[0] == pytest.approx(25.0)


def test_all_tied_is_the_mean_for_every_n():
    gold = np.array([[1.0, 2.0, 6.0]])
    np.testing.assert_allclose(best_of_n(np.zeros((1, 3)), gold, [1, 2, 3]), [3.0, 3.0, 3.0])


def test_oracle_is_monotone_and_n1_is_the_mean():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(20, 16))
    proxy = gold + rng.normal(size=gold.shape)
    ns = np.arange(1, 17)
    oracle = best_of_n(gold, gold, ns)
    assert np.all(np.diff(oracle) >= -1e-12)
    np.testing.assert_allclose(oracle[-1], gold.max(axis=1).mean())
    np.testing.assert_allclose(best_of_n(proxy, gold, [1])[0], gold.mean())


def test_matches_monte_carlo():
    """Draws of n-subsets without replacement; 5 standard errors of budget."""
    rng = np.random.default_rng(1)
    n_prompts, n_samples, n, draws = 3, 20, 5, 20_000
    proxy = rng.integers(0, 6, size=(n_prompts, n_samples)).astype(float)  # with ties
    gold = rng.normal(size=(n_prompts, n_samples))
    picks = np.empty((n_prompts, draws))
    for p in range(n_prompts):
        idx = np.argsort(rng.random((draws, n_samples)), axis=1)[:, :n]  # random n-subsets
        sub_proxy, sub_gold = proxy[p][idx], gold[p][idx]
        # random tie-break: add a tiny random key below the proxy resolution
        key = sub_proxy + 1e-3 * rng.random(sub_proxy.shape)
        picks[p] = sub_gold[np.arange(draws), np.argmax(key, axis=1)]
    estimate = best_of_n_per_prompt(proxy, gold, [n])[:, 0]
    se = picks.std(axis=1, ddof=1) / math.sqrt(draws)
    assert np.all(np.abs(picks.mean(axis=1) - estimate) < 5 * se)


def test_weights_sum_to_one_and_stay_finite_for_large_n():
    for n_samples, n in [(8, 3), (1024, 512), (100_000, 50_000), (5, 1), (5, 5)]:
        w = best_of_n_weights(n, n_samples)
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-9)
        assert np.all(w[: n - 1] == 0)
    np.testing.assert_allclose(
        best_of_n_weights(3, 6), [math.comb(i - 1, 2) / math.comb(6, 3) for i in range(1, 7)]
    )


def test_kl_best_of_n():
    assert kl_best_of_n(1) == 0.0
    np.testing.assert_allclose(kl_best_of_n(4), math.log(4) - 3 / 4)
    np.testing.assert_allclose(
        kl_best_of_n(np.array([1, 2, 64])), [0.0, math.log(2) - 0.5, math.log(64) - 63 / 64]
    )
    assert np.all(np.diff(kl_best_of_n(np.arange(1, 100))) > 0)


def test_curve_bootstrap_interval():
    rng = np.random.default_rng(2)
    gold = rng.normal(size=(200, 8))
    proxy = gold + rng.normal(size=gold.shape)
    ns = [1, 2, 4, 8]
    curve = best_of_n_curve(proxy, gold, ns, n_resamples=500, random_state=0)
    assert isinstance(curve, BestOfNCurve)
    np.testing.assert_allclose(curve.mean, best_of_n(proxy, gold, ns))
    assert curve.per_prompt.shape == (200, 4)
    assert np.all(curve.ci_low < curve.mean) and np.all(curve.mean < curve.ci_high)
    np.testing.assert_allclose(curve.kl, kl_best_of_n(np.array(ns)))
    # the bootstrap standard error is close to the plain standard error of the mean
    plain = curve.per_prompt.std(axis=0, ddof=1) / np.sqrt(200)
    np.testing.assert_allclose(curve.std_error, plain, rtol=0.2)
    again = best_of_n_curve(proxy, gold, ns, n_resamples=500, random_state=0)
    np.testing.assert_array_equal(again.ci_low, curve.ci_low)
    peak = curve.peak()
    assert peak["final_n"] == 8 and peak["peak_gold"] == curve.mean.max()


def test_reexported_from_metrics():
    for name in ("best_of_n", "best_of_n_curve", "best_of_n_per_prompt", "kl_best_of_n"):
        assert name in metrics.__all__ and callable(getattr(metrics, name))


@pytest.mark.parametrize(
    ("proxy", "gold", "ns", "match"),
    [
        (np.zeros(4), np.zeros(4), [1], r"proxy must be a 2-D array .* got shape \(4,\)"),
        (np.zeros((2, 4)), np.zeros((2, 3)), [1], r"same shape, got \(2, 4\) and \(2, 3\)"),
        (np.zeros((2, 0)), np.zeros((2, 0)), [1], "at least one prompt and one sample"),
        (np.full((1, 2), np.nan), np.zeros((1, 2)), [1], "proxy must be finite"),
        (np.zeros((1, 2)), np.full((1, 2), np.inf), [1], "gold must be finite"),
        (np.zeros((1, 4)), np.zeros((1, 4)), [5], r"ns must be .* ints in \[1, n_samples=4\]"),
        (np.zeros((1, 4)), np.zeros((1, 4)), [0], r"ns must be"),
        (np.zeros((1, 4)), np.zeros((1, 4)), [1.5], r"ns must be"),
        (np.zeros((1, 4)), np.zeros((1, 4)), [], r"ns must be a non-empty"),
        (np.zeros((1, 4)), np.zeros((1, 4)), 2, r"ns must be a non-empty 1-D sequence"),
    ],
)
def test_bad_inputs(proxy, gold, ns, match):
    with pytest.raises(ValueError, match=match):
        best_of_n(proxy, gold, ns)


def test_bad_parameters():
    with pytest.raises(ValueError, match=r"kl_best_of_n: n must be an int >= 1"):
        kl_best_of_n(0)
    with pytest.raises(ValueError, match=r"kl_best_of_n: n must be an int >= 1"):
        kl_best_of_n(2.5)
    with pytest.raises(
        ValueError, match=r"best_of_n_weights: n must be an int in \[1, n_samples=3\]"
    ):
        best_of_n_weights(4, 3)
    with pytest.raises(ValueError, match="n_resamples must be a positive int"):
        best_of_n_curve(np.zeros((2, 2)), np.zeros((2, 2)), [1], n_resamples=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        best_of_n_curve(np.zeros((2, 2)), np.zeros((2, 2)), [1], confidence=1.0)


def test_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(3)
    gold = rng.normal(size=(30, 8))
    curves = {
        "proxy": best_of_n_curve(gold + rng.normal(size=gold.shape), gold, [1, 2, 4, 8]),
        "oracle": best_of_n_curve(gold, gold, [1, 2, 4, 8]),
    }
    fig = plot_best_of_n(curves, tmp_path / "bon.png")
    assert (tmp_path / "bon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes[0].lines) == 2
