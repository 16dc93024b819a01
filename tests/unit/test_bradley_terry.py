"""Bradley–Terry heads: pairwise score, and the Laplace posterior against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, GroupKFold

from skebrm import BradleyTerryHead, LaplaceBradleyTerryHead
from skebrm.bradley_terry import fit_bradley_terry


def _pairs(n_pairs=80, d=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    w = np.array([1.5, -1.0, 0.5, 0.25, -0.5, 1.0][:d])
    X = rng.normal(size=(2 * n_pairs, d)) * scale
    r = X @ w
    first_wins = rng.random(n_pairs) < 1.0 / (1.0 + np.exp(-(r[0::2] - r[1::2])))
    pair_id = np.repeat(np.arange(n_pairs), 2)
    chosen = np.empty(2 * n_pairs, dtype=bool)
    chosen[0::2], chosen[1::2] = first_wins, ~first_wins
    return X, pair_id, chosen


def _diffs(X, chosen):
    return X[chosen] - X[~chosen]  # pairs are consecutive rows, so this keeps pair order


def _neg_log_posterior(w, z, lam):
    """Σ_pairs −log σ(w·z) + λ/2 ‖w‖², written out per pair."""
    total = 0.0
    for zi in z:
        total += math.log1p(math.exp(-float(np.dot(w, zi))))
    return total + 0.5 * lam * float(np.dot(w, w))


def test_head_score_is_pairwise_accuracy():
    X, pair_id, chosen = _pairs(seed=1)
    head = BradleyTerryHead().fit(X, pair_id=pair_id, chosen=chosen)
    r = head.predict(X)
    loop = [1.0 if r[c] > r[j] else 0.5 if r[c] == r[j] else 0.0 for c, j in _rows(chosen)]
    assert head.score(X, pair_id=pair_id, chosen=chosen) == pytest.approx(np.mean(loop))
    with pytest.raises(ValueError, match="BradleyTerryHead.score: pair_id and chosen are both"):
        head.score(X)


def _rows(chosen):
    rows = np.arange(chosen.size).reshape(-1, 2)
    return [(a, b) if chosen[a] else (b, a) for a, b in rows]


@pytest.mark.parametrize("cls", [BradleyTerryHead, LaplaceBradleyTerryHead])
def test_grid_search_selects_by_pairwise_accuracy(cls):
    X, pair_id, chosen = _pairs(n_pairs=90, d=4, seed=2)
    Cs = [1e-3, 1.0]
    cv = GroupKFold(n_splits=3)
    with sklearn.config_context(enable_metadata_routing=True):
        est = cls().set_fit_request(pair_id=True, chosen=True)
        est = est.set_score_request(pair_id=True, chosen=True)
        search = GridSearchCV(est, {"C": Cs}, cv=cv, error_score="raise")
        search.fit(X, groups=pair_id, pair_id=pair_id, chosen=chosen)
    # the same folds by hand: fit on the training rows, pairwise accuracy on the test rows
    by_hand = []
    for C in Cs:
        fold_scores = []
        for train, test in cv.split(X, groups=pair_id):
            w = fit_bradley_terry(X[train][chosen[train]], X[train][~chosen[train]], C=C)
            r = X[test] @ w
            ct = chosen[test]
            fold_scores.append(np.mean(r[ct] > r[~ct]) + 0.5 * np.mean(r[ct] == r[~ct]))
        by_hand.append(np.mean(fold_scores))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], by_hand)
    assert search.best_score_ == pytest.approx(max(by_hand))
    assert search.best_params_ == {"C": Cs[int(np.argmax(by_hand))]}


def test_laplace_mean_is_the_bradley_terry_fit():
    X, pair_id, chosen = _pairs(seed=3)
    lap = LaplaceBradleyTerryHead(C=0.3).fit(X, pair_id=pair_id, chosen=chosen)
    bt = BradleyTerryHead(C=0.3).fit(X, pair_id=pair_id, chosen=chosen)
    np.testing.assert_array_equal(lap.coef_, bt.coef_)
    np.testing.assert_array_equal(lap.predict(X), bt.predict(X))
    assert lap.prior_precision_ == pytest.approx(1.0 / 0.6)


@pytest.mark.parametrize("C", [0.05, 2.0])
def test_prior_precision_makes_the_fit_the_posterior_mode(C):
    """λ = 1/(2C): the fitted weights are the mode of the posterior the Laplace head uses."""
    from scipy.optimize import minimize

    X, pair_id, chosen = _pairs(n_pairs=60, seed=4)
    lap = LaplaceBradleyTerryHead(C=C).fit(X, pair_id=pair_id, chosen=chosen)
    z = _diffs(X, chosen)

    def mode(lam):
        def fun(w):
            m = z @ w
            p = 1.0 / (1.0 + np.exp(-m))
            value = np.logaddexp(0.0, -m).sum() + 0.5 * lam * w @ w
            return value, -(z * (1.0 - p)[:, None]).sum(axis=0) + lam * w

        res = minimize(fun, np.zeros(z.shape[1]), jac=True, method="BFGS", tol=1e-12)
        return res.x

    exact = mode(lap.prior_precision_)
    size = np.abs(exact).max()
    # scikit-learn's LBFGS stops at its own tolerance (measured: within 1.2e-3 of the
    # weights' size here); the priors of the two ways to get the convention wrong have modes
    # 6.6 % (λ = 1/(4C)) and 9.4 % (λ = 1/C) away at C = 2, 29-34 % at C = 0.05
    np.testing.assert_allclose(lap.coef_, exact, rtol=0, atol=5e-3 * size)
    for wrong in (1.0 / C, 1.0 / (4.0 * C)):
        assert np.abs(mode(wrong) - lap.coef_).max() > 3e-2 * size


def test_precision_matches_numerical_hessian():
    X, pair_id, chosen = _pairs(n_pairs=50, d=3, seed=5)
    lap = LaplaceBradleyTerryHead(C=0.5).fit(X, pair_id=pair_id, chosen=chosen)
    z, w, lam = _diffs(X, chosen), lap.coef_, lap.prior_precision_
    h = 1e-4
    d = w.size
    num = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
            num[i, j] = (
                _neg_log_posterior(w + ei + ej, z, lam)
                - _neg_log_posterior(w + ei - ej, z, lam)
                - _neg_log_posterior(w - ei + ej, z, lam)
                + _neg_log_posterior(w - ei - ej, z, lam)
            ) / (4 * h * h)
    np.testing.assert_allclose(lap.precision_, num, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lap.covariance_ @ lap.precision_, np.eye(d), atol=1e-10)


def test_stds_match_loop():
    X, pair_id, chosen = _pairs(n_pairs=40, d=4, seed=6)
    lap = LaplaceBradleyTerryHead().fit(X, pair_id=pair_id, chosen=chosen)
    cov = lap.covariance_
    d = X.shape[1]

    def quad(e):
        return math.sqrt(sum(e[j] * cov[j, k] * e[k] for j in range(d) for k in range(d)))

    np.testing.assert_allclose(lap.score_uncertainty(X[:10]), [quad(e) for e in X[:10]])
    Xa, Xb = X[0:20:2], X[1:20:2]
    pair = lap.pair_uncertainty(Xa, Xb)
    np.testing.assert_allclose(pair, [quad(a - b) for a, b in zip(Xa, Xb)])
    # the two rewards share w: the margin's spread is not hypot of the rows' spreads
    assert not np.allclose(pair, np.hypot(lap.score_uncertainty(Xa), lap.score_uncertainty(Xb)))


def test_probit_preference_probability_matches_monte_carlo():
    """σ(μ / sqrt(1 + π s²/8)) against E[σ(w·z)] over w ~ N(coef_, covariance_).

    Error budget: the probit approximation itself is off by at most 0.0131 for |μ| ≤ 6,
    s ≤ 5 (measured by Gauss–Hermite quadrature); Monte Carlo with 100,000 draws adds at
    most 4 standard errors (≤ 4 · 0.5 / √100000 ≈ 0.0063).
    """
    X, pair_id, chosen = _pairs(n_pairs=25, d=3, seed=7, scale=2.0)  # few pairs: wide posterior
    lap = LaplaceBradleyTerryHead(C=1.0).fit(X, pair_id=pair_id, chosen=chosen)
    rng = np.random.default_rng(0)
    Xa, Xb = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    z = Xa - Xb
    s = lap.pair_uncertainty(Xa, Xb)
    mu = z @ lap.coef_
    assert s.max() > 1.0 and np.abs(mu).max() < 6 and s.max() < 5  # a regime where it matters
    draws = rng.multivariate_normal(lap.coef_, lap.covariance_, size=100_000)
    sig = 1.0 / (1.0 + np.exp(-(draws @ z.T)))
    mc, se = sig.mean(axis=0), sig.std(axis=0) / math.sqrt(draws.shape[0])
    got = lap.preference_probability(Xa, Xb)
    assert np.all(np.abs(got - mc) <= 0.0131 + 4 * se)
    # and it is a better estimate of E[σ(w·z)] than the plug-in σ(μ) where s is large
    plug_in = 1.0 / (1.0 + np.exp(-mu))
    wide = s > 1.0
    assert np.abs(got - mc)[wide].mean() < np.abs(plug_in - mc)[wide].mean()
    np.testing.assert_allclose(got + lap.preference_probability(Xb, Xa), 1.0)


def test_posterior_narrows_with_more_pairs():
    Xs, ps, cs = _pairs(n_pairs=30, seed=8)
    Xl, pl, cl = _pairs(n_pairs=600, seed=8)
    small = LaplaceBradleyTerryHead().fit(Xs, pair_id=ps, chosen=cs)
    large = LaplaceBradleyTerryHead().fit(Xl, pair_id=pl, chosen=cl)
    probe = np.random.default_rng(1).normal(size=(50, 3))
    assert np.all(large.score_uncertainty(probe) < small.score_uncertainty(probe))


def test_laplace_around_the_base_rewards_weights():
    """weights='base_reward': the posterior sits on the RM's own last layer."""
    X, pair_id, chosen = _pairs(n_pairs=70, d=4, seed=9)
    w_rm = np.array([0.7, -0.2, 1.1, 0.4])
    y = X @ w_rm + 3.0  # a trained RM's scoring layer: reward = w·e + b
    lap = LaplaceBradleyTerryHead(C=0.5, weights="base_reward").fit(
        X, y, pair_id=pair_id, chosen=chosen
    )
    np.testing.assert_allclose(lap.coef_, w_rm, atol=1e-10)
    assert lap.intercept_ == pytest.approx(3.0) and lap.base_reward_r2_ == pytest.approx(1.0)
    np.testing.assert_allclose(lap.predict(X), y)
    z = _diffs(X, chosen)
    expected = np.eye(4) / (2 * 0.5)
    for zi in z:
        p = 1.0 / (1.0 + math.exp(-float(zi @ w_rm)))
        expected += p * (1.0 - p) * np.outer(zi, zi)
    np.testing.assert_allclose(lap.precision_, expected)
    # on the rewards of a fitted head it is that head's posterior
    head = BradleyTerryHead(C=0.5).fit(X, pair_id=pair_id, chosen=chosen)
    fitted = LaplaceBradleyTerryHead(C=0.5).fit(X, pair_id=pair_id, chosen=chosen)
    taken = LaplaceBradleyTerryHead(C=0.5, weights="base_reward").fit(
        X, head.predict(X), pair_id=pair_id, chosen=chosen
    )
    np.testing.assert_allclose(taken.coef_, fitted.coef_, atol=1e-10)
    np.testing.assert_allclose(taken.precision_, fitted.precision_, rtol=1e-8)
    assert math.isnan(fitted.base_reward_r2_)


