"""``GridDistribution``: reward distributions normalised exactly on a grid of cells.

The density convention of the package
-------------------------------------
A grid of ``G`` cells of width ``Δ`` covers ``[low, low + GΔ]``; cell ``j`` is
``[low + jΔ, low + (j+1)Δ)`` with centre ``c_j = low + (j + ½)Δ``. A row's distribution
gives cell ``j`` the mass ``p_j = softmax(f(e, c))_j`` and is **uniform inside each
cell**, so that

* the density is ``p_j / Δ`` on cell ``j`` and 0 outside the grid (:meth:`log_density`);
* the CDF is piecewise linear between cell edges, and quantiles are its exact inverse
  (:meth:`quantiles`);
* the mean is ``Σ p_j c_j`` and the variance ``Σ p_j c_j² − mean² + Δ²/12``;
* ``P(a > b)`` for two independent rows is ``Σ_j p^a_j (Σ_{i<j} p^b_i + ½ p^b_j)`` — exact,
  since two independent uniforms on the same cell are each other's superior with
  probability ½ (:meth:`preference_probability`).

Training by ``objective="grid_nll"`` maximises exactly this density, and the preference
term of the estimator is exactly this ``P(a > b)``: one convention everywhere.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

__all__ = ["GridDistribution", "preference_probability_from_masses"]


def _log_softmax(energies: np.ndarray) -> np.ndarray:
    e = np.asarray(energies, dtype=np.float64)
    m = e.max(axis=-1, keepdims=True)
    return e - m - np.log(np.exp(e - m).sum(axis=-1, keepdims=True))


def _log_sinhc(x: float) -> float:
    """``log(sinh(x) / x)`` for ``x ≥ 0``, accurate for tiny and huge ``x``."""
    if x < 1e-3:
        return x * x / 6.0 - x**4 / 180.0
    if x < 20.0:
        return float(np.log(np.sinh(x) / x))
    return x - np.log(2.0 * x) + float(np.log1p(-np.exp(-2.0 * x)))


def preference_probability_from_masses(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """``P(a > b)`` for independent piecewise-uniform masses on one grid (..., G)."""
    cdf_b_below = np.cumsum(pb, axis=-1) - pb
    return np.sum(pa * (cdf_b_below + 0.5 * pb), axis=-1)


class GridDistribution:
    """Distributions of ``n`` rewards on one uniform grid, uniform inside each cell.

    Returned by :meth:`skebrm.EnergyRewardCalibrator.predict_distribution`, so that every
    statistic of ``p(r | e)`` comes from one evaluation of the energy on the grid. All
    values are in the reward model's units.

    Parameters
    ----------
    log_masses : ndarray of shape (n, G)
        Log-probabilities of the cells (rows are renormalised, so unnormalised log
        masses such as energies are fine).
    low : float
        Left edge of the grid.
    width : float
        Cell width ``Δ > 0``.
    mode : ndarray of shape (n,), optional
        The mode of each row when it was found more finely than the grid (the
        calibrator's global mode); defaults to the centre of the most probable cell.

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import GridDistribution
    >>> d = GridDistribution(np.log([[0.25, 0.5, 0.25]]), low=0.0, width=1.0)
    >>> d.mean(), d.quantiles([0.5])
    (array([1.5]), array([[1.5]]))
    """

    def __init__(self, log_masses, low: float, width: float, *, mode=None):
        lm = np.asarray(log_masses, dtype=np.float64)
        if lm.ndim != 2 or lm.shape[1] < 1:
            raise ValueError(
                f"GridDistribution: log_masses must have shape (n, G), got {lm.shape}."
            )
        if np.isnan(lm).any() or np.isposinf(lm).any():
            raise ValueError("GridDistribution: log_masses must not contain NaN or +inf.")
        empty = np.flatnonzero(np.isneginf(lm).all(axis=1))
        if empty.size:
            raise ValueError(
                f"GridDistribution: log_masses row {int(empty[0])} is -inf in every cell (no "
                f"mass anywhere; {empty.size} such row(s)); every row needs a finite cell."
            )
        if not (isinstance(width, Real) and width > 0 and np.isfinite(width)):
            raise ValueError(f"GridDistribution: width must be a positive float, got {width!r}.")
        self.log_masses = _log_softmax(lm)
        self.low = float(low)
        self.width = float(width)
        if mode is not None:
            mode = np.asarray(mode, dtype=np.float64)
            if mode.shape != (lm.shape[0],):
                raise ValueError(
                    f"GridDistribution: mode must have shape ({lm.shape[0]},), got {mode.shape}."
                )
        self._mode = mode

    @classmethod
    def _from_log_masses(cls, log_masses, low, width, mode):
        """Wrap already-normalised log masses without copying or re-validating."""
        out = cls.__new__(cls)
        out.log_masses, out.low, out.width, out._mode = log_masses, low, width, mode
        return out

    # ------------------------------------------------------------------ layout
    def __len__(self) -> int:
        return self.log_masses.shape[0]

    def __getitem__(self, rows) -> GridDistribution:
        """The distributions of some rows (any numpy row index: slice, ints, mask)."""
        lm = self.log_masses[rows]
        if lm.ndim == 1:
            lm = lm[None]
        mode = None if self._mode is None else np.atleast_1d(self._mode[rows])
        return GridDistribution._from_log_masses(lm, self.low, self.width, mode)

    def __repr__(self) -> str:
        return (
            f"GridDistribution(n={len(self)}, cells={self.n_cells}, "
            f"range=[{self.low:.4g}, {self.high:.4g}])"
        )

    @property
    def n_cells(self) -> int:
        return self.log_masses.shape[1]

    @property
    def high(self) -> float:
        return self.low + self.n_cells * self.width

    @property
    def centres(self) -> np.ndarray:
        """Cell centres, shape (G,)."""
        return self.low + (np.arange(self.n_cells) + 0.5) * self.width

    @property
    def edges(self) -> np.ndarray:
        """Cell edges, shape (G + 1,)."""
        return self.low + np.arange(self.n_cells + 1) * self.width

    @property
    def masses(self) -> np.ndarray:
        """Cell probabilities, shape (n, G); rows sum to 1."""
        return np.exp(self.log_masses)

    # -------------------------------------------------------------- statistics
    @property
    def mode(self) -> np.ndarray:
        """The mode of each row (n,)."""
        if self._mode is not None:
            return self._mode.copy()
        return self.centres[np.argmax(self.log_masses, axis=1)]

    def mean(self) -> np.ndarray:
        """The mean of each row (n,).

        Returns
        -------
        ndarray of shape (n,)
            The mean reward of each row.
        """
        # row-wise sums, not ``p @ centres``: a matrix-vector product may round a row
        # differently depending on how many rows come with it
        return (self.masses * self.centres).sum(axis=1)

    def var(self) -> np.ndarray:
        """The variance of each row (n,), within-cell spread ``Δ²/12`` included.

        Returns
        -------
        ndarray of shape (n,)
            The variance of each row's reward.
        """
        p, c = self.masses, self.centres
        mean = (p * c).sum(axis=1)
        second = (p * c**2).sum(axis=1) + self.width**2 / 12.0
        return np.maximum(second - mean**2, 0.0)

    def std(self) -> np.ndarray:
        """The standard deviation of each row (n,).

        Returns
        -------
        ndarray of shape (n,)
            The standard deviation of each row's reward.
        """
        return np.sqrt(self.var())

    def entropic_risk(self, beta: float) -> np.ndarray:
        """The entropic risk ``−β log E[exp(−r / β)]`` of each row (n,): a pessimistic reward.

        Exact for the density of the class (uniform inside each cell, the convention
        :meth:`mean` and :meth:`var` follow): cell ``j`` contributes
        ``p_j exp(−c_j / β) · sinh(x) / x`` with ``x = Δ / (2β)``, the mean of
        ``exp(−r / β)`` over a uniform cell, and the sum is taken in log space
        (log-sum-exp), so nothing overflows for any ``β`` or grid position.

        ``β → ∞`` gives :meth:`mean` (the first correction is ``−var / (2β)``); ``β → 0``
        gives the worst case, the left edge of the lowest cell with positive mass (the
        infimum of the support). It decreases as ``β`` falls, between those two limits.
        Masses from a softmax are positive in every cell, so for very small ``β`` even a
        tail of mass ``1e-20`` pulls the value to the grid's left edge: useful values of
        ``β`` are of the order of the rewards' spread.

        Parameters
        ----------
        beta : float
            Risk tolerance ``β > 0``, in the reward's units: smaller is more pessimistic.

        Returns
        -------
        ndarray of shape (n,)
            The entropic risk of each row, in the reward's units.

        Examples
        --------
        >>> import numpy as np
        >>> from skebrm import GridDistribution
        >>> d = GridDistribution(np.log([[0.25, 0.5, 0.25]]), low=0.0, width=1.0)
        >>> d.mean(), d.entropic_risk(1e6).round(4), d.entropic_risk(1e-9).round(4)
        (array([1.5]), array([1.5]), array([0.]))
        """
        if (
            isinstance(beta, bool)
            or not isinstance(beta, Real)
            or not np.isfinite(beta)
            or not beta > 0
        ):
            raise ValueError(
                "GridDistribution.entropic_risk: beta must be a positive finite float, got "
                f"{beta!r}. Pass e.g. beta=1.0 (smaller is more pessimistic)."
            )
        from scipy.special import logsumexp

        beta = float(beta)
        p = self.masses
        # centres relative to each row's mean, so exp never sees the grid's position
        offsets = (np.arange(self.n_cells) + 0.5) * self.width
        centre = (p * offsets).sum(axis=1)
        y = (centre[:, None] - offsets[None, :]) / beta
        # log E[exp(y)]: log-sum-exp in general; log1p(E[expm1(y)]) where every |y| <= 1,
        # which keeps full precision as beta grows (the sum is 1 + var / (2 beta²) + ...)
        log_mean_exp = np.empty(len(self))
        small = np.abs(y).max(axis=1) <= 1.0
        log_mean_exp[small] = np.log1p((p[small] * np.expm1(y[small])).sum(axis=1))
        with np.errstate(over="ignore", invalid="ignore"):
            terms = np.where(p[~small] > 0, self.log_masses[~small] + y[~small], -np.inf)
        log_mean_exp[~small] = logsumexp(terms, axis=1)
        return self.low + centre - beta * (log_mean_exp + _log_sinhc(self.width / (2.0 * beta)))

    def cdf(self, r) -> np.ndarray:
        """``P(reward ≤ r[i])`` for row ``i`` (n,): piecewise linear between edges.

        Parameters
        ----------
        r : array-like of shape (n,)
            One finite reward per row.

        Returns
        -------
        ndarray of shape (n,)
            The cumulative probability of each row at its ``r[i]``.
        """
        r = self._per_row(r, "r")
        p = self.masses
        pos = (r - self.low) / self.width
        j = np.clip(np.floor(pos).astype(np.int64), 0, self.n_cells - 1)
        below = np.cumsum(p, axis=1) - p
        rows = np.arange(len(self))
        frac = np.clip(pos - j, 0.0, 1.0)
        out = below[rows, j] + frac * p[rows, j]
        out[pos <= 0] = 0.0
        out[pos >= self.n_cells] = 1.0
        return out

    def quantiles(self, q) -> np.ndarray:
        """Quantiles at levels ``q`` (array-like in [0, 1]): shape (n, len(q)).

        Exact inverse of :meth:`cdf`; strictly increasing in ``q`` where mass is > 0.

        Parameters
        ----------
        q : float or array-like of float
            The quantile levels, each in [0, 1].

        Returns
        -------
        ndarray of shape (n, len(q))
            The quantile of each row at each level.
        """
        q = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if q.ndim != 1 or not np.isfinite(q).all() or np.any((q < 0) | (q > 1)):
            raise ValueError(f"GridDistribution.quantiles: q must be levels in [0, 1], got {q!r}.")
        p = self.masses
        cdf = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p, axis=1)], axis=1)
        cdf[:, -1] = 1.0
        n, size = p.shape
        rows = np.arange(n)
        out = np.empty((n, q.size))
        for k, qk in enumerate(q):
            j = np.minimum(np.sum(cdf[:, 1:] < qk, axis=1), size - 1)
            pj = p[rows, j]
            frac = np.divide(qk - cdf[rows, j], pj, out=np.zeros(n), where=pj > 0)
            out[:, k] = self.low + (j + np.clip(frac, 0.0, 1.0)) * self.width
        return out

    def interval(self, alpha: float = 0.1) -> np.ndarray:
        """Central ``1 − alpha`` interval of each row: shape (n, 2).

        Parameters
        ----------
        alpha : float, default=0.1
            Probability mass left outside the interval, in (0, 1), half on each side.

        Returns
        -------
        ndarray of shape (n, 2)
            The lower and upper end of each row's interval.
        """
        if not isinstance(alpha, Real) or not 0 < alpha < 1:
            raise ValueError(f"GridDistribution.interval: alpha must be in (0, 1), got {alpha!r}.")
        return self.quantiles([alpha / 2, 1 - alpha / 2])

    def log_density(self, r) -> np.ndarray:
        """``log p(r[i])`` for row ``i`` (n,): ``log p_j − log Δ`` in the cell of ``r[i]``,
        ``−inf`` outside the grid (the right edge belongs to the last cell).

        Parameters
        ----------
        r : array-like of shape (n,)
            One finite reward per row.

        Returns
        -------
        ndarray of shape (n,)
            The log-density of each row at its ``r[i]``.
        """
        r = self._per_row(r, "r")
        pos = (r - self.low) / self.width
        j = np.clip(np.floor(pos).astype(np.int64), 0, self.n_cells - 1)
        out = self.log_masses[np.arange(len(self)), j] - np.log(self.width)
        out[(pos < 0) | (pos > self.n_cells)] = -np.inf
        return out

    def log_density_grid(self) -> np.ndarray:
        """``log p`` on every cell (n, G); ``exp(·).sum(1) · Δ == 1``.

        Returns
        -------
        ndarray of shape (n, G)
            The log-density of each row in each of the ``G`` cells.
        """
        return self.log_masses - np.log(self.width)

    def preference_probability(self, other: GridDistribution) -> np.ndarray:
        """``P(r_self[i] > r_other[i])`` for independent rows (n,), exact on the grid.

        Parameters
        ----------
        other : GridDistribution
            The distributions to compare with, as many rows as this one.

        Returns
        -------
        ndarray of shape (n,)
            The probability that row ``i`` of this distribution exceeds row ``i`` of
            ``other``.
        """
        if not isinstance(other, GridDistribution):
            raise TypeError(
                "GridDistribution.preference_probability: other must be a GridDistribution, "
                f"got {type(other).__name__}."
            )
        if len(other) != len(self):
            raise ValueError(
                "GridDistribution.preference_probability: both must have the same number of "
                f"rows, got {len(self)} and {len(other)}."
            )
        same = (
            other.n_cells == self.n_cells
            and np.isclose(other.low, self.low, rtol=0, atol=1e-12 * max(1.0, abs(self.low)))
            and np.isclose(other.width, self.width, rtol=1e-12, atol=0)
        )
        if not same:
            raise ValueError(
                "GridDistribution.preference_probability: both distributions must live on "
                f"the same grid, got {self!r} and {other!r}."
            )
        prob = preference_probability_from_masses(self.masses, other.masses)
        return np.clip(prob, 0.0, 1.0)

    def _per_row(self, r, name: str) -> np.ndarray:
        r = np.asarray(r, dtype=np.float64)
        if r.shape != (len(self),):
            raise ValueError(
                f"GridDistribution: {name} must have shape ({len(self)},), one value per row, "
                f"got {r.shape}."
            )
        if not np.isfinite(r).all():
            raise ValueError(f"GridDistribution: {name} must be finite.")
        return r
