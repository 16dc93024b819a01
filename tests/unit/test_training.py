"""Model selection in the training loop."""

import warnings

import numpy as np
import torch
from scipy import stats

from skebrm._objectives import NCEPlus
from skebrm._training import TrainingData, train_energy_model
from skebrm.energy import EnergyNet


def _train(scores, **kw):
    torch.manual_seed(0)
    net = EnergyNet(3, reward_hidden=(4,), hidden=(8,))
    calls = iter(scores)
    rng = np.random.default_rng(0)
    data = TrainingData(
        rng.normal(size=(32, 3)).astype(np.float32), rng.normal(size=32), np.arange(32)
    )
    return train_energy_model(
        net,
        data,
        NCEPlus(torch.tensor([1.0]), 0.1, 4, 0.0),
        learning_rate=1e-3,
        weight_decay=0.0,
        batch_size=16,
        max_epochs=len(scores),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        validate=lambda _: next(calls),
        **kw,
    )


def test_flat_accuracy_keeps_the_epoch_with_the_lowest_heldout_loss():
    res = _train([(0.6, 0.6, 3.0), (0.6, 0.6, 2.5), (0.6, 0.6, 2.0), (0.6, 0.6, 2.2)])
    assert res.best_epoch == 3


def test_higher_accuracy_beats_lower_loss():
    res = _train([(0.6, 0.6, 3.0), (0.7, 0.6, 4.0), (0.65, 0.6, 1.0)])
    assert res.best_epoch == 2


def test_patience_counts_epochs_without_either_improvement():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _train(
            [(0.6, 0.6, 2.0), (0.6, 0.6, 2.0), (0.5, 0.6, 1.0), (0.6, 0.6, 2.5), (0.9, 0.6, 1.0)],
            n_iter_no_change=3,
        )
    assert res.stopped_early and res.best_epoch == 1 and len(res.history) == 4


def test_budget_running_out_is_reported_for_the_estimator_to_warn():
    res = _train([(0.6, 0.6, 2.0), (0.7, 0.6, 2.0)], n_iter_no_change=2)
    assert len(res.warnings) == 1 and "max_epochs=2 reached" in res.warnings[0]
    assert not _train([(0.6, 0.6, 2.0), (0.7, 0.6, 2.0)]).warnings


def test_pair_batches_keep_pairs_whole_and_mark_the_likelihood_rows():
    pairs = np.array([[0, 1], [2, 3], [5, 4], [6, 7], [8, 9]])
    data = TrainingData(np.zeros((10, 2)), np.zeros(10), np.array([0, 1, 4, 5]), pairs)
    seen = []
    for idx, mask in data.batches(4, torch.Generator().manual_seed(0)):
        assert len(idx) % 2 == 0
        got = idx.reshape(-1, 2)
        assert all(any((row == p).all() for p in pairs) for row in got)
        np.testing.assert_array_equal(mask, np.isin(idx, [0, 1, 4, 5]))
        seen.extend(map(tuple, got))
    assert sorted(seen) == sorted(map(tuple, pairs))


def test_a_fit_whose_loss_still_falls_warns_and_a_flat_one_does_not():
    def fit(lr, epochs, seed):
        torch.manual_seed(seed)
        net = EnergyNet(3, reward_hidden=(4,), hidden=(16,), dropout=0.0)
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(512, 3)).astype(np.float32)
        data = TrainingData(X, 2 * X[:, 0] + 0.3 * rng.normal(size=512), np.arange(512))
        return train_energy_model(
            net,
            data,
            NCEPlus(torch.tensor([3.5]), 0.1, 64, 0.0),
            learning_rate=lr,
            weight_decay=0.0,
            batch_size=64,
            max_epochs=epochs,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(seed),
        )

    for seed in range(3):
        falling = fit(1e-2, 5, seed)
        losses = [h["train_loss"] for h in falling.history]
        # a plain check of the trend test: least-squares slope and its one-sided p-value
        t = np.arange(5.0)
        slope = np.polyfit(t, losses, 1)[0]
        resid = losses - np.polyval(np.polyfit(t, losses, 1), t)
        se = np.sqrt(resid @ resid / 3 / ((t - t.mean()) @ (t - t.mean())))
        assert slope < 0 and stats.t.sf(-slope / se, 3) < 0.05
        assert any("training loss was still falling" in m for m in falling.warnings)
        # a learning rate of ~0: the loss only fluctuates with the fresh noise draws
        assert fit(1e-12, 5, seed).warnings == []
        two = fit(1e-2, 2, seed)
        drop = two.history[0]["train_loss"] - two.history[1]["train_loss"]
        assert (drop > 0.01 * two.history[1]["train_loss"]) == bool(two.warnings)
    assert fit(1e-2, 1, 0).warnings == []  # one epoch: nothing to compare
