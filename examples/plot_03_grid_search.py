"""
Model selection with GridSearchCV and metadata routing
======================================================

``EnergyRewardCalibrator.score`` is the pairwise accuracy of the refined rewards when the
pair metadata is routed to it, so scikit-learn's search selects by what a reward-model
user cares about. ``GroupKFold`` on the prompt (or pair) ids keeps both rows of a pair in
the same fold.
"""

import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV, GroupKFold

from skebrm import EnergyRewardCalibrator

rng = np.random.default_rng(0)
n = 600
X = rng.normal(size=(n, 16)).astype(np.float32)
y = X[:, 0] + 0.5 * rng.normal(size=n)  # the RM's rewards
pair_id = np.arange(n) // 2
quality = X[:, 0] + X[:, 1]
chosen = quality > quality.reshape(-1, 2)[:, ::-1].ravel()

with sklearn.config_context(enable_metadata_routing=True):
    # fit requests pair_id, chosen and groups, score pair_id and chosen, by default
    est = EnergyRewardCalibrator(energy="basis", grid_size=128, max_epochs=2, random_state=0)
    search = GridSearchCV(
        est,
        {"preference_weight": [0.0, 5.0]},
        cv=GroupKFold(2),
        error_score="raise",
    )
    search.fit(X, y, groups=pair_id // 2, pair_id=pair_id, chosen=chosen)  # 2 pairs a prompt

# %%
# Mean held-out pairwise accuracy of each setting.
for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
    print(params, f"{score:.3f}")
print("best:", search.best_params_)
