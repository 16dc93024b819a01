"""
Reliability of P(chosen ≻ rejected)
===================================

EBRM gives each pair a preference probability ``P(r_chosen > r_rejected)``, exact on the
grid. Is it calibrated? A reliability diagram bins the predicted probabilities and plots
the observed frequency in each bin; the diagonal is perfect calibration. The reference is
the Bradley–Terry sigmoid of the reward model's margin.
"""

import matplotlib.pyplot as plt
import numpy as np

from skebrm import EnergyRewardCalibrator
from skebrm.metrics import (
    expected_calibration_error,
    preference_calibration_data,
    reliability_curve,
)

rng = np.random.default_rng(1)
n_pairs, d = 1000, 16
X = rng.normal(size=(2 * n_pairs, d)).astype(np.float32)
y = X[:, 0] + 0.5 * rng.normal(size=2 * n_pairs)  # the RM's rewards
quality = X[:, 0] + 0.7 * X[:, 1]
chosen = quality > quality.reshape(-1, 2)[:, ::-1].ravel()
pair_id = np.arange(2 * n_pairs) // 2
train = pair_id < 600

ebrm = EnergyRewardCalibrator(
    objective="grid_nll", energy="basis", preference_weight=5.0, grid_size=128, max_epochs=6,
    learning_rate=3e-3, random_state=0,
)  # fmt: skip
ebrm.fit(X[train], y[train], pair_id=pair_id[train], chosen=chosen[train])

c_idx, r_idx = np.flatnonzero(~train & chosen), np.flatnonzero(~train & ~chosen)
p_ebrm = ebrm.preference_probability(X[c_idx], X[r_idx])
p_margin = 1 / (1 + np.exp(-(y[c_idx] - y[r_idx])))  # sigmoid of the RM's margin

# %%
fig, ax = plt.subplots(figsize=(4.8, 4.5))
ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
for name, p in {"EBRM": p_ebrm, "sigmoid of the margin": p_margin}.items():
    prob, outcome = preference_calibration_data(p)  # each pair in both orders
    curve = reliability_curve(prob, outcome, n_bins=10)
    ece = expected_calibration_error(prob, outcome)
    filled = curve.count > 0
    ax.plot(curve.mean_predicted[filled], curve.fraction_positive[filled], marker="o",
            label=f"{name} (ECE {ece:.3f})")  # fmt: skip
ax.set(xlabel="predicted P(chosen ≻ rejected)", ylabel="observed frequency", xlim=(0, 1),
       ylim=(0, 1))  # fmt: skip
ax.legend(fontsize=8)
fig.tight_layout()
