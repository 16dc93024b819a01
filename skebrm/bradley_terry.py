"""Linear Bradley–Terry reward heads fitted on embeddings of preference pairs.

* :class:`BradleyTerryHead` — the MAP (L2-regularised) linear reward ``r(x) = w·x``.
* :class:`LaplaceBradleyTerryHead` — the same head with a Laplace (Gaussian) posterior
  over ``w``: a Bayesian last layer, the cheapest post-hoc uncertainty for a reward model.

Both share the pair interface of :mod:`skebrm.baselines`: ``fit(X, y=None, *, pair_id,
chosen)``, ``predict(X)`` and ``score(X, y=None, *, pair_id, chosen)`` = pairwise
accuracy (ties count 0.5), with the pair metadata routed by ``set_fit_request`` /
``set_score_request`` inside ``GridSearchCV``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from skebrm._compat import Interval, StrOptions, _fit_context
from skebrm._pairs import check_pairs
from skebrm.metrics import pairwise_accuracy

__all__ = ["BradleyTerryHead", "LaplaceBradleyTerryHead", "fit_bradley_terry"]


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
    intercept (a reward offset cancels in every comparison). With scikit-learn's
    convention the objective is ``½‖w‖² + C Σ_rows loss``; each pair is two rows with the
    same loss ``−log σ(w·z)``, so ``w`` minimises ``Σ_pairs −log σ(w·z) + ‖w‖² / (4C)``.

    BLAS runs on one thread during the fit, so the result does not depend on the
    machine's thread count.

    Parameters
    ----------
    X_chosen : array-like of shape (n_pairs, n_features)
        Embeddings of the chosen response of each pair.
    X_rejected : array-like of shape (n_pairs, n_features)
        Embeddings of the rejected response of each pair, in the same order.
    C : float, default=1.0
        Inverse L2 regularisation strength of the logistic regression.
    sample_weight : array-like of shape (n_pairs,), default=None
        Weight of each pair (applied to both of its rows); None weighs pairs equally.
    max_iter : int, default=1000
        Iterations of the LBFGS solver.

    Returns
    -------
    coef : ndarray of shape (n_features,)
        The reward weights ``w``.
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
    # one BLAS thread: L-BFGS's gradients are matrix products whose rounding depends on
    # how many threads split them, enough to flip near-tied pairs between machines
    with threadpool_limits(limits=1, user_api="blas"):
        lr.fit(Xd, yd, sample_weight=sw)
    return lr.coef_.ravel().copy()


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _PairScoreMixin:
    """``score`` = pairwise accuracy of ``predict`` on the pairs of ``X``."""

    def score(self, X, y=None, *, pair_id=None, chosen=None) -> float:
        """Pairwise accuracy (ties count 0.5) of the predicted rewards; ``y`` is ignored.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows, two per pair.
        y : None
            Ignored; present for scikit-learn API compatibility.
        pair_id, chosen : array-like of shape (n_samples,)
            Pair metadata (see :func:`skebrm.datasets.pairs_to_rows`); inside a
            meta-estimator, request them with ``set_score_request(pair_id=True,
            chosen=True)``.

        Returns
        -------
        float
            Fraction of pairs whose chosen row gets the higher reward, ties counting 0.5.
        """
        rewards = self.predict(X)
        idx_c, idx_r = check_pairs(
            pair_id, chosen, len(rewards), caller=f"{type(self).__name__}.score"
        )
        return pairwise_accuracy(rewards[idx_c], rewards[idx_r])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags


class BradleyTerryHead(_PairScoreMixin, BaseEstimator):
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
    >>> 0.0 <= head.score(X, pair_id=pair_id, chosen=chosen) <= 1.0  # pairwise accuracy
    True
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def _fit_pairs(self, X, pair_id, chosen):
        X = validate_data(self, X, dtype=np.float64)
        idx_c, idx_r = check_pairs(pair_id, chosen, X.shape[0], caller=f"{type(self).__name__}.fit")
        coef = fit_bradley_terry(X[idx_c], X[idx_r], C=self.C, max_iter=self.max_iter)
        return X[idx_c] - X[idx_r], coef

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, pair_id=None, chosen=None):
        """Fit on rows that carry pair metadata; ``y`` is ignored.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows, two per pair.
        y : None
            Ignored; present for scikit-learn API compatibility.
        pair_id, chosen : array-like of shape (n_samples,)
            The pair of each row and whether it is the chosen response (see
            :func:`skebrm.datasets.pairs_to_rows`).

        Returns
        -------
        self : BradleyTerryHead
            The fitted head.
        """
        _, self.coef_ = self._fit_pairs(X, pair_id, chosen)
        self.intercept_ = 0.0
        return self

    def predict(self, X) -> np.ndarray:
        """The reward of each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples,)
            The reward ``w·x + b`` of each row.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_


