"""PairSelector: its calibrations against plain references, and its guarantees by simulation.

The synthetic pairs: confidence ``c ~ U(0, 1)``, misordered with probability ``(1 − c) / 2``,
so the population misorder rate among pairs accepted at ``c ≥ τ`` is exactly
``R(τ) = (1 − τ) / 4`` and the oracle accepts a fraction ``4α`` at level ``α ≤ 1/4``.
"""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import binom

pytest.importorskip("mapie")

from skebrm import PairSelector
from skebrm.selection import SelectionWarning, selective_risk

N_SPLITS = 500


def _pairs(rng, n):
    c = rng.random(n)
    correct = rng.random(n) >= (1 - c) / 2
    return c, correct


def _population_risk(tau):
    return (1 - np.clip(tau, 0, 1)) / 4


def _plain_ltt(c, correct, grid_desc, alpha, delta):
    """Fixed-sequence learn then test with exact binomial p-values, one threshold at a time."""
    best = math.inf
    for tau in grid_desc:
        acc = c >= tau
        n_acc, n_wrong = int(acc.sum()), int((acc & ~correct).sum())
        if n_acc == 0 or binom.cdf(n_wrong, n_acc, alpha) > delta:
            break
        best = tau
    return best


def _plain_conformal(c_cal, correct_cal, c_test, alpha):
    """Conformal selection by a literal Benjamini-Hochberg over conformal p-values."""
    n, m = len(c_cal), len(c_test)
    p = np.array([(1 + np.sum(~correct_cal & (c_cal >= cj))) / (n + 1) for cj in c_test])
    order = np.argsort(p, kind="stable")
    k = 0
    for rank in range(1, m + 1):
        if p[order[rank - 1]] <= alpha * rank / m:
            k = rank
    accepted = np.zeros(m, dtype=bool)
    if k:
        accepted[p <= p[order[k - 1]]] = True
    return accepted


# ------------------------------------------------------------------ references


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_ltt_matches_a_plain_fixed_sequence_binomial_test(alpha):
    rng = np.random.default_rng(0)
    c, correct = _pairs(rng, 800)
    grid = np.linspace(0.95, 0.0, 96)
    sel = PairSelector(alpha=alpha, delta=0.1, thresholds=grid).fit(c, correct)
    assert sel.threshold_ == _plain_ltt(c, correct, grid, alpha, 0.1)
    np.testing.assert_array_equal(sel.predict(c), c >= sel.threshold_)
    # the default grid: order statistics of the confidences, strictest first
    sel = PairSelector(alpha=alpha, delta=0.1).fit(c, correct)
    assert sel.threshold_ == _plain_ltt(c, correct, sel.candidate_thresholds_, alpha, 0.1)
    assert np.all(np.diff(sel.candidate_thresholds_) < 0)
    m_min = math.ceil(math.log(0.1) / math.log(1 - alpha))  # 45, 22, 11
    assert np.sum(c >= sel.candidate_thresholds_[0]) == max(m_min, 800 // 20)
    assert np.sum(c >= sel.candidate_thresholds_[-1]) == 800


def test_p_values_are_mapies_hoeffding_bentkus_for_a_binary_loss():
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    from skebrm.selection import binomial_p_values

    # powers of two: n_wrong / n_acc * n_acc is exact, so MAPIE's ceil(n r) is n_wrong
    n_acc = np.array([32, 64, 128, 256, 512, 1024] * 3)
    n_wrong = (n_acc * np.repeat([0.02, 0.09, 0.15], 6)).astype(int)
    want = compute_hoeffding_bentkus_p_value(n_wrong / n_acc, n_acc.astype(float), 0.1, True)
    np.testing.assert_allclose(binomial_p_values(n_wrong, n_acc, 0.1), want[:, 0], rtol=1e-12)
    assert binomial_p_values([0], [0], 0.1)[0] == 1.0


@pytest.mark.parametrize("fwer", ["bonferroni_holm", "bonferroni", "fixed_sequence"])
def test_ltt_agrees_with_mapies_controller_up_to_its_rounding(fwer):
    """MAPIE's controller on the same grid: the same threshold where its ceil(n risk) is the
    count of misorderings, otherwise a stricter one (never a looser one)."""
    from mapie.risk_control import BinaryClassificationController

    rng = np.random.default_rng(1)
    same = 0
    for _ in range(10):
        c, correct = _pairs(rng, 1000)
        grid = np.linspace(0.9, 0.0, 46)
        sel = PairSelector(alpha=0.1, thresholds=grid, fwer_method=fwer).fit(c, correct)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ctl = BinaryClassificationController(
                lambda x: np.column_stack([1 - x, x]),
                risk="precision",
                target_level=0.9,
                confidence_level=0.9,
                list_predict_params=grid,
                fwer_method=fwer,
            ).calibrate(c, correct.astype(int))
        theirs = math.inf if ctl.best_predict_param is None else ctl.best_predict_param
        assert sel.threshold_ <= theirs
        same += sel.threshold_ == theirs
    assert same >= 3


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3])
def test_conformal_matches_a_literal_benjamini_hochberg(alpha):
    rng = np.random.default_rng(2)
    c_cal, y_cal = _pairs(rng, 300)
    c_test = np.round(rng.random(120), 2)  # ties within the batch and with calibration
    sel = PairSelector(alpha=alpha, method="conformal").fit(c_cal, y_cal)
    want = _plain_conformal(c_cal, y_cal, c_test, alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionWarning)
        np.testing.assert_array_equal(sel.predict(c_test), want)
    p = [(1 + np.sum(~y_cal & (c_cal >= cj))) / 301 for cj in c_test]
    np.testing.assert_allclose(sel.conformal_p_values(c_test), p)


