"""Out-of-distribution flags for reward-model inputs: Mahalanobis distance on embeddings.

A reward model's score means little on a response unlike those it was trained on. The
post-hoc check of InfoRM (Miao et al., 2024) measures how far an embedding lies from the
training embeddings in Mahalanobis distance,

``D(e) = sqrt((e − μ)ᵀ Σ⁻¹ (e − μ))``,

with ``μ`` and ``Σ`` the mean and (shrunk) covariance of the training rows.
:class:`MahalanobisScorer` fits them; its :meth:`~MahalanobisScorer.score_samples` returns
``D`` (**higher = further out of distribution**; note that scikit-learn's outlier
detectors use the opposite sign) and :meth:`~MahalanobisScorer.outlier_probability` the
Gaussian reading ``P(χ²_d ≤ D²)``. :func:`ood_auroc` measures how well any such score
separates in-distribution from out-of-distribution rows.

Embeddings of a transformer have hundreds of dimensions and strongly correlated ones, so
the sample covariance is shrunk towards a scaled identity: Ledoit–Wolf's optimal
shrinkage by default, or a fixed one.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy.linalg import cho_factor, solve_triangular
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from skebrm._compat import Interval, StrOptions, _fit_context
from skebrm._params import check_saved_header

__all__ = ["MahalanobisScorer", "ood_auroc"]

_FORMAT = "skebrm.MahalanobisScorer"
_FORMAT_VERSION = 1
_BLOCK = 4096


def ood_auroc(scores_in, scores_out) -> float:
    """AUROC of a score that should be higher out of distribution than in it.

    The probability that an out-of-distribution row scores higher than an in-distribution
    one, ties counted ½ (the Mann–Whitney statistic): 1 separates perfectly, 0.5 is
    chance, below 0.5 the score points the wrong way.

    Parameters
    ----------
    scores_in : array-like of shape (n_in,)
        Scores of in-distribution rows.
    scores_out : array-like of shape (n_out,)
        Scores of out-of-distribution rows.

    Returns
    -------
    float
        The AUROC, in [0, 1].

    Examples
    --------
    >>> from skebrm.ood import ood_auroc
    >>> ood_auroc([0.1, 0.2, 0.3], [0.25, 0.9])
    0.8333333333333334
    """
    from sklearn.metrics import roc_auc_score

    a = np.asarray(scores_in, dtype=np.float64).ravel()
    b = np.asarray(scores_out, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(
            "ood_auroc: scores_in and scores_out must both be non-empty, got "
            f"{a.size} and {b.size} scores."
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("ood_auroc: the scores must be finite (no NaN or infinity).")
    labels = np.r_[np.zeros(a.size), np.ones(b.size)]
    return float(roc_auc_score(labels, np.r_[a, b]))


class MahalanobisScorer(BaseEstimator):
    """Mahalanobis distance of embeddings to the training rows: an out-of-distribution score.

    ``D(e) = sqrt((e − μ)ᵀ Σ⁻¹ (e − μ))`` with ``μ`` the mean of the training rows and
    ``Σ`` their covariance shrunk towards ``(tr S / d) I``:
    ``Σ = (1 − s) S + s (tr S / d) I``, ``S`` the maximum-likelihood covariance (divided
    by ``n``), ``s`` Ledoit–Wolf's estimate or a given value.

    Parameters
    ----------
    shrinkage : "ledoit_wolf" or float in [0, 1], default="ledoit_wolf"
        The shrinkage ``s``: Ledoit–Wolf's optimal one (:class:`sklearn.covariance.LedoitWolf`)
        or a fixed value (0 is the sample covariance, which needs more rows than
        dimensions).

    Attributes
    ----------
    location_ : ndarray of shape (n_features,)
        ``μ``.
    covariance_ : ndarray of shape (n_features, n_features)
        ``Σ``.
    shrinkage_ : float
        The shrinkage used.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import MahalanobisScorer
    >>> from skebrm.ood import ood_auroc
    >>> rng = np.random.default_rng(0)
    >>> train = rng.normal(size=(500, 8))
    >>> scorer = MahalanobisScorer().fit(train)
    >>> d_in = scorer.score_samples(rng.normal(size=(200, 8)))
    >>> d_out = scorer.score_samples(rng.normal(loc=2.0, size=(200, 8)))
    >>> ood_auroc(d_in, d_out) > 0.9
    True
    """

    _parameter_constraints: dict = {
        "shrinkage": [StrOptions({"ledoit_wolf"}), Interval(Real, 0, 1, closed="both")],
    }

    def __init__(self, *, shrinkage="ledoit_wolf"):
        self.shrinkage = shrinkage

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the mean and the shrunk covariance of the training embeddings.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows the reward model was trained (or calibrated) on.
        y : None
            Ignored; present for scikit-learn API compatibility.

        Returns
        -------
        self : MahalanobisScorer
            The fitted scorer.
        """
        from sklearn.covariance import LedoitWolf, empirical_covariance, shrunk_covariance

        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        if isinstance(self.shrinkage, str):
            lw = LedoitWolf(store_precision=False).fit(X)
            location, cov, s = lw.location_, lw.covariance_, float(lw.shrinkage_)
        else:
            location = X.mean(axis=0)
            s = float(self.shrinkage)
            cov = shrunk_covariance(empirical_covariance(X), shrinkage=s)
        try:
            factor, _ = cho_factor(cov, lower=True)
        except np.linalg.LinAlgError as err:
            raise ValueError(
                f"{type(self).__name__}.fit: the covariance of the {X.shape[0]} rows in "
                f"{X.shape[1]} dimensions is singular with shrinkage={self.shrinkage!r}. Use "
                "shrinkage='ledoit_wolf' or a value above 0, or drop constant features."
            ) from err
        self.location_ = location
        self.covariance_ = cov
        self.shrinkage_ = s
        self._chol = np.tril(factor)
        return self

    def _cholesky(self) -> np.ndarray:
        chol = getattr(self, "_chol", None)
        if chol is None:
            chol = np.tril(cho_factor(self.covariance_, lower=True)[0])
            self._chol = chol
        return chol

    def score_samples(self, X) -> np.ndarray:
        """The Mahalanobis distance ``D`` of each row (n_samples,): higher = further out.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows to score.

        Returns
        -------
        ndarray of shape (n_samples,)
            The Mahalanobis distance of each row to the training mean.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        # D² = ‖L⁻¹ (e − μ)‖² with Σ = L Lᵀ: triangular solves, no explicit inverse, in
        # row blocks so that a large X never needs a second full-size copy
        chol = self._cholesky()
        out = np.empty(X.shape[0])
        for start in range(0, X.shape[0], _BLOCK):
            block = X[start : start + _BLOCK]
            z = solve_triangular(chol, (block - self.location_).T, lower=True)
            out[start : start + _BLOCK] = np.sqrt(np.einsum("ij,ij->j", z, z))
        return out

    def decision_function(self, X) -> np.ndarray:
        """Same as :meth:`score_samples`: the distance, higher = further out of distribution.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows to score.

        Returns
        -------
        ndarray of shape (n_samples,)
            The Mahalanobis distance of each row to the training mean.
        """
        return self.score_samples(X)

    def outlier_probability(self, X) -> np.ndarray:
        """``P(χ²_d ≤ D²)`` of each row (n_samples,): the distance read as a probability.

        Under a Gaussian training distribution ``D²`` of an in-distribution row is ``χ²``
        with ``d = n_features_in_`` degrees of freedom, so this is the fraction of
        in-distribution rows that lie closer. It is a monotone function of ``D``: same
        ranking, same AUROC.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows to score.

        Returns
        -------
        ndarray of shape (n_samples,)
            ``P(χ²_d ≤ D²)`` of each row, in [0, 1].
        """
        from scipy.stats import chi2

        return chi2.cdf(self.score_samples(X) ** 2, df=self.n_features_in_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags

    # ----------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """The fitted scorer as plain JSON-able data (no pickle).

        Returns
        -------
        dict
            ``format``, ``version``, ``params``, ``location`` (a list) and ``covariance``
            (a list of rows); floats round-trip exactly through :mod:`json`.
        """
        check_is_fitted(self)
        shrinkage = self.shrinkage if isinstance(self.shrinkage, str) else float(self.shrinkage)
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "params": {"shrinkage": shrinkage},
            "shrinkage_used": float(self.shrinkage_),
            "location": self.location_.tolist(),
            "covariance": self.covariance_.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> MahalanobisScorer:
        """Restore a scorer saved by :meth:`to_dict`.

        Parameters
        ----------
        data : dict
            The output of :meth:`to_dict` (e.g. read back from JSON).

        Returns
        -------
        MahalanobisScorer
            The fitted scorer.

        Raises
        ------
        ValueError
            If ``data`` is not a saved scorer of a version this package reads, or its
            arrays are not finite, aligned and positive definite.
        """
        caller = f"{cls.__name__}.from_dict"
        check_saved_header(
            data, fmt=_FORMAT, version=_FORMAT_VERSION, what="MahalanobisScorer", caller=caller
        )
        try:
            params = dict(data["params"])
            loc = np.asarray(data["location"], dtype=np.float64)
            cov = np.asarray(data["covariance"], dtype=np.float64)
            s = float(data["shrinkage_used"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{caller}: malformed data ({err!r}).") from err
        d = loc.shape[0] if loc.ndim == 1 else -1
        if (
            d < 1
            or cov.shape != (d, d)
            or not np.isfinite(loc).all()
            or not np.isfinite(cov).all()
            or not np.array_equal(cov, cov.T)
        ):
            raise ValueError(
                f"{caller}: location must be a finite vector and covariance a finite "
                "symmetric matrix of matching size."
            )
        est = cls(**params)
        est._validate_params()
        est.location_, est.covariance_, est.shrinkage_ = loc, cov, s
        est.n_features_in_ = d
        try:
            est._cholesky()
        except np.linalg.LinAlgError as err:
            raise ValueError(f"{caller}: the covariance is not positive definite.") from err
        return est
