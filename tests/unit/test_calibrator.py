"""EnergyRewardCalibrator: fitting, filtering, selection, the guard, inference API, errors."""

import re
import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skebrm import EnergyRewardCalibrator, GridDistribution, RefinementWarning
from skebrm._guard import min_detectable_gain
from skebrm._pairs import check_pairs, conflicting_pairs
from skebrm.exceptions import GuardPowerWarning, IneffectiveParameterWarning

FAST = dict(
    hidden=(16, 8),
    reward_hidden=(4, 8),
    n_negatives=16,
    max_epochs=2,
    batch_size=64,
    grid_size=64,
    random_state=0,
)


def make_pairs(n_pairs=100, d=6, seed=0, flip=0.2):
    """Rows with a reward y = X[:, 0] + noise; chosen is the higher true reward, with flips."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n_pairs, d)).astype(np.float32)
    y = X[:, 0] + 0.3 * rng.normal(size=2 * n_pairs)
    pair_id = np.repeat(np.arange(n_pairs), 2)
    true_first = X[0::2, 0] > X[1::2, 0]
    true_first ^= rng.random(n_pairs) < flip
    chosen = np.empty(2 * n_pairs, dtype=bool)
    chosen[0::2], chosen[1::2] = true_first, ~true_first
    return X, y, pair_id, chosen


@pytest.fixture(scope="module")
def data():
    return make_pairs()


@pytest.fixture(scope="module")
def fitted(data):
    X, y, pid, ch = data
    return EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)


def test_fit_sets_attributes_and_filters_exactly_the_conflicts(data, fitted):
    X, y, pid, ch = data
    idx_c, idx_r = check_pairs(pid, ch, len(y))
    assert fitted.n_pairs_ == 100
    assert fitted.n_pairs_dropped_ == int(conflicting_pairs(y, idx_c, idx_r).sum()) > 0
    assert fitted.n_features_in_ == 6
    assert [h["epoch"] for h in fitted.history_] == [1, 2]
    assert fitted.best_epoch_ == 2 and fitted.refinement_helps_ is None
    assert fitted.guard_scores_ is None and fitted.dropout_ == 0.5  # "auto" with NCE+
    assert fitted.grid_.shape == (64,)
    assert not fitted.module_.training


def test_filtering_uses_only_surviving_rows():
    X, y, pid, ch = make_pairs(n_pairs=40)
    y = y.copy()
    # make one pair conflict with an extreme reward: it must not set the grid's range.
    i_c = np.flatnonzero(ch & (pid == 0))[0]
    i_r = np.flatnonzero(~ch & (pid == 0))[0]
    y[i_c], y[i_r] = -100.0, 100.0
    cal = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    assert cal.trusted_range_[1] < 100.0 and cal.trusted_range_[0] > -100.0
    unfiltered = EnergyRewardCalibrator(**FAST, filter_conflicts=False)
    unfiltered.fit(X, y, pair_id=pid, chosen=ch)
    assert unfiltered.n_pairs_dropped_ == 0 and unfiltered.trusted_range_ == (-100.0, 100.0)


def test_fit_without_pairs_uses_all_rows(data):
    X, y, _, _ = data
    cal = EnergyRewardCalibrator(**FAST).fit(X, y)
    assert cal.n_pairs_ == 0 and cal.n_pairs_dropped_ == 0
    assert cal.trusted_range_ == (y.min(), y.max())


def test_outputs_are_in_reward_model_units(data):
    X, y, _, _ = data
    a = EnergyRewardCalibrator(**FAST).fit(X, y)
    b = EnergyRewardCalibrator(**FAST).fit(X, 10 * y + 3)
    np.testing.assert_allclose(
        b.predict(X[:20], base_reward=10 * y[:20] + 3),
        10 * a.predict(X[:20], base_reward=y[:20]) + 3,
        rtol=1e-4,
        atol=1e-3,
    )
    np.testing.assert_allclose(
        b.score_uncertainty(X[:5]), 10 * a.score_uncertainty(X[:5]), rtol=1e-4
    )


def test_inference_api_shapes_and_consistency(data, fitted):
    X, y, _, _ = data
    Xq = X[:7]
    assert fitted.predict(Xq).shape == (7,)
    assert fitted.predict(Xq, base_reward=y[:7]).shape == (7,)
    std = fitted.score_uncertainty(Xq)
    assert std.shape == (7,) and np.all(std >= 0)
    q = fitted.predict_quantiles(Xq, [0.1, 0.5, 0.9])
    assert q.shape == (7, 3) and np.all(np.diff(q, axis=1) > 0)
    inner, outer = fitted.predict_interval(Xq, 0.5), fitted.predict_interval(Xq, 0.1)
    assert np.all(outer[:, 0] <= inner[:, 0]) and np.all(inner[:, 1] <= outer[:, 1])
    grid, logd = fitted.predict_log_density_grid(Xq)
    width = grid[1] - grid[0]
    np.testing.assert_allclose(np.exp(logd).sum(1) * width, 1.0, rtol=1e-9)
    mean = fitted.predict_mean(Xq)
    np.testing.assert_allclose(mean, (np.exp(logd) * width) @ grid, rtol=1e-6, atol=1e-9)
    refined, std = fitted.predict(Xq, base_reward=y[:7], return_std=True)
    np.testing.assert_array_equal(refined, fitted.predict(Xq, base_reward=y[:7]))
    np.testing.assert_array_equal(std, fitted.score_uncertainty(Xq))
    mode, std2 = fitted.predict(Xq, return_std=True)
    np.testing.assert_array_equal(mode, fitted.predict(Xq))
    np.testing.assert_array_equal(std2, std)


def test_preference_probability_matches_sampling_from_the_fitted_distributions(data):
    X, y, _, _ = data
    fitted = EnergyRewardCalibrator(
        **{**FAST, "max_epochs": 30, "learning_rate": 1e-2, "dropout": 0.0}
    ).fit(X, y)
    p = fitted.preference_probability(X[:4], X[10:14])
    da, db = fitted.predict_distribution(X[:4]), fitted.predict_distribution(X[10:14])
    rng = np.random.default_rng(0)
    n = 200_000

    def draw(d, i):  # a cell by its mass, then uniform inside it: the package's convention
        cells = rng.choice(d.n_cells, size=n, p=d.masses[i])
        return d.low + (cells + rng.random(n)) * d.width

    mc = [np.mean(draw(da, i) > draw(db, i)) for i in range(4)]
    np.testing.assert_allclose(p, mc, atol=5e-3)
    assert np.ptp(p) > 0.1  # the rows differ: not a constant one half


def test_predict_distribution_matches_the_single_methods(fitted, data):
    X = data[0][:9]
    d = fitted.predict_distribution(X)
    assert isinstance(d, GridDistribution) and len(d) == 9
    np.testing.assert_array_equal(d.mode, fitted.predict(X))
    np.testing.assert_array_equal(d.mean(), fitted.predict_mean(X))
    np.testing.assert_array_equal(d.std(), fitted.score_uncertainty(X))
    np.testing.assert_array_equal(d.quantiles([0.1, 0.9]), fitted.predict_quantiles(X, [0.1, 0.9]))
    np.testing.assert_array_equal(d.interval(0.2), fitted.predict_interval(X, 0.2))
    grid, logd = fitted.predict_log_density_grid(X)
    np.testing.assert_allclose(d.centres, grid, rtol=1e-12)
    np.testing.assert_array_equal(d.log_density_grid(), logd)
    with pytest.raises(ValueError, match="q must be levels in"):
        fitted.predict_quantiles(X, [1.5])


def test_one_density_convention_for_log_density_grid_and_quantiles(fitted, data):
    X = data[0][:5]
    d = fitted.predict_distribution(X)
    grid, logd = fitted.predict_log_density_grid(X)
    # at the cell centres log_density is the grid log-density
    j = np.array([5, 20, 31, 40, 60])
    np.testing.assert_allclose(fitted.log_density(X, grid[j]), logd[range(5), j], rtol=1e-12)
    # anywhere inside the grid it is the derivative of the CDF the quantiles invert
    r = d.low + (j + 0.3) * d.width
    eps = 1e-4 * d.width
    slope = (d.cdf(r + eps) - d.cdf(r - eps)) / (2 * eps)
    np.testing.assert_allclose(np.exp(fitted.log_density(X, r)), slope, rtol=1e-6)
    q = fitted.predict_quantiles(X, [0.3])[:, 0]
    np.testing.assert_allclose(d.cdf(q), 0.3, atol=1e-12)


def test_float32_inference_is_close_to_float64(data):
    X, y, pid, ch = data
    cal = EnergyRewardCalibrator(**FAST, inference_dtype="float64").fit(
        X, y, pair_id=pid, chosen=ch
    )
    want = cal.predict(X[:20], base_reward=y[:20])
    std = cal.score_uncertainty(X[:20])
    cal.set_params(inference_dtype="float32")
    # float32 accept/reject decisions differ near flat tops: small, bounded differences
    np.testing.assert_allclose(cal.predict(X[:20], base_reward=y[:20]), want, atol=1e-2)
    np.testing.assert_allclose(cal.score_uncertainty(X[:20]), std, rtol=1e-4)


def test_log_density_integrates_to_one_and_is_minus_inf_outside(fitted, data):
    X = data[0][:3]
    width = fitted.grid_[1] - fitted.grid_[0]
    lo, hi = fitted.grid_[0] - width / 2, fitted.grid_[-1] + width / 2
    k = 4 * fitted.grid_size  # midpoints of a partition four times finer than the grid
    r = lo + (np.arange(k) + 0.5) * (hi - lo) / k
    dens = np.exp(fitted.log_density(np.repeat(X, k, axis=0), np.tile(r, 3))).reshape(3, k)
    np.testing.assert_allclose(dens.sum(1) * (hi - lo) / k, 1.0, rtol=1e-9)
    assert np.all(np.isneginf(fitted.log_density(X, np.full(3, hi + 10 * (hi - lo)))))


def test_modes_stay_on_the_grid_far_from_the_training_data(fitted, data):
    X, y, _, _ = data
    far = np.vstack([X[:6] * 100.0, X[:6] + 50.0, -X[:6] * 1e3]).astype(np.float32)
    lo, hi = fitted.grid_.min(), fitted.grid_.max()
    for mode in (fitted.predict(far), fitted.predict_distribution(far).mode):
        assert np.all((mode >= lo) & (mode <= hi))
        assert np.all(np.isfinite(fitted.log_density(far, mode)))
    base = np.r_[np.full(9, 1e3), np.full(9, -1e3)]
    refined = fitted.predict(far, base_reward=base)
    assert np.all((refined >= lo) & (refined <= hi))


def test_energy_accepts_one_or_many_candidates(fitted, data):
    X = data[0][:4]
    r = np.linspace(-1, 1, 12).reshape(4, 3)
    f = fitted.predict_energy(X, r)
    assert f.shape == (4, 3)
    np.testing.assert_allclose(fitted.predict_energy(X, r[:, 1]), f[:, 1], rtol=1e-6)


def test_same_random_state_gives_bitwise_identical_fits(data):
    X, y, pid, ch = data
    a = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    b = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    for (ka, va), (kb, vb) in zip(a.module_.state_dict().items(), b.module_.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = EnergyRewardCalibrator(**{**FAST, "random_state": 1}).fit(X, y, pair_id=pid, chosen=ch)
    assert not torch.equal(a.module_.first.weight, c.module_.first.weight)


def test_validation_records_both_accuracies_and_keeps_best_epoch(data):
    X, y, pid, ch = data
    cal = EnergyRewardCalibrator(**{**FAST, "max_epochs": 4}, validation_fraction=0.25, guard="off")
    cal.fit(X, y, pair_id=pid, chosen=ch)
    keys = {"val_accuracy", "val_base_accuracy", "val_loss", "train_loss"}
    assert all(keys <= set(h) for h in cal.history_)
    # plain re-statement of the rule: higher accuracy wins; equal accuracy and a lower
    # held-out loss (by more than 1e-4 relative) wins too
    best_acc, best_loss, best_epoch = -1.0, np.inf, None
    for h in cal.history_:
        if h["val_accuracy"] > best_acc or (
            h["val_accuracy"] >= best_acc and h["val_loss"] < best_loss * (1 - 1e-4)
        ):
            best_acc, best_loss, best_epoch = (
                max(best_acc, h["val_accuracy"]),
                h["val_loss"],
                h["epoch"],
            )
    assert cal.best_epoch_ == best_epoch
    assert len({h["val_base_accuracy"] for h in cal.history_}) == 1


def test_early_stopping_and_convergence_warning(data):
    X, y, pid, ch = data
    params = {**FAST, "max_epochs": 3, "validation_fraction": 0.25, "guard": "off"}
    with pytest.warns(ConvergenceWarning, match="max_epochs=3 reached"):
        EnergyRewardCalibrator(**params, n_iter_no_change=5).fit(X, y, pair_id=pid, chosen=ch)
    cal = EnergyRewardCalibrator(
        **{**params, "max_epochs": 50, "learning_rate": 1e-9}, n_iter_no_change=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        cal.fit(X, y, pair_id=pid, chosen=ch)
    assert len(cal.history_) < 50


def _refinement_message(caught) -> str:
    return next(str(w.message) for w in caught if issubclass(w.category, RefinementWarning))


def test_guard_decides_on_held_out_pairs_that_selection_never_saw(data):
    X, y, pid, ch = data
    # A learning rate of ~0 leaves a random energy: its modes are arbitrary and the
    # refined rewards rank pairs worse than the base reward (which ranks the held-out
    # pairs well by construction here).
    params = {**FAST, "learning_rate": 1e-12, "validation_fraction": 0.4, "max_epochs": 1}
    with pytest.warns(RefinementWarning, match="refinement does not help here") as caught:
        cal = EnergyRewardCalibrator(**params, guard="base").fit(X, y, pair_id=pid, chosen=ch)
    assert "predict returns the base reward (guard='base')" in _refinement_message(caught)
    with pytest.warns(RefinementWarning, match="refinement does not help here") as caught:
        EnergyRewardCalibrator(**params, guard="warn").fit(X, y, pair_id=pid, chosen=ch)
    # guard="warn" keeps the refined rewards: the message says how not to
    assert "set guard='base' to make predict return the base reward" in _refinement_message(caught)
    s = cal.guard_scores_
    assert cal.refinement_helps_ is False
    assert s["n_pairs"] == 20  # the guard half of the 40 held-out pairs
    assert s["refined_accuracy"] <= s["base_accuracy"]
    assert s["p_value"] > 1 - cal.guard_confidence
    np.testing.assert_array_equal(cal.predict(X[:5], base_reward=y[:5]), y[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = EnergyRewardCalibrator(**params, guard="off").fit(X, y, pair_id=pid, chosen=ch)
    assert not np.allclose(off.predict(X[:5], base_reward=y[:5]), y[:5])


def test_guard_confidence_is_the_level_of_the_exact_test(data):
    X, y, pid, ch = data
    params = {**FAST, "validation_fraction": 0.4, "guard": "off"}
    lenient = EnergyRewardCalibrator(**params, guard_confidence=0.0).fit(
        X, y, pair_id=pid, chosen=ch
    )
    strict = EnergyRewardCalibrator(**params, guard_confidence=1.0).fit(
        X, y, pair_id=pid, chosen=ch
    )
    p = lenient.guard_scores_["p_value"]
    assert strict.guard_scores_["p_value"] == p  # same fit, same test
    assert lenient.refinement_helps_ is True  # p <= 1 always
    assert strict.refinement_helps_ is False  # p > 0 always


def _sign_flip_by_enumeration(diff):
    """Exact one-sided sign-flip p-value by listing every sign pattern (a loop)."""
    import itertools

    d = np.asarray(diff)[np.asarray(diff) != 0]
    observed = d.sum()
    hits = [
        np.dot(signs, np.abs(d)) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(d))
    ]
    return float(np.mean(hits)) if len(d) else 1.0


def _disputed_pairs(cal, X, y, refined_right: bool):
    """Pairs of rows with close base rewards on which the refined and the base rewards
    disagree, labelled so that the refined order (or the base order) is the right one."""
    order = np.argsort(y)
    i = np.concatenate([order[:-lag] for lag in (1, 2, 3)])
    j = np.concatenate([order[lag:] for lag in (1, 2, 3)])
    refined = cal.predict(X, base_reward=y)
    disputed = (np.sign(refined[i] - refined[j]) * np.sign(y[i] - y[j])) < 0
    i, j = i[disputed], j[disputed]
    up = (refined[i] > refined[j]) == refined_right  # i is chosen where True
    first, second = np.where(up, i, j), np.where(up, j, i)
    rows = np.column_stack([first, second]).reshape(-1)
    chosen = np.tile([True, False], len(first))
    return X[rows], y[rows], np.repeat(np.arange(len(first)), 2), chosen


def test_fit_guard_decides_on_the_pairs_it_is_given(data):
    X, y, pid, ch = data
    cal = EnergyRewardCalibrator(**FAST, guard="base")
    with pytest.warns(IneffectiveParameterWarning, match="until fit_guard is called"):
        cal.fit(X, y, pair_id=pid, chosen=ch)
    assert cal.refinement_helps_ is None
    refined = cal.predict(X, base_reward=y)
    # pairs where the base order is right: refinement gets every one of them wrong
    Xg, yg, pg, cg = _disputed_pairs(cal, X, y, refined_right=False)
    good = _disputed_pairs(cal, X, y, refined_right=True)
    n = len(pg) // 2
    assert n >= 20
    with pytest.warns(RefinementWarning, match="pairs given to fit_guard") as caught:
        assert cal.fit_guard(Xg, yg, pair_id=pg, chosen=cg) is cal
    assert "predict returns the base reward (guard='base')" in _refinement_message(caught)
    assert cal.refinement_helps_ is False
    assert cal.guard_scores_ == {
        "refined_accuracy": 0.0,
        "base_accuracy": 1.0,
        "p_value": 1.0,
        "n_pairs": n,
        "n_discordant": n,
        "n_better": 0,
        "n_worse": n,
        "min_detectable_gain": min_detectable_gain(n, n, 1 - cal.guard_confidence),
        "penalty": 0.0,
        "source": "fit_guard",
    }
    np.testing.assert_array_equal(cal.predict(X, base_reward=y), y)
    # pairs where the refined order is right: the guard passes and predict refines again
    Xg, yg, pg, cg = good
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal.fit_guard(Xg, yg, pair_id=pg, chosen=cg)
    # only the note on the guard's power (a few dozen pairs cannot see small gains)
    assert {w.category for w in caught} <= {GuardPowerWarning}
    assert cal.refinement_helps_ is True
    assert cal.guard_scores_["refined_accuracy"] == 1.0
    assert cal.guard_scores_["p_value"] == 0.5 ** (len(Xg) // 2)
    np.testing.assert_array_equal(cal.predict(X, base_reward=y), refined)


def test_fit_guard_matches_a_plain_exact_test_and_replaces_the_validation_guard(data, tmp_path):
    X, y, pid, ch = data
    cal = EnergyRewardCalibrator(**FAST, validation_fraction=0.4, guard="off")
    cal.fit(X, y, pair_id=pid, chosen=ch)
    assert cal.guard_scores_["source"] == "validation"
    # guard pairs from another draw of the same process, rows in scrambled order
    Xg, yg, pg, cg = make_pairs(n_pairs=60, seed=7)
    perm = np.random.default_rng(0).permutation(len(yg))
    cal.fit_guard(Xg[perm], yg[perm], pair_id=pg[perm], chosen=cg[perm])
    refined = cal.predict(Xg, base_reward=yg)
    rc, rr = refined[cg], refined[~cg]  # pairs in order: both rows of pair k at 2k, 2k+1
    ref_ok = (rc > rr) + 0.5 * (rc == rr)
    base_ok = (yg[cg] > yg[~cg]) + 0.5 * (yg[cg] == yg[~cg])
    p = _sign_flip_by_enumeration(ref_ok - base_ok)
    s = cal.guard_scores_
    assert s["n_pairs"] == 60 and s["source"] == "fit_guard"
    assert s["refined_accuracy"] == pytest.approx(ref_ok.mean(), abs=1e-12)
    assert s["base_accuracy"] == pytest.approx(base_ok.mean(), abs=1e-12)
    assert s["p_value"] == pytest.approx(p, rel=1e-12)
    assert s["n_better"] == int(np.sum(ref_ok > base_ok))
    assert s["n_worse"] == int(np.sum(ref_ok < base_ok))
    assert cal.refinement_helps_ is (p <= 1 - cal.guard_confidence)
    loaded = EnergyRewardCalibrator.from_pretrained(cal.save_pretrained(tmp_path / "m"))
    assert loaded.guard_scores_ == s and loaded.refinement_helps_ is cal.refinement_helps_


def test_fit_guard_rejects_bad_input(data):
    X, y, pid, ch = data
    with pytest.raises(NotFittedError):
        EnergyRewardCalibrator(**FAST).fit_guard(X, y, pair_id=pid, chosen=ch)
    cal = EnergyRewardCalibrator(**FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"fit_guard: pair_id must have shape \(200,\)"):
        cal.fit_guard(X, y, pair_id=pid[:10], chosen=ch)
    with pytest.raises(ValueError, match="fit_guard.*y"):
        cal.fit_guard(X, y[:5], pair_id=pid, chosen=ch)
    with pytest.raises(ValueError, match="X has 3 features"):
        cal.fit_guard(X[:, :3], y, pair_id=pid, chosen=ch)


def test_validation_holds_out_whole_groups(data):
    X, y, pid, ch = data
    # 10 groups of 10 pairs: 40 % held out = 4 groups, 2 select and 2 guard
    groups = np.repeat(np.arange(10), 20)
    cal = EnergyRewardCalibrator(**FAST, validation_fraction=0.4, guard="off")
    cal.fit(X, y, pair_id=pid, chosen=ch, groups=groups)
    assert cal.guard_scores_["n_pairs"] == 20
    with pytest.raises(ValueError, match="both rows of a pair must be in the same group"):
        cal.fit(X, y, pair_id=pid, chosen=ch, groups=np.arange(len(y)))
    with pytest.raises(ValueError, match="fewer than two held-out groups"):
        cal.fit(X, y, pair_id=pid, chosen=ch, groups=np.zeros(len(y)))
    with pytest.raises(ValueError, match="groups needs pair metadata"):
        EnergyRewardCalibrator(**FAST).fit(X, y, groups=groups)


def test_verbose_shows_progress(data, capsys):
    X, y, _, _ = data
    EnergyRewardCalibrator(**FAST, verbose=1).fit(X, y)
    err = capsys.readouterr().err
    assert "EBRM fit" in err and "train_loss" in err


def test_fits_from_a_float16_memmap(tmp_path, data):
    X, y, pid, ch = data
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float16, shape=X.shape)
    mm[:] = X
    mm.flush()
    X_mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    cal = EnergyRewardCalibrator(**FAST).fit(X_mm, y, pair_id=pid, chosen=ch)
    assert cal.predict(X_mm[:4], base_reward=y[:4]).shape == (4,)


def test_score_is_pairwise_accuracy_of_the_refined_rewards_with_pairs(fitted, data):
    X, y, pid, ch = data
    refined = fitted.predict(X, base_reward=y)
    idx_c, idx_r = check_pairs(pid, ch, len(y))
    d = refined[idx_c] - refined[idx_r]
    assert fitted.score(X, y, pair_id=pid, chosen=ch) == np.mean((d > 0) + 0.5 * (d == 0))
    # without pairs: scikit-learn's R² of the global mode against y
    mode = fitted.predict(X)
    r2 = 1 - np.sum((y - mode) ** 2) / np.sum((y - y.mean()) ** 2)
    assert fitted.score(X, y) == pytest.approx(r2, rel=1e-9)


def test_grid_search_selects_on_the_refined_pairwise_accuracy(data):
    X, y, pid, ch = data
    grid = {"ebrm__penalty": [0.0, 0.05]}
    with sklearn.config_context(enable_metadata_routing=True):
        cal = EnergyRewardCalibrator(**FAST)
        cal.set_fit_request(pair_id=True, chosen=True, groups=True)
        cal.set_score_request(pair_id=True, chosen=True)
        pipe = Pipeline([("scale", StandardScaler()), ("ebrm", cal)])
        cv = GroupKFold(n_splits=2)
        search = GridSearchCV(pipe, grid, cv=cv, error_score="raise")
        search.fit(X, y, groups=pid, pair_id=pid, chosen=ch)
        # the same folds by hand: fit a clone, score the refined accuracy on the held-out pairs
        best = search.best_params_["ebrm__penalty"]
        scores = []
        for train, test in cv.split(X, y, groups=pid):
            scaler = StandardScaler().fit(X[train])
            e = EnergyRewardCalibrator(**{**FAST, "penalty": best}).fit(
                scaler.transform(X[train]), y[train], pair_id=pid[train], chosen=ch[train]
            )
            scores.append(
                e.score(scaler.transform(X[test]), y[test], pair_id=pid[test], chosen=ch[test])
            )
    assert search.best_score_ == pytest.approx(np.mean(scores), abs=1e-12)
    assert 0.5 < search.best_score_ <= 1.0
    assert search.best_estimator_.named_steps["ebrm"].n_pairs_ == 100


def test_a_refit_that_fails_keeps_the_previous_model(data, monkeypatch):
    X, y, pid, ch = data
    cal = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    want = cal.predict(X[:8], base_reward=y[:8])
    before = {k: v for k, v in vars(cal).items() if k.endswith("_")}
    with pytest.raises(ValueError, match="y is constant"):
        cal.fit(X[:, :4], np.full(len(y), 2.0))  # new width, and fails late
    assert cal.n_features_in_ == 6
    np.testing.assert_array_equal(cal.predict(X[:8], base_reward=y[:8]), want)

    import skebrm.calibrator as module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run_training", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cal.fit(X * 2, y * 3, pair_id=pid, chosen=ch)
    after = {k: v for k, v in vars(cal).items() if k.endswith("_")}
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    np.testing.assert_array_equal(cal.predict(X[:8], base_reward=y[:8]), want)


def test_a_refit_drops_attributes_of_the_previous_fit(data):
    pd = pytest.importorskip("pandas")
    X, y, _, _ = data
    cal = EnergyRewardCalibrator(**FAST).fit(pd.DataFrame(X, columns=list("abcdef")), y)
    assert list(cal.feature_names_in_) == list("abcdef")
    cal.fit(X, y)
    assert not hasattr(cal, "feature_names_in_")


def test_the_preference_term_runs_with_both_objectives_and_needs_pairs(data):
    X, y, pid, ch = data
    for objective in ("nce_plus", "grid_nll"):
        params = {**FAST, "objective": objective, "preference_weight": 1.0}
        if objective == "grid_nll":
            params.pop("n_negatives")
        cal = EnergyRewardCalibrator(**params).fit(X, y, pair_id=pid, chosen=ch)
        plain = EnergyRewardCalibrator(**{**params, "preference_weight": 0.0})
        plain.fit(X, y, pair_id=pid, chosen=ch)
        assert cal.history_[0]["train_loss"] > plain.history_[0]["train_loss"]
    with pytest.raises(ValueError, match="preference_weight=1.0 needs pair metadata"):
        EnergyRewardCalibrator(**FAST, preference_weight=1.0).fit(X, y)


def test_grid_nll_defaults_to_no_dropout(data):
    X, y, _, _ = data
    params = {k: v for k, v in FAST.items() if k != "n_negatives"}
    cal = EnergyRewardCalibrator(**params, objective="grid_nll").fit(X, y)
    assert cal.dropout_ == 0.0
    assert (
        EnergyRewardCalibrator(**params, objective="grid_nll", dropout=0.2).fit(X, y).dropout_
        == 0.2
    )


# ------------------------------------------------------------------ bad input
def _fit(X, y, **kw):
    return EnergyRewardCalibrator(**FAST).fit(X, y, **kw)


def test_rejects_non_finite_input(data):
    X, y, _, _ = data
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        _fit(Xn, y)
    yi = y.copy()
    yi[0] = np.inf
    with pytest.raises(ValueError, match="Input y contains infinity"):
        _fit(X, yi)


def test_rejects_bad_shapes(data, fitted):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        _fit(X[:, 0], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        _fit(X, y[:-1])
    with pytest.raises(ValueError, match="minimum of 2 is required"):
        _fit(X[:1], y[:1])
    with pytest.raises(
        ValueError, match="X has 5 features, but EnergyRewardCalibrator is expecting 6"
    ):
        fitted.predict(X[:, :5])
    with pytest.raises(ValueError, match=re.escape("base_reward must have shape (4,)")):
        fitted.predict(X[:4], base_reward=y[:3])


def test_rejects_bad_pair_metadata(data):
    X, y, pid, ch = data
    with pytest.raises(ValueError, match="chosen was given without pair_id"):
        _fit(X, y, chosen=ch)
    with pytest.raises(ValueError, match="exactly two rows"):
        _fit(X, y, pair_id=np.arange(len(y)), chosen=ch)
    with pytest.raises(ValueError, match="one chosen and one rejected"):
        _fit(X, y, pair_id=pid, chosen=np.ones(len(y), dtype=bool))


def test_rejects_all_conflicting_pairs(data):
    X, y, pid, _ = data
    chosen = np.zeros(len(y), dtype=bool)
    lower = y[0::2] < y[1::2]
    chosen[0::2], chosen[1::2] = lower, ~lower
    with pytest.raises(ValueError, match="every training pair is conflicting"):
        _fit(X, y, pair_id=pid, chosen=chosen)


def test_rejects_constant_y(data):
    X = data[0]
    with pytest.raises(ValueError, match="y is constant"):
        _fit(X, np.full(len(X), 2.5))


def test_rejects_bad_parameters(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="The 'beta' parameter of EnergyRewardCalibrator must be"):
        EnergyRewardCalibrator(beta=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="sigmas must be a non-empty sequence of positive"):
        EnergyRewardCalibrator(**{**FAST, "sigmas": (0.0,)}).fit(X, y)
    with pytest.raises(ValueError, match="validation_fraction=0.2 needs pair metadata"):
        EnergyRewardCalibrator(**FAST, validation_fraction=0.2).fit(X, y)
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
            with pytest.raises(ValueError, match="but CUDA is not available"):
                EnergyRewardCalibrator(**FAST, device=device).fit(X, y)
    with pytest.raises(ValueError, match="The 'device' parameter of EnergyRewardCalibrator"):
        EnergyRewardCalibrator(**FAST, device="banana").fit(X, y)
    assert EnergyRewardCalibrator(**FAST, device=torch.device("cpu")).fit(X, y).device_ == "cpu"
    assert EnergyRewardCalibrator(**FAST, device="cpu").fit(X, y).device_ == "cpu"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("hidden", (16, 0)),
        ("hidden", (-4,)),
        ("hidden", (8.5,)),
        ("hidden", ()),
        ("hidden", (True, 4)),
        ("reward_hidden", (4, 0)),
        ("reward_hidden", ("a",)),
    ],
)
def test_layer_widths_must_be_positive_ints(data, name, value):
    X, y, _, _ = data
    with pytest.raises(
        ValueError, match=f"The '{name}' parameter of EnergyRewardCalibrator must be"
    ):
        EnergyRewardCalibrator(**{**FAST, name: value}).fit(X, y)


def test_empty_widths_where_they_are_allowed(data):
    X, y, _, _ = data
    EnergyRewardCalibrator(**{**FAST, "reward_hidden": ()}).fit(X, y)
    basis = {k: v for k, v in FAST.items() if k != "reward_hidden"}
    EnergyRewardCalibrator(**{**basis, "energy": "basis", "hidden": (), "n_basis": 8}).fit(X, y)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"guard": "base"}, "guard='base' has no effect without validation_fraction"),
        ({"n_iter_no_change": 3}, "n_iter_no_change=3 has no effect without validation_fraction"),
        ({"tol": 0.01}, "tol=0.01 has no effect without validation_fraction"),
        ({"guard_confidence": 0.9}, "guard_confidence=0.9 has no effect"),
        (
            {"energy": "basis", "reward_hidden": (4, 8)},
            "reward_hidden=.* has no effect with energy='basis'",
        ),
        ({"n_basis": 8}, "n_basis=8 has no effect with energy='mlp'"),
        ({"objective": "grid_nll"}, "n_negatives=16 has no effect with objective='grid_nll'"),
    ],
)
def test_parameters_without_effect_warn_at_the_users_call(data, params, message):
    X, y, _, _ = data
    est = EnergyRewardCalibrator(**{**FAST, **params})
    with pytest.warns(IneffectiveParameterWarning, match=message) as record:
        est.fit(X, y)
    assert all(w.filename == __file__ for w in record)


def test_default_parameters_do_not_warn(data):
    X, y, pid, ch = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
        basis = {k: v for k, v in FAST.items() if k != "reward_hidden"}
        EnergyRewardCalibrator(**basis, energy="basis").fit(X, y)


def test_warnings_point_at_the_users_call_through_a_pipeline(data):
    X, y, pid, ch = data
    params = {**FAST, "learning_rate": 1e-12, "validation_fraction": 0.4, "max_epochs": 2}
    with sklearn.config_context(enable_metadata_routing=True):
        cal = EnergyRewardCalibrator(**params, n_iter_no_change=5)
        pipe = Pipeline(
            [("scale", StandardScaler()), ("ebrm", cal.set_fit_request(pair_id=True, chosen=True))]
        )
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            pipe.fit(X, y, pair_id=pid, chosen=ch)
    kinds = {w.category for w in record}
    assert {RefinementWarning, ConvergenceWarning} <= kinds
    assert all(w.filename == __file__ for w in record if w.category in kinds)


def test_predict_before_fit_raises_not_fitted(data):
    with pytest.raises(NotFittedError, match="This EnergyRewardCalibrator instance is not fitted"):
        EnergyRewardCalibrator().predict(data[0])
    with pytest.raises(NotFittedError):
        EnergyRewardCalibrator().score_uncertainty(data[0])


def test_inference_inside_torch_inference_mode(data):
    X, y, pid, ch = data
    cal = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    with torch.inference_mode():  # as a trainer's reward loop calls it: weights built here
        refined, std = cal.predict(X[:6], base_reward=y[:6], return_std=True)
    again, std2 = cal.predict(X[:6], base_reward=y[:6], return_std=True)
    np.testing.assert_array_equal(refined, again)
    np.testing.assert_array_equal(std, std2)


# ------------------------------------------------------------------ defects, each pinned
def test_a_diverging_fit_raises_and_keeps_the_previous_model(data):
    X, y, pid, ch = data
    cal = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    want = cal.predict(X[:8], base_reward=y[:8])
    cal.set_params(learning_rate=1e10)
    with pytest.raises(FloatingPointError, match=r"diverged.*Lower learning_rate"):
        cal.fit(X, y, pair_id=pid, chosen=ch)
    np.testing.assert_array_equal(cal.predict(X[:8], base_reward=y[:8]), want)
    import json

    json.dumps(cal.history_, allow_nan=False)  # the kept history is plain JSON


def test_rows_the_ascent_never_moves_return_the_base_reward_bit_for_bit(fitted, data):
    X, y, _, _ = data
    frozen = clone(fitted).set_params(ascent_steps=0)
    frozen.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
    inside = (y >= fitted.trusted_range_[0]) & (y <= fitted.trusted_range_[1])
    got = frozen.predict(X[inside], base_reward=y[inside])
    assert got.tobytes() == y[inside].tobytes()
    # rows that move are unchanged by the rule: they are the float32 ascent's result
    refined = fitted.predict(X, base_reward=y)
    moved = refined != y
    assert moved.any() and (refined[~moved] == y[~moved]).all()


def _one_discordant_pair(cal, X, y):
    """Many agreeing pairs, one that the refined order gets right and the base wrong."""
    refined = cal.predict(X, base_reward=y)
    order = np.argsort(y)
    i, j = order[:-1], order[1:]  # y[i] < y[j]
    flipped = np.flatnonzero(refined[i] > refined[j])
    agree = np.flatnonzero(refined[i] < refined[j])[:40]
    assert flipped.size and agree.size == 40
    k = flipped[0]
    first = np.r_[i[k], j[agree]]  # chosen: refined's winner in the flipped pair
    second = np.r_[j[k], i[agree]]
    rows = np.column_stack([first, second]).reshape(-1)
    n = len(first)
    return X[rows], y[rows], np.repeat(np.arange(n), 2), np.tile([True, False], n)


def test_one_discordant_pair_in_favour_does_not_pass_the_guard(fitted, data):
    X, y, _, _ = data
    cal = clone(fitted)
    cal.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
    Xg, yg, pg, cg = _one_discordant_pair(cal, X, y)
    with pytest.warns(RefinementWarning, match="refinement does not help here"):
        cal.fit_guard(Xg, yg, pair_id=pg, chosen=cg)
    s = cal.guard_scores_
    assert (s["n_better"], s["n_worse"], s["p_value"]) == (1, 0, 0.5)
    assert cal.refinement_helps_ is False  # the bootstrap gave ~0.81 here and passed


def test_fit_guard_guards_the_served_reward_with_its_penalty(fitted, data):
    X, y, pid, ch = data
    cal = clone(fitted).set_params(guard="off")
    cal.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
    lam = 5.0
    cal.fit_guard(X, y, pair_id=pid, chosen=ch, penalty=lam)
    served = cal.predict(X, base_reward=y) - lam * cal.score_uncertainty(X)
    idx_c, idx_r = check_pairs(pid, ch, len(y))
    d = served[idx_c] - served[idx_r]
    s = cal.guard_scores_
    assert s["penalty"] == lam
    assert s["refined_accuracy"] == pytest.approx(np.mean((d > 0) + 0.5 * (d == 0)))
    with pytest.raises(ValueError, match="penalty must be a finite float >= 0"):
        cal.fit_guard(X, y, pair_id=pid, chosen=ch, penalty=-1.0)


def test_pickles_record_versions_warn_on_a_mismatch_and_fall_back_to_cpu(fitted, monkeypatch):
    import pickle

    from sklearn.exceptions import InconsistentVersionWarning

    from skebrm.exceptions import VersionMismatchWarning

    state = fitted.__getstate__()
    assert state["_sklearn_version"] == sklearn.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickle.loads(pickle.dumps(fitted))  # same versions: silent
    old = dict(state, _sklearn_version="0.0.1")
    with pytest.warns(InconsistentVersionWarning):
        EnergyRewardCalibrator.__new__(EnergyRewardCalibrator).__setstate__(old)
    import skebrm

    monkeypatch.setattr(skebrm, "__version__", "0.0.0")
    with pytest.warns(VersionMismatchWarning, match="saved with skebrm"):
        EnergyRewardCalibrator.__new__(EnergyRewardCalibrator).__setstate__(state)
    monkeypatch.undo()
    # a model pickled with device="cuda" predicts on a machine without CUDA
    cuda_state = dict(state, params={**state["params"], "device": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="device='cuda', which is not available"):
        loaded = EnergyRewardCalibrator.__new__(EnergyRewardCalibrator)
        loaded.__setstate__(cuda_state)
    assert loaded.device == "cpu"
    X = np.zeros((3, fitted.n_features_in_), dtype=np.float32)
    np.testing.assert_array_equal(
        loaded.predict(X, base_reward=np.zeros(3)), fitted.predict(X, base_reward=np.zeros(3))
    )


def test_predict_and_score_fallbacks_warn_once(fitted, data, monkeypatch):
    import skebrm.calibrator as module
    from skebrm.exceptions import FallbackWarning

    X, y, pid, ch = data
    monkeypatch.setattr(module, "_WARNED", set())
    with pytest.warns(FallbackWarning, match="pass base_reward=|Pass base_reward="):
        fitted.predict(X[:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        fitted.predict(X[:4])  # once
        fitted.predict(X[:4], base_reward=y[:4])
        fitted.score(X, y, pair_id=pid, chosen=ch)
    with pytest.warns(FallbackWarning, match="R² of the global mode.*Pass pair_id= and chosen="):
        r2 = fitted.score(X, y)
    mode = fitted.predict_distribution(X).mode
    assert r2 == pytest.approx(1 - np.sum((y - mode) ** 2) / np.sum((y - y.mean()) ** 2))


def test_the_readme_grid_search_runs_as_written(data):
    X, y, pair_id, chosen = data
    groups = pair_id // 2  # e.g. the prompt of each pair: two pairs per prompt
    # -- the snippet (README "Inside scikit-learn") --
    from sklearn.model_selection import GridSearchCV, GroupKFold

    with sklearn.config_context(enable_metadata_routing=True):
        est = EnergyRewardCalibrator(**FAST)
        search = GridSearchCV(est, {"penalty": [0.0, 0.05]}, cv=GroupKFold(3))
        search.fit(X, y, groups=groups, pair_id=pair_id, chosen=chosen)
    # -- end of the snippet --
    assert search.best_params_["penalty"] in (0.0, 0.05)
    assert 0.0 <= search.best_score_ <= 1.0  # the pairwise accuracy, routed by default


def test_inference_is_thread_safe_across_settings(fitted, data, monkeypatch):
    import threading
    import time

    import skebrm._posterior as post_module

    X, y, _, _ = data
    post = fitted.posterior_
    post._copies = {}
    settings = [fitted._settings(), fitted.set_params(inference_dtype="float64")._settings()]
    fitted.set_params(inference_dtype="float32")
    want = [post.refine(X, y, s) for s in settings]
    real_copy = post_module.inference_copy

    def slow_copy(*args, **kwargs):  # widen the window in which two threads race
        time.sleep(0.01)
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(post_module, "inference_copy", slow_copy)
    errors, results = [], {}

    def work(k):
        try:
            for _ in range(5):
                results.setdefault(k, []).append(post.refine(X[:40], y[:40], settings[k % 2]))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k, outs in results.items():
        for out in outs:
            np.testing.assert_array_equal(out, want[k % 2][:40])


def test_fits_pin_blas_to_one_thread(data, monkeypatch):
    from threadpoolctl import threadpool_info

    import skebrm._training as training
    from skebrm import BradleyTerryHead

    X, y, pid, ch = data
    seen = []
    real = training.train_energy_model

    def spy(*args, **kwargs):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_energy_model", spy)
    EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
    assert seen and seen[0] <= {1}
    from sklearn.linear_model import LogisticRegression

    real_fit = LogisticRegression.fit
    seen.clear()

    def spy_fit(self, *args, **kwargs):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy_fit)
    BradleyTerryHead().fit(X, pair_id=pid, chosen=ch)
    assert seen and seen[0] <= {1}
    # and a fit at one and at two torch threads gives the same model
    fits = []
    for n in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            cal = EnergyRewardCalibrator(**FAST).fit(X, y, pair_id=pid, chosen=ch)
        finally:
            torch.set_num_threads(before)
        fits.append(cal.predict(X, base_reward=y))
    np.testing.assert_array_equal(fits[0], fits[1])


def test_pessimistic_reward_is_the_entropic_risk_of_the_distribution(fitted, data):
    X = data[0][:6]
    beta = 0.5
    got = fitted.pessimistic_reward(X, beta)
    np.testing.assert_array_equal(got, fitted.predict_distribution(X).entropic_risk(beta))
    assert np.all(got <= fitted.predict_mean(X) + 1e-9)  # risk-averse: at most the mean


def test_from_pretrained_compares_the_saved_skebrm_version(fitted, tmp_path, monkeypatch):
    import skebrm
    from skebrm.exceptions import VersionMismatchWarning

    path = fitted.save_pretrained(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VersionMismatchWarning)
        EnergyRewardCalibrator.from_pretrained(path)  # same version: silent
    monkeypatch.setattr(skebrm, "__version__", "0.0.0")
    with pytest.warns(
        VersionMismatchWarning, match=r"saved with skebrm .*, this is skebrm 0\.0\.0"
    ):
        EnergyRewardCalibrator.from_pretrained(path)