def test_laplace_errors():
    X, pair_id, chosen = _pairs(n_pairs=10)
    with pytest.raises(NotFittedError):
        LaplaceBradleyTerryHead().score_uncertainty(X)
    with pytest.raises(ValueError, match="'C' parameter of LaplaceBradleyTerryHead"):
        LaplaceBradleyTerryHead(C=0.0).fit(X, pair_id=pair_id, chosen=chosen)
    lap = LaplaceBradleyTerryHead().fit(X, pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="X_a and X_b must have the same number of rows"):
        lap.preference_probability(X[:3], X[:4])
    with pytest.raises(ValueError, match="X has 2 features"):
        lap.pair_uncertainty(X[:3, :2], X[:3, :2])
    with pytest.raises(ValueError, match="LaplaceBradleyTerryHead.fit: pair_id was given"):
        LaplaceBradleyTerryHead().fit(X, pair_id=pair_id)
    base = LaplaceBradleyTerryHead(weights="base_reward")
    with pytest.raises(ValueError, match="y \\(the base reward per row\\) is required"):
        base.fit(X, pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="y must be a linear function of X .* got R²"):
        base.fit(X, np.tanh(3 * X[:, 0]) ** 2, pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="'weights' parameter of LaplaceBradleyTerryHead"):
        LaplaceBradleyTerryHead(weights="map").fit(X, pair_id=pair_id, chosen=chosen)