class LaplaceBradleyTerryHead(BradleyTerryHead):
    """A Bradley–Terry head with a Laplace posterior over its weights (Bayesian last layer).

    The posterior over the weights ``w`` of the linear reward ``r(e) = w·e + b`` is
    approximated by a Gaussian ``N(w, H⁻¹)`` around them, whose precision is the Hessian of
    the negative log posterior of the pairs,

    ``H = λ I + Σ_pairs p (1 − p) z zᵀ``, ``z = e_c − e_r``, ``p = σ(w·z)``

    (the offset ``b`` cancels in every comparison and carries no posterior).

    **Where the weights come from** (``weights``):

    * ``"fit"`` — the MAP weights of :class:`BradleyTerryHead` with the same ``C`` (the
      same fit, so the same rewards), which are exactly the mode of that posterior;
    * ``"base_reward"`` — the weights of the reward model whose reward per row is ``y``:
      ``(w, b)`` by least squares of ``y`` on ``[X, 1]``. When ``X`` are the inputs of an
      RM's scoring layer (what :class:`skebrm.extraction.EmbeddingExtractor` returns) and
      ``y`` its rewards, this recovers the RM's own last layer, so the posterior is a
      last-layer Laplace approximation of that trained RM (its weights taken as the mode,
      as last-layer Laplace on trained networks does). ``y`` must be linear in ``X``: an
      R² below 0.999 raises a ``ValueError``.

    **Prior precision.** :func:`fit_bradley_terry` minimises scikit-learn's
    ``½‖w‖² + C Σ_rows loss`` over the pairs *and* their negations; both copies of a pair
    have the loss ``−log σ(w·z)``, so the objective is ``2C`` times
    ``Σ_pairs −log σ(w·z) + ‖w‖² / (4C)``: the negative log posterior of one Bradley–Terry
    likelihood per pair under the prior ``N(0, λ⁻¹ I)`` with ``λ = 1 / (2C)``. That is the
    ``λ`` used here, so with ``weights="fit"`` the Laplace posterior is centred on the
    mode of the objective that was fitted (each pair counted once, as the data hold it).

    Uncertainty and preference probability follow from the Gaussian:

    * ``score_uncertainty(X)``: ``std(e) = sqrt(eᵀ H⁻¹ e)``, the posterior standard
      deviation of the reward ``w·e`` of each row;
    * ``pair_uncertainty(X_a, X_b)``: ``s = sqrt(zᵀ H⁻¹ z)`` with ``z = e_a − e_b``, the
      posterior standard deviation of the margin (rewards of one pair are correlated
      through ``w``, so this is not ``hypot`` of the row stds);
    * ``preference_probability(X_a, X_b)``: the probit approximation
      ``σ(μ / sqrt(1 + π s² / 8))`` of ``E[σ(w·z)]``, ``μ = w·z`` (MacKay 1992).

    Parameters
    ----------
    C : float, default=1.0
        Inverse L2 regularisation strength, as for :class:`BradleyTerryHead`; the prior
        precision is ``1 / (2C)``.
    max_iter : int, default=1000
        Iterations of the LBFGS solver (``weights="fit"``).
    weights : {"fit", "base_reward"}, default="fit"
        Fit the MAP weights on the pairs, or take those of the base reward ``y``.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        Posterior mean of the weights.
    intercept_ : float
        0.0 for ``weights="fit"``; the base reward's offset for ``"base_reward"``.
    prior_precision_ : float
        ``λ = 1 / (2C)``.
    precision_ : ndarray of shape (n_features, n_features)
        ``H``.
    covariance_ : ndarray of shape (n_features, n_features)
        ``H⁻¹``.
    base_reward_r2_ : float
        R² of the least-squares fit of ``y`` (``weights="base_reward"``; NaN for ``"fit"``).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import LaplaceBradleyTerryHead
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> pair_id, chosen = np.repeat(np.arange(100), 2), np.tile([True, False], 100)
    >>> head = LaplaceBradleyTerryHead().fit(X, pair_id=pair_id, chosen=chosen)
    >>> head.score_uncertainty(X).shape, head.preference_probability(X[:5], X[5:10]).shape
    ((200,), (5,))
    """

    _parameter_constraints: dict = {
        **BradleyTerryHead._parameter_constraints,
        "weights": [StrOptions({"fit", "base_reward"})],
    }

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000, weights: str = "fit"):
        self.C = C
        self.max_iter = max_iter
        self.weights = weights

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, pair_id=None, chosen=None):
        """Take or fit the weights, then the Laplace posterior around them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows, two per pair.
        y : array-like of shape (n_samples,), optional
            The base reward per row; required with ``weights="base_reward"``, else ignored.
        pair_id, chosen : array-like of shape (n_samples,)
            The pair of each row and whether it is the chosen response (see
            :func:`skebrm.datasets.pairs_to_rows`).

        Returns
        -------
        self : LaplaceBradleyTerryHead
            The fitted head.
        """
        r2 = float("nan")
        if self.weights == "fit":
            z, coef = self._fit_pairs(X, pair_id, chosen)
            intercept = 0.0
        else:
            if y is None:
                raise ValueError(
                    "LaplaceBradleyTerryHead.fit: y (the base reward per row) is required "
                    "with weights='base_reward'; pass y or use weights='fit'."
                )
            X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
            idx_c, idx_r = check_pairs(
                pair_id, chosen, X.shape[0], caller="LaplaceBradleyTerryHead.fit"
            )
            design = np.hstack([X, np.ones((X.shape[0], 1))])
            solution = np.linalg.lstsq(design, y, rcond=None)[0]
            coef, intercept = solution[:-1], float(solution[-1])
            residual = y - design @ solution
            total = np.sum((y - y.mean()) ** 2)
            r2 = 1.0 - float(residual @ residual) / total if total > 0 else 1.0
            if r2 < 0.999:
                raise ValueError(
                    "LaplaceBradleyTerryHead.fit: with weights='base_reward', y must be a "
                    f"linear function of X (a reward model's last layer), got R² {r2:.4f} "
                    "for the least-squares fit; pass the scoring layer's inputs as X or use "
                    "weights='fit'."
                )
            z = X[idx_c] - X[idx_r]
        lam = 1.0 / (2.0 * float(self.C))
        p = _sigmoid(z @ coef)
        precision = (z * (p * (1.0 - p))[:, None]).T @ z
        precision[np.diag_indices_from(precision)] += lam
        factor = cho_factor(precision, lower=True)
        covariance = cho_solve(factor, np.eye(precision.shape[0]))
        self.coef_ = coef
        self.intercept_ = intercept
        self.prior_precision_ = lam
        self.precision_ = precision
        self.covariance_ = 0.5 * (covariance + covariance.T)
        self.base_reward_r2_ = r2
        return self

    def _quad(self, E: np.ndarray) -> np.ndarray:
        """``sqrt(eᵀ H⁻¹ e)`` per row (clipped at 0 against round-off)."""
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", E @ self.covariance_, E), 0.0))

    def score_uncertainty(self, X) -> np.ndarray:
        """Posterior standard deviation ``sqrt(eᵀ H⁻¹ e)`` of each row's reward.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples,)
            The posterior standard deviation of each row's reward.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._quad(X)

    def _pair_rows(self, X_a, X_b, caller: str) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X_a = validate_data(self, X_a, dtype=np.float64, reset=False)
        X_b = validate_data(self, X_b, dtype=np.float64, reset=False)
        if X_a.shape[0] != X_b.shape[0]:
            raise ValueError(
                f"LaplaceBradleyTerryHead.{caller}: X_a and X_b must have the same number of "
                f"rows, got {X_a.shape[0]} and {X_b.shape[0]}."
            )
        return X_a, X_b

    def pair_uncertainty(self, X_a, X_b) -> np.ndarray:
        """Posterior standard deviation ``sqrt(zᵀ H⁻¹ z)`` of the margin, ``z = e_a − e_b``.

        Parameters
        ----------
        X_a, X_b : array-like of shape (n_pairs, n_features)
            Embeddings of the two sides of each pair, row ``i`` of each forming pair ``i``.

        Returns
        -------
        ndarray of shape (n_pairs,)
            The posterior standard deviation of each pair's reward margin.
        """
        X_a, X_b = self._pair_rows(X_a, X_b, "pair_uncertainty")
        return self._quad(X_a - X_b)

    def preference_probability(self, X_a, X_b) -> np.ndarray:
        """``P(a ≻ b) ≈ σ(μ / sqrt(1 + π s² / 8))`` with ``μ = w·z``, ``s² = zᵀ H⁻¹ z``.

        Parameters
        ----------
        X_a, X_b : array-like of shape (n_pairs, n_features)
            Embeddings of the two sides of each pair, row ``i`` of each forming pair ``i``.

        Returns
        -------
        ndarray of shape (n_pairs,)
            The probability that side ``a`` of each pair is preferred to side ``b``.
        """
        X_a, X_b = self._pair_rows(X_a, X_b, "preference_probability")
        z = X_a - X_b
        s = self._quad(z)
        return _sigmoid((z @ self.coef_) / np.sqrt(1.0 + math.pi * s**2 / 8.0))
