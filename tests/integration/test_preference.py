"""The preference term learns from labels that carry information the base RM misses.

Synthetic pairs: the true reward is ``e₀ + 2·sin(2·e₁)``, so a linear Bradley–Terry head
(the base RM, fitted on 1,000 head pairs) can only learn its ``e₀`` part; labels are
Bradley–Terry draws from the true reward (scale 4), except on pairs with a row in the
region ``e₂ > 0.5``, whose labels are coin flips. The calibrator sees 1,500 other pairs
with the base RM's rewards. Without the preference term it can only re-fit the base RM's
reward; with ``preference_weight=20`` the labels move the rewards (towards the ``sin``
part) and widen the distributions where the labels disagree with the RM.

Measured when written (seed 0; base accuracy 0.609, base-margin misorder AUROC 0.583):
refined (hybrid) accuracy 0.640, distribution-mean accuracy 0.648, misorder AUROC of
``−|P(chosen ≻ rejected) − ½|`` 0.665; without the term 0.616 / 0.609 / 0.584. The test
asserts +0.01, +0.02 and +0.04 over the base.
"""

import numpy as np
import pytest

from skebrm import BradleyTerryHead, EnergyRewardCalibrator, metrics


def _pairs(n_pairs, rng):
    X = rng.normal(size=(2 * n_pairs, 6)).astype(np.float32)
    t = X[:, 0] + 2.0 * np.sin(2 * X[:, 1])
    p = 1 / (1 + np.exp(-4 * (t[0::2] - t[1::2])))
    coin = (X[0::2, 2] > 0.5) | (X[1::2, 2] > 0.5)
    first = rng.random(n_pairs) < np.where(coin, 0.5, p)
    chosen = np.empty(2 * n_pairs, dtype=bool)
    chosen[0::2], chosen[1::2] = first, ~first
    return X, np.repeat(np.arange(n_pairs), 2), chosen


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(0)
    (Xh, ph, ch), (Xc, pc, cc), (Xt, _, ct) = (_pairs(n, rng) for n in (1000, 1500, 1000))
    head = BradleyTerryHead().fit(Xh, pair_id=ph, chosen=ch)
    cal = EnergyRewardCalibrator(
        objective="grid_nll",
        preference_weight=20.0,
        energy="basis",
        hidden=(64,),
        grid_size=128,
        learning_rate=3e-3,
        max_epochs=40,
        random_state=0,
    ).fit(Xc, head.predict(Xc), pair_id=pc, chosen=cc)
    return cal, head.predict(Xt), Xt, ct


def test_the_preference_term_beats_the_base_rm_on_held_out_pairs(study):
    cal, base, Xt, ct = study
    refined = cal.predict(Xt, base_reward=base)
    mean = cal.predict_distribution(Xt).mean()
    acc = {
        k: metrics.pairwise_accuracy(v[ct], v[~ct])
        for k, v in {"base": base, "refined": refined, "mean": mean}.items()
    }
    assert acc["refined"] >= acc["base"] + 0.01, acc
    assert acc["mean"] >= acc["base"] + 0.02, acc


def test_its_pair_uncertainty_beats_the_margin(study):
    cal, base, Xt, ct = study
    d = cal.predict_distribution(Xt)
    p = d[ct].preference_probability(d[~ct])
    bc, br = base[ct], base[~ct]
    ebrm = metrics.misorder_auroc(-np.abs(p - 0.5), bc, br)
    margin = metrics.misorder_auroc(metrics.margin_uncertainty(bc, br), bc, br)
    assert ebrm >= margin + 0.04, (ebrm, margin)
