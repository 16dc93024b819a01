"""EnergyRewardCalibrator: fitting, filtering, selection, inference API, errors, persistence."""

import pickle
import re
import warnings

import joblib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skebrm import EnergyRewardCalibrator, RefinementWarning
from skebrm._pairs import check_pairs, conflicting_pairs

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
    p = fitted.preference_probability(X[:7], X[7:14])
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p + fitted.preference_probability(X[7:14], X[:7]), 1.0, atol=1e-9)


def test_predict_distribution_matches_the_single_methods(fitted, data):
    X = data[0][:9]
    d = fitted.predict_distribution(X, quantiles=[0.1, 0.9])
    np.testing.assert_allclose(d["mode"], fitted.predict(X), rtol=1e-12)
    np.testing.assert_allclose(d["mean"], fitted.predict_mean(X), rtol=1e-12)
    np.testing.assert_allclose(d["std"], fitted.score_uncertainty(X), rtol=1e-12)
    np.testing.assert_allclose(d["quantiles"], fitted.predict_quantiles(X, [0.1, 0.9]), rtol=1e-12)
    grid, logd = fitted.predict_log_density_grid(X)
    np.testing.assert_allclose(d["grid"], grid)
    np.testing.assert_allclose(d["log_density"], logd, rtol=1e-12)
    with pytest.raises(ValueError, match="quantiles must be levels in"):
        fitted.predict_distribution(X, quantiles=[1.5])


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
    lo, hi = fitted.grid_[0], fitted.grid_[-1]
    r = np.linspace(lo, hi, 801)
    dens = np.exp(np.stack([fitted.log_density(X, np.full(3, v)) for v in r], axis=1))
    np.testing.assert_allclose(np.trapezoid(dens, r, axis=1), 1.0, atol=0.02)
    assert np.all(np.isneginf(fitted.log_density(X, np.full(3, hi + 10 * (hi - lo)))))


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


def test_guard_warns_and_falls_back_to_the_base_reward(data):
    X, y, pid, ch = data
    # A learning rate of ~0 leaves a random energy: its modes are arbitrary and the
    # refined rewards rank pairs worse than the base reward (which ranks the validation
    # pairs well by construction here).
    params = {**FAST, "learning_rate": 1e-12, "validation_fraction": 0.3, "max_epochs": 1}
    with pytest.warns(RefinementWarning, match="below the base reward model"):
        cal = EnergyRewardCalibrator(**params, guard="base").fit(X, y, pair_id=pid, chosen=ch)
    assert cal.refinement_helps_ is False
    np.testing.assert_array_equal(cal.predict(X[:5], base_reward=y[:5]), y[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = EnergyRewardCalibrator(**params, guard="off").fit(X, y, pair_id=pid, chosen=ch)
    assert not np.allclose(off.predict(X[:5], base_reward=y[:5]), y[:5])


def test_verbose_shows_progress(data, capsys):
    X, y, _, _ = data
    EnergyRewardCalibrator(**FAST, verbose=1).fit(X, y)
    err = capsys.readouterr().err
    assert "EBRM fit" in err and "train_loss" in err


def test_pickle_and_joblib_round_trip(fitted, data, tmp_path):
    X, y, _, _ = data
    want = fitted.predict(X[:10], base_reward=y[:10])
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X[:10], base_reward=y[:10]), want)
    joblib.dump(fitted, tmp_path / "cal.joblib")
    loaded = joblib.load(tmp_path / "cal.joblib")
    assert next(loaded.module_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(
        loaded.score_uncertainty(X[:10]), fitted.score_uncertainty(X[:10])
    )


def test_fits_from_a_float16_memmap(tmp_path, data):
    X, y, pid, ch = data
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float16, shape=X.shape)
    mm[:] = X
    mm.flush()
    X_mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    cal = EnergyRewardCalibrator(**FAST).fit(X_mm, y, pair_id=pid, chosen=ch)
    assert cal.predict(X_mm[:4], base_reward=y[:4]).shape == (4,)


def test_works_in_pipeline_and_grid_search_with_group_kfold(data):
    X, y, pid, ch = data
    with sklearn.config_context(enable_metadata_routing=True):
        cal = EnergyRewardCalibrator(**FAST).set_fit_request(pair_id=True, chosen=True)
        pipe = Pipeline([("scale", StandardScaler()), ("ebrm", cal)])
        search = GridSearchCV(pipe, {"ebrm__penalty": [0.0, 0.05]}, cv=GroupKFold(n_splits=2))
        search.fit(X, y, groups=pid, pair_id=pid, chosen=ch)
    assert set(search.cv_results_["param_ebrm__penalty"]) == {0.0, 0.05}
    assert search.best_estimator_.named_steps["ebrm"].n_pairs_ == 100


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
        with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
            EnergyRewardCalibrator(**FAST, device="cuda").fit(X, y)


def test_predict_before_fit_raises_not_fitted(data):
    with pytest.raises(NotFittedError, match="This EnergyRewardCalibrator instance is not fitted"):
        EnergyRewardCalibrator().predict(data[0])
    with pytest.raises(NotFittedError):
        EnergyRewardCalibrator().score_uncertainty(data[0])
