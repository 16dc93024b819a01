"""MahalanobisScorer and ood_auroc against plain numpy references and on shifted data."""

import json

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skebrm import MahalanobisScorer
from skebrm.ood import ood_auroc


def _plain_distance(train, X, s):
    mu = train.mean(axis=0)
    S = (train - mu).T @ (train - mu) / train.shape[0]
    d = train.shape[1]
    cov = (1 - s) * S + s * np.trace(S) / d * np.eye(d)
    diff = X - mu
    return np.sqrt(np.array([row @ np.linalg.inv(cov) @ row for row in diff]))


def _plain_auroc(a, b):
    return np.mean([[1.0 if y > x else 0.5 if y == x else 0.0 for y in b] for x in a])


def _correlated(n, d=6, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(100).normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix + 3.0 + shift


@pytest.mark.parametrize("shrinkage", [0.0, 0.1, 0.7, 1.0])
def test_distance_matches_a_plain_reference(shrinkage):
    train, test = _correlated(50), _correlated(7, seed=1)
    scorer = MahalanobisScorer(shrinkage=shrinkage).fit(train)
    np.testing.assert_allclose(
        scorer.score_samples(test), _plain_distance(train, test, shrinkage), rtol=1e-9
    )
    assert scorer.shrinkage_ == shrinkage


def test_ledoit_wolf_uses_its_estimated_shrinkage():
    train, test = _correlated(30, d=10), _correlated(5, d=10, seed=2)
    scorer = MahalanobisScorer().fit(train)
    s = ledoit_wolf_shrinkage(train)
    assert scorer.shrinkage_ == pytest.approx(s, rel=1e-12)
    np.testing.assert_allclose(
        scorer.score_samples(test), _plain_distance(train, test, s), rtol=1e-9
    )
    np.testing.assert_allclose(scorer.decision_function(test), scorer.score_samples(test))


def test_more_dimensions_than_rows_still_fit_with_shrinkage():
    train = np.random.default_rng(0).normal(size=(20, 50))
    assert np.all(np.isfinite(MahalanobisScorer().fit(train).score_samples(train)))
    with pytest.raises(ValueError, match=r"MahalanobisScorer.fit: the covariance .* singular"):
        MahalanobisScorer(shrinkage=0.0).fit(train)


def test_auroc_near_one_for_a_clear_shift_and_near_half_for_none():
    train = _correlated(2000, seed=3)
    scorer = MahalanobisScorer().fit(train)
    d_in = scorer.score_samples(_correlated(1000, seed=4))
    d_same = scorer.score_samples(_correlated(1000, seed=5))
    d_shift = scorer.score_samples(_correlated(1000, seed=6, shift=2.0))
    assert ood_auroc(d_in, d_shift) > 0.99
    # no shift: AUROC ~ 0.5, sd sqrt((n1+n2+1)/(12 n1 n2)) ~ 0.013 for 1000 vs 1000
    assert abs(ood_auroc(d_in, d_same) - 0.5) < 0.05


def test_a_shift_along_a_low_variance_direction_is_caught_where_euclid_misses_it():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 10.0, 10.0, 0.1])
    train = rng.normal(size=(2000, 4)) * scales
    inside = rng.normal(size=(500, 4)) * scales
    outside = rng.normal(size=(500, 4)) * scales + np.array([0, 0, 0, 1.0])
    scorer = MahalanobisScorer(shrinkage=0.0).fit(train)
    assert ood_auroc(scorer.score_samples(inside), scorer.score_samples(outside)) > 0.95
    euclid = lambda X: np.linalg.norm(X - train.mean(0), axis=1)  # noqa: E731
    assert abs(ood_auroc(euclid(inside), euclid(outside)) - 0.5) < 0.1


def test_outlier_probability_is_the_chi_square_cdf():
    from scipy.stats import chi2

    train = np.random.default_rng(0).normal(size=(5000, 3))
    scorer = MahalanobisScorer(shrinkage=0.0).fit(train)
    test = np.random.default_rng(1).normal(size=(4000, 3))
    p = scorer.outlier_probability(test)
    np.testing.assert_allclose(p, chi2.cdf(scorer.score_samples(test) ** 2, df=3))
    # Gaussian rows: the probability is ~uniform
    assert abs(p.mean() - 0.5) < 0.02 and abs(np.mean(p > 0.9) - 0.1) < 0.02


def test_ood_auroc_matches_a_plain_count_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=30).astype(float)
    b = rng.integers(1, 6, size=20).astype(float)
    assert ood_auroc(a, b) == pytest.approx(_plain_auroc(a, b), abs=1e-12)
    assert ood_auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert ood_auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    with pytest.raises(
        ValueError, match="ood_auroc: scores_in and scores_out must both be non-empty"
    ):
        ood_auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        ood_auroc([np.nan], [1.0])


def test_to_dict_round_trips_through_json():
    train, test = _correlated(40), _correlated(9, seed=7)
    for shrinkage in ["ledoit_wolf", 0.3]:
        scorer = MahalanobisScorer(shrinkage=shrinkage).fit(train)
        back = MahalanobisScorer.from_dict(json.loads(json.dumps(scorer.to_dict())))
        assert back.get_params() == scorer.get_params()
        assert back.shrinkage_ == scorer.shrinkage_ and back.n_features_in_ == 6
        np.testing.assert_array_equal(back.score_samples(test), scorer.score_samples(test))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="x"), "not a saved MahalanobisScorer"),
        (lambda d: d.update(version=2), "unsupported version 2"),
        (lambda d: d.update(location=d["location"][:-1]), "matching size"),
        (lambda d: d["covariance"][0].__setitem__(1, 99.0), "symmetric"),
        (lambda d: d.update(covariance=(-np.eye(6)).tolist()), "not positive definite"),
        (lambda d: d.pop("location"), "malformed"),
        (lambda d: d["params"].update(shrinkage=3.0), "'shrinkage' parameter"),
    ],
)
def test_from_dict_rejects_bad_data(mutate, match):
    data = MahalanobisScorer().fit(_correlated(40)).to_dict()
    mutate(data)
    with pytest.raises(ValueError, match=match):
        MahalanobisScorer.from_dict(data)


def test_errors():
    with pytest.raises(ValueError, match=r"'shrinkage' parameter of MahalanobisScorer"):
        MahalanobisScorer(shrinkage="oas").fit(_correlated(10))
    with pytest.raises(NotFittedError):
        MahalanobisScorer().score_samples(_correlated(3))
    scorer = MahalanobisScorer().fit(_correlated(10))
    with pytest.raises(ValueError, match="6 features"):
        scorer.score_samples(np.ones((2, 5)))


@parametrize_with_checks([MahalanobisScorer()])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_scores_in_row_blocks_match_one_pass(monkeypatch):
    import skebrm.ood as ood

    train, test = _correlated(60), _correlated(23, seed=8)
    scorer = MahalanobisScorer().fit(train)
    want = scorer.score_samples(test)
    monkeypatch.setattr(ood, "_BLOCK", 5)
    np.testing.assert_allclose(scorer.score_samples(test), want, rtol=1e-13)
