"""
Fit on cached embeddings and read the distribution
==================================================

EBRM turns a reward model's scalar reward into a distribution ``p(r | e)``. Here the
"reward model" is synthetic: its reward is a linear function of the embedding plus noise
whose size depends on the region of embedding space, so we know which responses it should
be unsure about.
"""

import matplotlib.pyplot as plt
import numpy as np

from skebrm import EnergyRewardCalibrator

rng = np.random.default_rng(0)
n, d = 800, 16
X = rng.normal(size=(n, d)).astype(np.float32)  # stand-in for cached RM embeddings
noise = np.where(X[:, 2] > 0, 1.0, 0.1)  # the RM is noisy where e_2 > 0
y = np.sin(X[:, 0]) + 0.5 * X[:, 1] + noise * rng.normal(size=n)  # the RM's rewards

ebrm = EnergyRewardCalibrator(
    objective="grid_nll",
    energy="basis",
    grid_size=128,
    max_epochs=8,
    learning_rate=3e-3,
    random_state=0,
)
ebrm.fit(X, y)

# %%
# The distribution of a few new responses: mean, standard deviation and a 90 % interval,
# all computed exactly from one grid pass.
X_new = rng.normal(size=(6, d)).astype(np.float32)
X_new[:3, 2], X_new[3:, 2] = -1.0, 1.0  # three quiet, three noisy responses
dist = ebrm.predict_distribution(X_new)
for i, (m, s, (lo, hi)) in enumerate(zip(dist.mean(), dist.std(), dist.interval(0.1))):
    print(f"response {i}: mean {m:+.2f}, std {s:.2f}, 90 % interval [{lo:+.2f}, {hi:+.2f}]")

# %%
# The densities themselves: narrow where the reward model is quiet, wide where it is noisy.
fig, ax = plt.subplots(figsize=(6, 3.5))
density = np.exp(dist.log_density_grid())
for i in range(6):
    ax.plot(dist.centres, density[i], ls="-" if i < 3 else "--", label=f"response {i}")
ax.set(xlabel="reward r", ylabel="p(r | e)", xlim=(-4, 4))
ax.legend(fontsize=7)
fig.tight_layout()

# %%
# Over many rows, the predicted standard deviation separates the two noise levels.
std = ebrm.predict_distribution(X).std()
print("mean std, quiet rows:", std[noise == 0.1].mean().round(3))
print("mean std, noisy rows:", std[noise == 1.0].mean().round(3))
