"""
Length debiasing
================

Reward models often prefer longer responses whatever their quality. ``LengthDebiaser``
fits the reward's dependence on length by locally weighted regression and subtracts it,
so that what remains is what the reward says beyond length. Here the reward model adds
0.004 per character to a quality signal.
"""

import matplotlib.pyplot as plt
import numpy as np

from skebrm import LengthDebiaser
from skebrm.metrics import pairwise_accuracy

rng = np.random.default_rng(0)
n = 2000
length = rng.integers(10, 1500, size=n).astype(float)  # characters of each response
quality = rng.normal(size=n)
reward = quality + 0.004 * length + 0.3 * rng.normal(size=n)  # the RM likes length

debiaser = LengthDebiaser().fit(length[:1000], reward[:1000])  # fit on one half
debiased = debiaser.transform(length[1000:], reward[1000:])  # apply to the other
print("corr(length, reward)  :", np.corrcoef(length[1000:], reward[1000:])[0, 1].round(3))
print("corr(length, debiased):", np.corrcoef(length[1000:], debiased)[0, 1].round(3))

# %%
# Pairs of responses where the better one is the shorter: the length bias misorders many
# of them, the debiased reward fewer.
a, b = np.arange(1000, 2000, 2), np.arange(1001, 2000, 2)
better_first = quality[a] > quality[b]
c = np.where(better_first, a, b)  # the chosen (better) response of each pair
r = np.where(better_first, b, a)
shorter_better = length[c] < length[r]
for name, score in {"reward": reward, "debiased": np.r_[np.zeros(1000), debiased]}.items():
    acc = pairwise_accuracy(score[c[shorter_better]], score[r[shorter_better]])
    print(f"{name}: accuracy on pairs whose better response is shorter {acc:.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.scatter(length[1000:], reward[1000:], s=3, alpha=0.4, label="reward")
ax.scatter(length[1000:], debiased, s=3, alpha=0.4, label="debiased")
ax.set(xlabel="response length (characters)", ylabel="reward")
ax.legend(markerscale=4)
fig.tight_layout()
