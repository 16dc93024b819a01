"""Baselines: Bradley–Terry ensemble and the conflict-filtered MLP reward head."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, GroupKFold

from skebrm.baselines import BradleyTerryEnsemble, MLPRewardHead
from skebrm.bradley_terry import fit_bradley_terry


def _pairs(n_pairs=120, d=5, seed=0, noise=0.0):
    w = np.random.default_rng(100).normal(size=d)  # one true reward for every sample
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n_pairs, d))
    r = X @ w
    pair_id = np.repeat(np.arange(n_pairs), 2)
    first_wins = r[0::2] + noise * rng.normal(size=n_pairs) > r[1::2]
    chosen = np.empty(2 * n_pairs, dtype=bool)
    chosen[0::2], chosen[1::2] = first_wins, ~first_wins
    return X, r, pair_id, chosen


def test_ensemble_members_match_loop_over_bootstrap():
    X, _, pair_id, chosen = _pairs()
    ens = BradleyTerryEnsemble(n_estimators=3, C=0.5, random_state=4).fit(
        X, pair_id=pair_id, chosen=chosen
    )
    idx_c = np.flatnonzero(chosen)
    idx_r = np.flatnonzero(~chosen)
    rng = np.random.RandomState(4)
    for k in range(3):
        boot = rng.randint(0, 120, size=120)
        coef = fit_bradley_terry(X[idx_c[boot]], X[idx_r[boot]], C=0.5)
        np.testing.assert_allclose(ens.coefs_[k], coef, rtol=1e-6, atol=1e-8)


def test_ensemble_aggregations_match_loop():
    X, _, pair_id, chosen = _pairs(seed=1)
    ens = BradleyTerryEnsemble(n_estimators=4, random_state=0).fit(
        X, pair_id=pair_id, chosen=chosen
    )
    raw = X @ ens.coefs_.T
    members = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    for i in range(0, X.shape[0], 37):
        vals = list(members[i])
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        for agg, lam, expected in (
            ("mean", 1.0, mean),
            ("worst_case", 1.0, min(vals)),
            ("uncertainty_weighted", 0.7, mean - 0.7 * std),
        ):
            ens.set_params(aggregation=agg, uncertainty_penalty=lam)
            assert ens.predict(X[i : i + 1])[0] == pytest.approx(expected)
        assert ens.score_uncertainty(X[i : i + 1])[0] == pytest.approx(std)


def test_ensemble_learns_the_preference():
    X, _, pair_id, chosen = _pairs(n_pairs=300, seed=2)
    ens = BradleyTerryEnsemble(random_state=0).fit(X, pair_id=pair_id, chosen=chosen)
    Xt, _, pt, ct = _pairs(n_pairs=300, seed=2)
    assert ens.score(Xt, pair_id=pt, chosen=ct) > 0.9
    assert ens.score_uncertainty(X).shape == (600,)
    assert np.all(ens.score_uncertainty(X) >= 0)


def test_ensemble_is_deterministic():
    X, _, pair_id, chosen = _pairs()
    a = BradleyTerryEnsemble(random_state=3).fit(X, pair_id=pair_id, chosen=chosen)
    b = BradleyTerryEnsemble(random_state=3).fit(X, pair_id=pair_id, chosen=chosen)
    np.testing.assert_array_equal(a.coefs_, b.coefs_)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_estimators": 0}, "'n_estimators' parameter of BradleyTerryEnsemble must be an int"),
        ({"aggregation": "max"}, "'aggregation' parameter .* among"),
        ({"C": 0.0}, "'C' parameter .* range \\(0.0, inf\\)"),
        ({"uncertainty_penalty": -1.0}, "'uncertainty_penalty' parameter"),
    ],
)
def test_ensemble_parameter_errors(params, match):
    X, _, pair_id, chosen = _pairs(n_pairs=10)
    with pytest.raises(ValueError, match=match):
        BradleyTerryEnsemble(**params).fit(X, pair_id=pair_id, chosen=chosen)


def test_not_fitted_and_pair_errors():
    X, r, _pair_id, chosen = _pairs(n_pairs=10)
    for est in (BradleyTerryEnsemble(), MLPRewardHead()):
        with pytest.raises(NotFittedError):
            est.predict(X)
    with pytest.raises(ValueError, match="pair_id and chosen are both None"):
        BradleyTerryEnsemble().fit(X)
    with pytest.raises(ValueError, match="exactly two rows"):
        MLPRewardHead().fit(X, r, pair_id=np.arange(20), chosen=chosen)


def _loop_conflicts(y, pair_id, chosen):
    dropped = 0
    for p in np.unique(pair_id):
        rows = np.flatnonzero(pair_id == p)
        c = next(i for i in rows if chosen[i])
        rj = next(i for i in rows if not chosen[i])
        dropped += not y[c] > y[rj]
    return dropped


@pytest.mark.parametrize("objective", ["regression", "bradley_terry"])
def test_mlp_filters_conflicts_and_learns(objective):
    X, r, pair_id, chosen = _pairs(n_pairs=200, seed=5, noise=1.0)
    head = MLPRewardHead(
        objective=objective, hidden=(16,), max_epochs=40, learning_rate=1e-2, random_state=0
    ).fit(X, r, pair_id=pair_id, chosen=chosen)
    assert head.n_pairs_dropped_ == _loop_conflicts(r, pair_id, chosen) > 0
    assert len(head.history_) == 40
    assert head.history_[-1]["loss"] < head.history_[0]["loss"]
    # the refit agrees with the clean reward on fresh data
    Xt, rt, _, _ = _pairs(n_pairs=200, seed=15)
    pred = head.predict(Xt)
    agree = np.mean((pred[0::2] > pred[1::2]) == (rt[0::2] > rt[1::2]))
    assert agree > 0.85


def test_mlp_without_filter_keeps_every_pair():
    X, r, pair_id, chosen = _pairs(n_pairs=50, seed=6, noise=1.0)
    head = MLPRewardHead(filter_conflicts=False, hidden=(4,), max_epochs=2, random_state=0)
    head.fit(X, r, pair_id=pair_id, chosen=chosen)
    assert head.n_pairs_dropped_ == 0
    bt = MLPRewardHead(
        objective="bradley_terry", filter_conflicts=False, hidden=(4,), max_epochs=2, random_state=0
    )
    bt.fit(X, pair_id=pair_id, chosen=chosen)  # no y needed
    assert bt.predict(X).shape == (100,)


def test_mlp_is_deterministic():
    X, r, pair_id, chosen = _pairs(n_pairs=60, seed=7)
    kw = dict(hidden=(8, 8), dropout=0.2, max_epochs=3, batch_size=16, random_state=11)
    a = MLPRewardHead(**kw).fit(X, r, pair_id=pair_id, chosen=chosen).predict(X)
    b = MLPRewardHead(**kw).fit(X, r, pair_id=pair_id, chosen=chosen).predict(X)
    np.testing.assert_array_equal(a, b)


def test_mlp_errors():
    X, r, pair_id, chosen = _pairs(n_pairs=10)
    with pytest.raises(ValueError, match="y \\(the base reward per row\\) is required"):
        MLPRewardHead().fit(X, pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="every pair conflicts"):
        MLPRewardHead().fit(X, -np.where(chosen, 1.0, 0.0), pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="'objective' parameter of MLPRewardHead"):
        MLPRewardHead(objective="hinge").fit(X, r, pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="'hidden' parameter"):
        MLPRewardHead(hidden=(0,)).fit(X, r, pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="'random_state' parameter"):
        MLPRewardHead(random_state=np.random.RandomState(0)).fit(
            X, r, pair_id=pair_id, chosen=chosen
        )


@pytest.mark.parametrize(
    ("est", "grid"),
    [
        (BradleyTerryEnsemble(n_estimators=2, random_state=0), {"C": [0.01, 1.0]}),
        (
            MLPRewardHead(hidden=(4,), max_epochs=2, random_state=0),
            {"objective": ["regression", "bradley_terry"]},
        ),
    ],
)
def test_grid_search_with_group_kfold(est, grid):
    X, r, pair_id, chosen = _pairs(n_pairs=60, seed=8)
    cv = GroupKFold(n_splits=3)
    with sklearn.config_context(enable_metadata_routing=True):
        routed = clone(est).set_fit_request(pair_id=True, chosen=True)
        routed = routed.set_score_request(pair_id=True, chosen=True)
        search = GridSearchCV(routed, grid, cv=cv, error_score="raise")
        search.fit(X, r, groups=pair_id, pair_id=pair_id, chosen=chosen)
    # the same folds by hand: refit, predict the held-out rows, pairwise accuracy in a loop
    by_hand = []
    for params in search.cv_results_["params"]:
        fold_scores = []
        for train, test in cv.split(X, groups=pair_id):
            fitted = clone(est).set_params(**params)
            fitted.fit(X[train], r[train], pair_id=pair_id[train], chosen=chosen[train])
            pred, ct, pt = fitted.predict(X[test]), chosen[test], pair_id[test]
            credit = []
            for p in np.unique(pt):
                c = pred[(pt == p) & ct][0]
                j = pred[(pt == p) & ~ct][0]
                credit.append(1.0 if c > j else 0.5 if c == j else 0.0)
            fold_scores.append(sum(credit) / len(credit))
        by_hand.append(sum(fold_scores) / len(fold_scores))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], by_hand)
    assert search.best_score_ == pytest.approx(max(by_hand))
    assert search.best_params_ == search.cv_results_["params"][int(np.argmax(by_hand))]
    assert search.best_estimator_.predict(X).shape == (120,)


def test_bradley_terry_head_validates_its_parameters():
    from skebrm import BradleyTerryHead

    X, _, pair_id, chosen = _pairs(n_pairs=10)
    with pytest.raises(ValueError, match="'C' parameter of BradleyTerryHead"):
        BradleyTerryHead(C=-1.0).fit(X, pair_id=pair_id, chosen=chosen)
    with pytest.raises(ValueError, match="'max_iter' parameter of BradleyTerryHead"):
        BradleyTerryHead(max_iter=0).fit(X, pair_id=pair_id, chosen=chosen)
