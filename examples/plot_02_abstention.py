"""
Uncertainty and abstention
==========================

If a pair's uncertainty is high, a user may prefer to abstain rather than trust the
reward model's ranking. This example compares two uncertainties for that purpose: EBRM's
(from the two rows' distributions) and the reward model's own margin ``|r_c − r_r|``,
which is free. On the real reward models measured, the margin was as good as EBRM's.
"""

import matplotlib.pyplot as plt
import numpy as np

from skebrm import EnergyRewardCalibrator
from skebrm.metrics import abstention_accuracy, margin_uncertainty, misorder_auroc

rng = np.random.default_rng(0)
n_pairs, d = 1000, 16
X = rng.normal(size=(2 * n_pairs, d)).astype(np.float32)
quality = X[:, 0]  # what the labellers prefer
noise = np.where(X[:, 2] > 0, 1.5, 0.2)
y = quality + noise * rng.normal(size=2 * n_pairs)  # the RM: noisy where e_2 > 0
pair_id = np.arange(2 * n_pairs) // 2
chosen = quality > quality.reshape(-1, 2)[:, ::-1].ravel()
train = pair_id < 600

ebrm = EnergyRewardCalibrator(
    objective="grid_nll",
    energy="basis",
    grid_size=128,
    max_epochs=8,
    learning_rate=3e-3,
    random_state=0,
)
ebrm.fit(X[train], y[train], pair_id=pair_id[train], chosen=chosen[train])

# %%
# On the test pairs: the chosen and the rejected row of every pair, in pair order.
c_idx = np.flatnonzero(~train & chosen)
r_idx = np.flatnonzero(~train & ~chosen)
rc, rr = y[c_idx], y[r_idx]
p = ebrm.predict_distribution(X[c_idx]).preference_probability(
    ebrm.predict_distribution(X[r_idx])
)  # P(chosen ≻ rejected) under EBRM
correct = (rc > rr).astype(float)
uncertainties = {"EBRM: −|P(c ≻ r) − ½|": -np.abs(p - 0.5), "margin": margin_uncertainty(rc, rr)}
for name, u in uncertainties.items():
    print(f"{name}: misorder AUROC {misorder_auroc(u, rc, rr):.3f}")

# %%
# Accuracy on the pairs kept, against the share abstained.
fractions = np.linspace(0, 0.6, 13)
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for name, u in uncertainties.items():
    acc = abstention_accuracy(u, correct, fractions=fractions)
    ax.plot(100 * fractions, [acc[f] for f in fractions], marker="o", ms=3, label=name)
ax.set(xlabel="pairs abstained (%)", ylabel="accuracy on kept pairs")
ax.legend()
fig.tight_layout()