def test_any_confidence_scale_plugs_in():
    """The selection depends on the confidence only through its order."""
    rng = np.random.default_rng(3)
    c, correct = _pairs(rng, 1500)
    c_test, _ = _pairs(rng, 500)
    for method in ["ltt", "conformal"]:
        a = PairSelector(method=method).fit(c, correct).predict(c_test)
        f = lambda x: np.exp(8 * x) - 3.0  # noqa: E731 (monotone rescaling: margin, 1/std...)
        b = PairSelector(method=method).fit(f(c), correct).predict(f(c_test))
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------- guarantees


def _binomial_allowance(p, n_splits, level=1e-3):
    """The largest violation frequency consistent with a true rate p at this level."""
    return binom.ppf(1 - level, n_splits, p) / n_splits


# the coverage a binomial test at delta = 0.1 can reach with 1000 pairs is far below the
# oracle's 4 alpha at small alpha (measured: 0.05, 0.25, 0.71 of 0.2, 0.4, 0.8)
@pytest.mark.parametrize(("alpha", "min_coverage"), [(0.05, 0.03), (0.1, 0.2), (0.2, 0.6)])
def test_ltt_violation_frequency_is_at_most_delta_over_random_splits(alpha, min_coverage):
    rng = np.random.default_rng(10 + int(100 * alpha))
    delta, n_cal, n_test = 0.1, 1000, 1000
    violations, risks, coverages = 0, [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionWarning)
        for _ in range(N_SPLITS):
            c, y = _pairs(rng, n_cal + n_test)
            sel = PairSelector(alpha=alpha, delta=delta).fit(c[:n_cal], y[:n_cal])
            violations += _population_risk(sel.threshold_) > alpha
            risk, cov = sel.risk_coverage(c[n_cal:], y[n_cal:])
            risks.append(risk)
            coverages.append(cov)
    freq = violations / N_SPLITS
    print(
        f"ltt alpha={alpha}: violation frequency {freq:.3f} (delta {delta}), "
        f"mean realised risk {np.mean(risks):.4f}, max {np.max(risks):.4f}, "
        f"mean coverage {np.mean(coverages):.3f} (oracle {4 * alpha:.2f})"
    )
    assert freq <= _binomial_allowance(delta, N_SPLITS)
    # and it is not vacuous
    assert np.mean(coverages) > min_coverage


def test_ltt_with_a_grid_fixed_in_advance_is_valid_too():
    rng = np.random.default_rng(4)
    alpha, delta = 0.1, 0.1
    grid = np.linspace(0.9, 0.0, 91)  # fixed before any data: the theorem's exact setting
    violations, coverages = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionWarning)  # a split that accepts nothing
        for _ in range(N_SPLITS):
            c, y = _pairs(rng, 1000)
            sel = PairSelector(alpha=alpha, delta=delta, thresholds=grid).fit(c, y)
            violations += _population_risk(sel.threshold_) > alpha
            coverages.append(1 - min(sel.threshold_, 1.0))
    freq = violations / N_SPLITS
    print(f"ltt fixed grid: violation frequency {freq:.3f}, coverage {np.mean(coverages):.3f}")
    assert freq <= _binomial_allowance(delta, N_SPLITS)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_conformal_mean_risk_is_at_most_alpha_over_random_splits(alpha):
    rng = np.random.default_rng(20 + int(100 * alpha))
    n_cal, n_test = 1000, 1000
    fdp, coverages = np.empty(N_SPLITS), np.empty(N_SPLITS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionWarning)
        for s in range(N_SPLITS):
            c, y = _pairs(rng, n_cal + n_test)
            sel = PairSelector(alpha=alpha, method="conformal").fit(c[:n_cal], y[:n_cal])
            fdp[s], coverages[s] = sel.risk_coverage(c[n_cal:], y[n_cal:])
    # Monte-Carlo allowance: 3.3 standard errors of the mean of the splits (one-sided 5e-4)
    allowance = 3.3 * fdp.std(ddof=1) / math.sqrt(N_SPLITS)
    print(
        f"conformal alpha={alpha}: mean realised risk {fdp.mean():.4f} (+{allowance:.4f}), "
        f"max {fdp.max():.4f}, mean coverage {coverages.mean():.3f} (oracle {4 * alpha:.2f})"
    )
    assert fdp.mean() <= alpha + allowance
    assert coverages.mean() > 0.8 * 4 * alpha


