"""Model selection in the training loop."""

import warnings

import numpy as np
import pytest
import torch

from skebrm._training import train_energy_model
from skebrm.energy import EnergyNet


def _train(scores, **kw):
    torch.manual_seed(0)
    net = EnergyNet(3, reward_hidden=(4,), hidden=(8,))
    calls = iter(scores)
    rng = np.random.default_rng(0)
    return train_energy_model(
        net,
        rng.normal(size=(32, 3)).astype(np.float32),
        rng.normal(size=32),
        sigmas=torch.tensor([1.0]),
        beta=0.1,
        n_negatives=4,
        penalty=0.0,
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


def test_budget_running_out_warns():
    from sklearn.exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match="max_epochs=2 reached"):
        _train([(0.6, 0.6, 2.0), (0.7, 0.6, 2.0)], n_iter_no_change=2)
