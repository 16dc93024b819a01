"""Linear Bradley–Terry reward heads fitted on embeddings of preference pairs."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted, validate_data

from skebrm._compat import Interval, _fit_context
from skebrm._pairs import check_pairs

__all__ = ["BradleyTerryHead", "fit_bradley_terry"]


def fit_bradley_terry(
    X_chosen,
    X_rejected,
    *,
    C: float = 1.0,
    sample_weight=None,
    max_iter: int = 1000,
) -> np.ndarray:
    """Fit a linear Bradley–Terry reward ``r(x) = w·x`` by logistic regression.

    ``P(chosen ≻ rejected) = sigmoid(w·(x_c − x_r))``. The model sees each difference
    with label 1 and its negation with label 0, so the fit is symmetric and needs no
    intercept (a reward offset cancels in every comparison).

    Returns
    -------
    coef : ndarray of shape (n_features,)
    """
    X_chosen = np.asarray(X_chosen, dtype=np.float64)
    X_rejected = np.asarray(X_rejected, dtype=np.float64)
    if X_chosen.shape != X_rejected.shape or X_chosen.ndim != 2:
        raise ValueError(
            "fit_bradley_terry: X_chosen and X_rejected must be 2-D with the same shape, got "
            f"{X_chosen.shape} and {X_rejected.shape}."
        )
    diff = X_chosen - X_rejected
    Xd = np.vstack([diff, -diff])
    yd = np.r_[np.ones(len(diff)), np.zeros(len(diff))]
    sw = None if sample_weight is None else np.r_[sample_weight, sample_weight]
    lr = LogisticRegression(C=C, fit_intercept=False, max_iter=max_iter)
    lr.fit(Xd, yd, sample_weight=sw)
    return lr.coef_.ravel().copy()


class BradleyTerryHead(RegressorMixin, BaseEstimator):
    """A linear reward head ``r(x) = w·x`` fitted on preference pairs (Bradley–Terry).

    Parameters
    ----------
    C : float, default=1.0
        Inverse L2 regularisation strength of the logistic regression.
    max_iter : int, default=1000
        Iterations of the LBFGS solver.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
        Always 0.0: a reward offset is not identified by comparisons.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import BradleyTerryHead
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> pair_id, chosen = np.repeat(np.arange(100), 2), np.tile([True, False], 100)
    >>> head = BradleyTerryHead().fit(X, pair_id=pair_id, chosen=chosen)
    >>> head.predict(X).shape
    (200,)
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, pair_id=None, chosen=None):
        """Fit on rows that carry pair metadata; ``y`` is ignored."""
        X = validate_data(self, X, dtype=np.float64)
        idx_c, idx_r = check_pairs(pair_id, chosen, X.shape[0], caller="BradleyTerryHead.fit")
        self.coef_ = fit_bradley_terry(X[idx_c], X[idx_r], C=self.C, max_iter=self.max_iter)
        self.intercept_ = 0.0
        return self

    def predict(self, X):
        """The reward of each row."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_
