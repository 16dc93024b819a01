"""
Pair selection with a guarantee
===============================

Which of a reward model's orderings can be trusted? ``PairSelector`` learns, on labelled
calibration pairs, a threshold on a confidence score (here the reward margin) such that
among the pairs it accepts at most a share ``alpha`` are misordered, with a finite-sample
guarantee. The coverage (the share of pairs accepted) is what the guarantee costs.
"""

import matplotlib.pyplot as plt
import numpy as np

from skebrm import PairSelector

rng = np.random.default_rng(0)
n = 6000
margin = rng.exponential(size=n)  # |r_a − r_b| of each pair
correct = rng.random(n) > 0.5 * np.exp(-2 * margin)  # the RM is surer at large margins
calib, test = slice(0, 3000), slice(3000, None)
print(f"accuracy of all test pairs: {correct[test].mean():.3f}")

# %%
alphas = [0.02, 0.05, 0.1, 0.15, 0.2]
risks, coverages = [], []
for alpha in alphas:
    sel = PairSelector(alpha=alpha).fit(margin[calib], correct[calib])
    risk, coverage = sel.risk_coverage(margin[test], correct[test])
    risks.append(risk)
    coverages.append(coverage)
    print(f"alpha {alpha:.2f}: error among accepted {risk:.3f}, coverage {coverage:.3f}")

# %%
fig, ax = plt.subplots(figsize=(5, 3.8))
ax.plot(alphas, risks, marker="o", label="error among accepted pairs")
ax.plot(alphas, coverages, marker="s", label="share of pairs accepted")
ax.plot(alphas, alphas, ls="--", color="grey", label="alpha")
ax.set(xlabel="alpha (allowed error rate)", ylim=(0, 1))
ax.legend(fontsize=8)
fig.tight_layout()
