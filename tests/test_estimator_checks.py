"""scikit-learn's estimator checks on small, fast configurations.

Only :class:`~skebrm.EnergyRewardCalibrator` is checked: it learns from ``(X, y)`` alone
when no pair metadata is given. The pairwise heads (``BradleyTerryHead`` and the
baselines) cannot fit without ``pair_id`` / ``chosen``, which the generic checks never
pass; their scikit-learn behaviour is tested in their own unit tests.
"""

from sklearn.utils.estimator_checks import check_regressors_train, parametrize_with_checks

from skebrm import EnergyRewardCalibrator

FAST = dict(
    hidden=(16, 8),
    reward_hidden=(4, 8),
    n_negatives=16,
    max_epochs=2,
    batch_size=64,
    grid_size=32,
    ascent_steps=20,
    dropout=0.0,
    random_state=0,
)
# Enough training to reach R² > 0.5 on scikit-learn's regression check dataset.
TRAINED = {**FAST, "max_epochs": 30, "batch_size": 32, "learning_rate": 1e-2, "grid_size": 64}


def _expected_failed_checks(estimator):
    return {
        "check_regressors_train": (
            "the 2-epoch configuration cannot reach R² 0.5; test_regressors_train runs "
            "this check with a 30-epoch budget."
        )
    }


@parametrize_with_checks(
    [EnergyRewardCalibrator(**FAST)], expected_failed_checks=_expected_failed_checks
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_regressors_train():
    check_regressors_train("EnergyRewardCalibrator", EnergyRewardCalibrator(**TRAINED))