def test_conformal_mean_risk_holds_with_few_calibration_pairs():
    """With 50 calibration pairs the +1 of the conformal p-value matters (without it the
    mean risk is about 0.12 at alpha = 0.1): the guarantee is a finite-sample one."""
    rng = np.random.default_rng(40)
    alpha, n_splits = 0.1, 2000
    fdp = np.empty(n_splits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelectionWarning)
        for s in range(n_splits):
            c, y = _pairs(rng, 100)
            sel = PairSelector(alpha=alpha, method="conformal").fit(c[:50], y[:50])
            fdp[s], _ = sel.risk_coverage(c[50:], y[50:])
    allowance = 3.3 * fdp.std(ddof=1) / math.sqrt(n_splits)
    print(f"conformal, 50 + 50 pairs: mean realised risk {fdp.mean():.4f} (+{allowance:.4f})")
    assert fdp.mean() <= alpha + allowance


def test_conformal_mean_risk_over_random_splits_of_one_pool():
    """Exchangeability by random permutation of one fixed pool of labelled pairs."""
    rng = np.random.default_rng(30)
    c, y = _pairs(rng, 2000)
    alpha, fdp = 0.1, np.empty(N_SPLITS)
    for s in range(N_SPLITS):
        perm = rng.permutation(2000)
        cal, test = perm[:1000], perm[1000:]
        sel = PairSelector(alpha=alpha, method="conformal").fit(c[cal], y[cal])
        fdp[s], _ = sel.risk_coverage(c[test], y[test])
    allowance = 3.3 * fdp.std(ddof=1) / math.sqrt(N_SPLITS)
    print(f"conformal, one pool: mean realised risk {fdp.mean():.4f} (+{allowance:.4f})")
    assert fdp.mean() <= alpha + allowance


# ------------------------------------------------------------------ behaviour


def test_no_valid_threshold_accepts_nothing_with_a_warning():
    rng = np.random.default_rng(5)
    c = rng.random(200)
    correct = rng.random(200) < 0.5  # a coin: no confidence is informative
    with pytest.warns(SelectionWarning, match=r"PairSelector.fit: no threshold .* alpha=0.05"):
        sel = PairSelector(alpha=0.05).fit(c, correct)
    assert sel.threshold_ == math.inf
    assert not sel.predict(c).any()
    assert sel.risk_coverage(c, correct) == (0.0, 0.0)
    assert sel.calibration_coverage_ == 0.0 and math.isnan(sel.calibration_risk_)
    conf = PairSelector(alpha=0.05, method="conformal").fit(c, correct)
    with pytest.warns(SelectionWarning, match="conformal selection accepts none of these 200"):
        assert not conf.predict(c).any()


def test_too_few_calibration_pairs_for_the_test_warn():
    # 10 pairs, all correct: (1 - 0.1)^10 = 0.35 > delta, so even these cannot pass
    with pytest.warns(SelectionWarning):
        sel = PairSelector(alpha=0.1).fit(np.arange(10.0), np.ones(10, bool))
    assert sel.threshold_ == math.inf


def test_perfect_confidence_accepts_everything():
    rng = np.random.default_rng(6)
    c = rng.random(500)
    sel = PairSelector(alpha=0.1).fit(c, np.ones(500, bool))
    assert sel.threshold_ == c.min() and sel.predict(c).all()
    assert sel.calibration_risk_ == 0.0 and sel.calibration_coverage_ == 1.0


def test_selective_risk():
    assert selective_risk([True, False, True, True], [True, True, False, True]) == (1 / 3, 0.75)
    assert selective_risk([False, False], [True, False]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same length"):
        selective_risk([True], [True, False])


def test_errors_name_the_parameter_and_the_input():
    c, y = _pairs(np.random.default_rng(0), 50)
    with pytest.raises(ValueError, match=r"'alpha' parameter of PairSelector"):
        PairSelector(alpha=1.5).fit(c, y)
    with pytest.raises(ValueError, match=r"'method' parameter of PairSelector"):
        PairSelector(method="crc").fit(c, y)
    with pytest.raises(ValueError, match=r"PairSelector.fit: correct must have shape \(50,\)"):
        PairSelector().fit(c, y[:-1])
    with pytest.raises(ValueError, match=r"correct must be booleans or 0/1"):
        PairSelector().fit(c, np.full(50, 2))
    with pytest.raises(ValueError, match=r"PairSelector.fit: confidence contains NaN"):
        PairSelector().fit(np.full(50, np.nan), y)
    with pytest.raises(ValueError, match=r"thresholds must be an int or a non-empty array"):
        PairSelector(thresholds=[np.inf]).fit(c, y)
    with pytest.raises(ValueError, match=r"batch_threshold is defined for method='conformal'"):
        PairSelector(alpha=0.5).fit(c, y).batch_threshold(c)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PairSelector().predict(c)
