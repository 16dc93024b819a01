"""
Out-of-distribution flags
=========================

A reward model, and a calibrator fitted on its embeddings, are least reliable on inputs
unlike the training data. ``MahalanobisScorer`` fits the training embeddings' mean and
(shrunk) covariance and scores how far a new embedding lies from them.
"""

import matplotlib.pyplot as plt
import numpy as np

from skebrm import MahalanobisScorer
from skebrm.ood import ood_auroc

rng = np.random.default_rng(0)
d = 32
train = rng.normal(size=(2000, d))  # stand-in for the training embeddings
scorer = MahalanobisScorer().fit(train)

in_dist = rng.normal(size=(500, d))
shifted = {s: rng.normal(loc=s, size=(500, d)) for s in (0.1, 0.25, 0.5)}
d_in = scorer.score_samples(in_dist)
for s, X in shifted.items():
    print(f"mean shift {s}: AUROC in vs out {ood_auroc(d_in, scorer.score_samples(X)):.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.hist(d_in, bins=40, alpha=0.5, density=True, label="in distribution")
for s, X in shifted.items():
    ax.hist(scorer.score_samples(X), bins=40, alpha=0.5, density=True, label=f"shift {s}")
ax.set(xlabel="Mahalanobis score", ylabel="density")
ax.legend(fontsize=8)
fig.tight_layout()
