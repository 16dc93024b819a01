"""Pair selection with a finite-sample guarantee: trust these orderings, at most α are wrong.

A reward model orders a pair (``r_a > r_b``); a confidence says how sure that ordering is
(the margin ``|r_a − r_b|``, a head's ``max(P, 1 − P)`` with ``P = P(a ≻ b)``, EBRM's grid
``P(a ≻ b)`` read the same way, ``1 / std``: any score where higher means surer).
:class:`PairSelector`, calibrated on held-out labelled pairs, accepts an ordering only
where its confidence is high enough, so that the **misorder rate among accepted pairs**
is at most ``alpha`` (the selective error of SCOPE-style conformal acceptance). Two
calibrations, with two different guarantees:

``method="ltt"`` — learn then test (Angelopoulos et al., 2021): with probability at least
``1 − delta`` over the calibration pairs,

    ``R(τ̂) = P(misordered | confidence ≥ τ̂) ≤ alpha``

for a new pair exchangeable with them. The threshold ``τ̂`` is one number, fitted once and
applied to any later pair. Each candidate threshold ``τ`` is tested for
``H_τ: R(τ) > alpha`` with the exact binomial p-value of its accepted calibration pairs
(:func:`binomial_p_values`), the family of tests is corrected for multiplicity by
``fwer_method``, and ``τ̂`` is the lowest threshold rejected. The statement is exact (the
learn-then-test theorem) for candidate thresholds fixed before the calibration pairs are
seen: pass them as an array. With ``thresholds=int`` (the default) the candidates are
placed at order statistics of the calibration confidences (never their labels): the
strictest accepts ``max(⌈log δ / log(1 − α)⌉, n / 20)`` pairs (the fewest that can pass
the test at all, and at least 5 % of them), the loosest accepts every pair. The theorem
then holds conditionally on those confidences rather than exactly; the package's
simulation tests measure the violation frequency below ``delta`` under it.

``method="conformal"`` — conformal selection (Jin & Candès, 2023): the test pairs scored
together are selected by Benjamini–Hochberg at level ``alpha`` on their conformal
p-values ``p_j = (1 + #{calibration pairs misordered with confidence ≥ c_j}) / (n + 1)``.
For calibration and test pairs that are exchangeable,

    ``E[ #misordered accepted / max(#accepted, 1) ] ≤ alpha``

over the calibration pairs and the test batch together (a false discovery rate): an
in-expectation guarantee, with no ``delta`` to pay, hence more pairs accepted than by
``"ltt"`` at the same ``alpha``. The threshold is decided per batch passed to
:meth:`PairSelector.predict` (it depends on the batch's confidences; one pair at a time
is a batch of one).

Why not plain conformal risk control. CRC (Angelopoulos et al., 2024) chooses the
smallest ``λ`` with ``n/(n+1) · R̂(λ) + 1/(n+1) ≤ alpha`` for a loss bounded by 1 and
monotone in ``λ``, and guarantees ``E[loss of a new pair] ≤ alpha``. The misorder rate
among accepted pairs is a ratio, not the mean of a per-pair loss, so CRC does not bound
it; its valid per-pair variant (loss 1 for a pair accepted *and* misordered, 0 for an
abstention) bounds ``P(accepted and misordered)``, a weaker promise than the one a user
asks for. Conformal selection bounds the ratio itself, in expectation, so it is the
in-expectation option here.

How MAPIE is used. ``method="ltt"`` is MAPIE's learn-then-test for precision
(:class:`mapie.risk_control.BinaryClassificationController` with ``risk="precision"``,
``target_level = 1 − alpha``, ``confidence_level = 1 − delta``): the same p-values, and
MAPIE's own multiple-testing procedures (:func:`mapie.risk_control.control_fwer`). The
controller itself is not called, for four reasons: (i) the confidence is any real score,
while the controller's candidates (``linspace(0, 0.99, 100)`` by default) assume a
probability, so the candidates are placed on the confidence's own scale here; (ii) the
controller computes the risk as ``1 − precision`` and its binomial p-value from
``ceil(n · risk)``, which floating-point error rounds up by one misordering for many
``(n, errors)``: valid, but it rejects less than the exact test, so here the p-values
come from integer counts; (iii) where no threshold is valid, the controller's ``predict``
raises ``ValueError``, while the selector accepts nothing and says so with a
:class:`SelectionWarning`; (iv) the counts for every candidate come from one sort here,
not one pass over the pairs per candidate. ``fwer_method="fixed_sequence"`` (the default)
tests the candidates from the strictest down and stops at the first that fails: it
keeps far more coverage than Bonferroni–Holm over 100 candidates and is valid for any
order fixed in advance. MAPIE has no conformal selection (Benjamini–Hochberg on
conformal p-values), so ``method="conformal"`` is implemented here in numpy.

A tie in the reward (``r_a == r_b``) is no ordering: count it as misordered in ``correct``
(the conservative reading) or drop it.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from skebrm._compat import Interval, StrOptions, _fit_context
from skebrm.exceptions import warn_user

__all__ = ["PairSelector", "SelectionWarning", "binomial_p_values", "selective_risk"]


class SelectionWarning(UserWarning):
    """The pair selector accepts no pair: no threshold meets the target on these pairs."""


def selective_risk(accepted, correct) -> tuple[float, float]:
    """The misorder rate among accepted pairs and the fraction accepted.

    Parameters
    ----------
    accepted : array-like of bool, shape (n_pairs,)
        Whether each pair's ordering is accepted.
    correct : array-like of bool, shape (n_pairs,)
        Whether each pair's predicted ordering is right.

    Returns
    -------
    risk : float
        ``#(accepted and misordered) / #accepted``; 0.0 when nothing is accepted.
    coverage : float
        ``#accepted / n_pairs``.

    Examples
    --------
    >>> from skebrm.selection import selective_risk
    >>> selective_risk([True, True, False, True], [True, False, False, True])
    (0.3333333333333333, 0.75)
    """
    acc = np.asarray(accepted, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    if acc.shape != ok.shape or acc.ndim != 1 or acc.size == 0:
        raise ValueError(
            "selective_risk: accepted and correct must be non-empty 1-D arrays of the same "
            f"length, got shapes {acc.shape} and {ok.shape}."
        )
    n_acc = int(acc.sum())
    risk = float(np.sum(acc & ~ok) / n_acc) if n_acc else 0.0
    return risk, n_acc / acc.size


def _check_confidence(confidence, caller: str) -> np.ndarray:
    c = np.asarray(confidence, dtype=np.float64)
    if c.ndim == 2 and c.shape[1] == 1:
        c = c[:, 0]
    if c.ndim != 1:
        raise ValueError(
            f"{caller}: confidence must have shape (n_pairs,), one score per pair, got shape "
            f"{c.shape}."
        )
    if not np.isfinite(c).all():
        raise ValueError(
            f"{caller}: confidence contains NaN or infinity; every score must be finite."
        )
    return c


def _check_correct(correct, n: int, caller: str) -> np.ndarray:
    y = np.asarray(correct)
    if y.shape != (n,):
        raise ValueError(
            f"{caller}: correct must have shape ({n},) to align with confidence, got shape "
            f"{y.shape}."
        )
    if y.dtype != bool:
        if not np.isin(y, [0, 1]).all():
            raise ValueError(
                f"{caller}: correct must be booleans or 0/1 (1: the predicted ordering is "
                f"right), got values {np.unique(y)[:5]!r}."
            )
        y = y.astype(bool)
    return y


def binomial_p_values(n_wrong, n_accepted, alpha: float) -> np.ndarray:
    """Exact p-values of ``H: misorder rate > alpha`` from accepted pairs' counts.

    ``P(Bin(n_accepted, alpha) ≤ n_wrong)``: given how many pairs a threshold accepts,
    their misorderings are independent with the threshold's misorder rate, so this is a
    valid p-value (1 where nothing is accepted). It is MAPIE's Hoeffding–Bentkus p-value
    for a binary loss (its Bentkus term, the smaller one), computed from integer counts.

    Parameters
    ----------
    n_wrong : array-like of int
        Misordered pairs among those each threshold accepts.
    n_accepted : array-like of int
        Pairs each threshold accepts, aligned with ``n_wrong``.
    alpha : float
        The misorder rate of the null hypothesis, in (0, 1).

    Returns
    -------
    ndarray
        The p-value of each threshold, with the shape of the broadcast counts.

    Examples
    --------
    >>> from skebrm.selection import binomial_p_values
    >>> binomial_p_values([0, 2], [22, 100], 0.1).round(4)  # 0 of 22 wrong; 2 of 100 wrong
    array([0.0985, 0.0019])
    """
    n_wrong = np.asarray(n_wrong)
    n_accepted = np.asarray(n_accepted)
    from scipy.stats import binom

    with np.errstate(invalid="ignore", divide="ignore"):
        p = binom.cdf(n_wrong, np.maximum(n_accepted, 1), alpha)
    return np.where(n_accepted > 0, p, 1.0)


def _accepted_counts(c: np.ndarray, y: np.ndarray, thresholds: np.ndarray):
    """How many pairs ``c >= t`` accepts, and how many of them are misordered, per ``t``."""
    order = np.argsort(c, kind="stable")
    c_sorted = c[order]
    wrong_above = np.r_[np.cumsum((~y[order])[::-1])[::-1], 0]  # misordered at index >= i
    first = np.searchsorted(c_sorted, thresholds, side="left")
    return c.size - first, wrong_above[first]


def _min_accepted(alpha: float, delta: float) -> int:
    """The fewest accepted pairs, all correct, whose binomial test rejects at level delta."""
    return max(1, math.ceil(math.log(delta) / math.log1p(-alpha) - 1e-12))


class PairSelector(BaseEstimator):
    """Accept a pair's ordering only where its confidence passes a calibrated threshold.

    Calibrated on held-out labelled pairs ``(confidence, correct)`` so that the misorder
    rate among accepted pairs is at most ``alpha``: with probability ``1 − delta``
    (``method="ltt"``) or in expectation (``method="conformal"``). See
    :mod:`skebrm.selection` for the exact statements.

    Parameters
    ----------
    alpha : float, default=0.1
        Target misorder rate among accepted pairs, in (0, 1).
    method : {"ltt", "conformal"}, default="ltt"
        Learn then test (one threshold; high-probability guarantee) or conformal selection
        (decided per test batch; in-expectation guarantee, more coverage).
    delta : float, default=0.1
        ``"ltt"`` only: the probability allowed for the guarantee to fail, in (0, 1).
    thresholds : int or array-like, default=100
        ``"ltt"`` only: the candidate thresholds. An int places that many at order
        statistics of the calibration confidences; an array gives them (on the
        confidence's scale), fixed in advance for the exact guarantee. With
        ``fwer_method="fixed_sequence"`` the strictest candidate must accept at least
        ``⌈log δ / log(1 − α)⌉`` calibration pairs (22 at α = δ = 0.1), or the sequence
        stops at once and nothing is accepted.
    fwer_method : {"fixed_sequence", "bonferroni_holm", "bonferroni"}, default="fixed_sequence"
        ``"ltt"`` only: MAPIE's correction for testing many thresholds. Fixed-sequence
        testing goes from the strictest threshold down and stops at the first that fails.

    Attributes
    ----------
    threshold_ : float
        ``"ltt"``: accept where ``confidence >= threshold_``; ``inf`` when no threshold
        is valid (nothing is accepted). ``"conformal"``: NaN (decided per batch).
    calibration_risk_ : float
        ``"ltt"``: the misorder rate of the accepted calibration pairs (NaN if none).
    calibration_coverage_ : float
        ``"ltt"``: the fraction of calibration pairs accepted.
    n_calibration_ : int

    Notes
    -----
    What to pass for the usual confidences, for pairs ``(a, b)`` whose preferred response
    is known:

    * the margin: ``confidence = |r_a − r_b|``, ``correct = (r_a > r_b) == a_preferred``;
    * a preference probability ``P = P(a ≻ b)`` (a Laplace head's, EBRM's grid one):
      ``confidence = max(P, 1 − P)``, ``correct = (P > 0.5) == a_preferred``;
    * an uncertainty ``s`` of the margin: ``confidence = 1 / s`` (or ``−s``), with the
      ordering's ``correct`` as for the margin.

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import PairSelector
    >>> rng = np.random.default_rng(0)
    >>> margin = rng.exponential(size=4000)  # |r_a - r_b| of each pair
    >>> correct = rng.random(4000) > 0.5 * np.exp(-2 * margin)  # surer when the margin is large
    >>> sel = PairSelector(alpha=0.1).fit(margin[:2000], correct[:2000])
    >>> accepted = sel.predict(margin[2000:])
    >>> risk, coverage = sel.risk_coverage(margin[2000:], correct[2000:])
    >>> bool(risk <= 0.1), bool(coverage > 0.5)
    (True, True)
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, 1, closed="neither")],
        "method": [StrOptions({"ltt", "conformal"})],
        "delta": [Interval(Real, 0, 1, closed="neither")],
        "thresholds": [Interval(Integral, 2, None, closed="left"), "array-like"],
        "fwer_method": [StrOptions({"fixed_sequence", "bonferroni_holm", "bonferroni"})],
    }

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        method: str = "ltt",
        delta: float = 0.1,
        thresholds=100,
        fwer_method: str = "fixed_sequence",
    ):
        self.alpha = alpha
        self.method = method
        self.delta = delta
        self.thresholds = thresholds
        self.fwer_method = fwer_method

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, confidence, correct):
        """Calibrate on held-out labelled pairs.

        Parameters
        ----------
        confidence : array-like of shape (n_pairs,)
            The confidence of each pair's predicted ordering (higher = surer).
        correct : array-like of bool or 0/1, shape (n_pairs,)
            Whether that ordering is right (the chosen response got the higher reward).

        Returns
        -------
        self : PairSelector
            The calibrated selector.
        """
        caller = f"{type(self).__name__}.fit"
        c = _check_confidence(confidence, caller)
        y = _check_correct(correct, c.shape[0], caller)
        if c.shape[0] < 1:
            raise ValueError(f"{caller}: needs at least one calibration pair, got 0.")
        self.n_calibration_ = int(c.shape[0])
        if self.method == "conformal":
            # the confidences of the misordered calibration pairs, sorted, are all it needs
            self.wrong_confidence_ = np.sort(c[~y])
            self.threshold_ = float("nan")
            self.calibration_risk_ = float("nan")
            self.calibration_coverage_ = float("nan")
            return self
        grid = self._candidate_thresholds(c, caller)
        self.candidate_thresholds_ = grid
        self.threshold_ = self._calibrate_ltt(c, y, grid)
        if not np.isfinite(self.threshold_):
            warn_user(
                f"{caller}: no threshold keeps the misorder rate among accepted pairs at or "
                f"below alpha={self.alpha!r} with confidence 1 - delta={1 - self.delta:.3g} on "
                f"these {c.shape[0]} calibration pairs; the selector accepts nothing. Use more "
                "calibration pairs, a better confidence, or a larger alpha or delta.",
                SelectionWarning,
            )
        acc = c >= self.threshold_
        self.calibration_coverage_ = float(acc.mean())
        self.calibration_risk_ = float(np.mean(~y[acc])) if acc.any() else float("nan")
        return self

    def _candidate_thresholds(self, c: np.ndarray, caller: str) -> np.ndarray:
        """Candidate thresholds, strictest first."""
        if isinstance(self.thresholds, Integral):
            order = np.sort(c)[::-1]  # descending: order[k - 1] accepts >= k pairs
            n = order.size
            # the strictest candidate accepts enough pairs to pass the test at all, and at
            # least 5 % of them: a first test on a handful of pairs stops a fixed sequence
            # on noise
            m_min = min(max(_min_accepted(float(self.alpha), float(self.delta)), n // 20), n)
            counts = np.unique(np.round(np.linspace(m_min, n, int(self.thresholds))).astype(int))
            grid = np.unique(order[counts - 1])
        else:
            grid = np.unique(np.asarray(self.thresholds, dtype=np.float64).ravel())
            if grid.size == 0 or not np.isfinite(grid).all():
                raise ValueError(
                    f"{caller}: thresholds must be an int or a non-empty array of finite "
                    f"thresholds, got {self.thresholds!r}."
                )
        return grid[::-1].copy()

    def _calibrate_ltt(self, c: np.ndarray, y: np.ndarray, grid: np.ndarray) -> float:
        try:
            from mapie.risk_control import control_fwer
        except ImportError as err:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                "PairSelector(method='ltt') needs MAPIE for its multiple-testing step. "
                'Install it with `pip install "skebrm[selection]"` (or `pip install mapie`), '
                "or use method='conformal', which does not."
            ) from err

        n_acc, n_wrong = _accepted_counts(c, y, grid)
        p_values = binomial_p_values(n_wrong, n_acc, float(self.alpha))
        valid = control_fwer(p_values, float(self.delta), fwer_method=self.fwer_method)
        if len(valid) == 0:
            return float("inf")
        # the most coverage among the valid thresholds: the lowest
        return float(grid[np.asarray(valid, dtype=int)].min())

    # ------------------------------------------------------------- inference
    def predict(self, confidence) -> np.ndarray:
        """Which pairs' orderings to accept (n_pairs,), bool.

        ``"ltt"``: ``confidence >= threshold_``, pair by pair. ``"conformal"``: decided
        for the batch passed (Benjamini–Hochberg over its conformal p-values); a
        :class:`SelectionWarning` says when it accepts none.

        Parameters
        ----------
        confidence : array-like of shape (n_pairs,)
            The confidence of each pair's predicted ordering (higher = surer).

        Returns
        -------
        ndarray of bool, shape (n_pairs,)
            True where the pair's ordering is accepted.
        """
        check_is_fitted(self)
        caller = f"{type(self).__name__}.predict"
        c = _check_confidence(confidence, caller)
        if self.method == "ltt":
            return c >= self.threshold_
        accepted = c >= self.batch_threshold(c)
        if c.size and not accepted.any():
            warn_user(
                f"{caller}: conformal selection accepts none of these {c.size} pairs at "
                f"alpha={self.alpha!r}: not enough calibration pairs are misordered rarely "
                "enough at any confidence. Use more calibration pairs, a better confidence, "
                "or a larger alpha.",
                SelectionWarning,
            )
        return accepted

    def conformal_p_values(self, confidence) -> np.ndarray:
        """``"conformal"``: the conformal p-value of each pair (n_pairs,).

        ``p_j = (1 + #{misordered calibration pairs with confidence ≥ c_j}) / (n + 1)``, the
        p-value of the null "pair ``j`` is misordered": small where few misordered
        calibration pairs are as confident.

        Parameters
        ----------
        confidence : array-like of shape (n_pairs,)
            The confidence of each pair's predicted ordering (higher = surer).

        Returns
        -------
        ndarray of shape (n_pairs,)
            The conformal p-value of each pair, in (0, 1].
        """
        check_is_fitted(self)
        self._require_conformal("conformal_p_values")
        c = _check_confidence(confidence, f"{type(self).__name__}.conformal_p_values")
        wrong = self.wrong_confidence_
        n_wrong_at_least = wrong.size - np.searchsorted(wrong, c, side="left")
        return (1.0 + n_wrong_at_least) / (self.n_calibration_ + 1.0)

    def batch_threshold(self, confidence) -> float:
        """``"conformal"``: the lowest confidence accepted in this batch (``inf`` if none).

        Benjamini–Hochberg at level ``alpha``: with the batch's p-values sorted,
        ``k = max{k : p_(k) ≤ alpha k / m}``; the ``k`` most confident pairs (and any tied
        with the ``k``-th) are accepted.

        Parameters
        ----------
        confidence : array-like of shape (n_pairs,)
            The confidence of each pair's predicted ordering (higher = surer).

        Returns
        -------
        float
            The lowest accepted confidence, or ``inf`` when the batch accepts none.
        """
        self._require_conformal("batch_threshold")
        c = _check_confidence(confidence, f"{type(self).__name__}.batch_threshold")
        if c.size == 0:
            return float("inf")
        order = np.sort(c)[::-1]
        p_sorted = self.conformal_p_values(order)  # non-decreasing as confidence falls
        m = c.size
        passed = np.flatnonzero(p_sorted <= self.alpha * np.arange(1, m + 1) / m)
        if passed.size == 0:
            return float("inf")
        return float(order[passed[-1]])

    def _require_conformal(self, name: str) -> None:
        check_is_fitted(self)
        if self.method != "conformal":
            raise ValueError(
                f"{type(self).__name__}.{name} is defined for method='conformal', got "
                f"method={self.method!r}; for 'ltt' the threshold is threshold_."
            )

    def risk_coverage(self, confidence, correct) -> tuple[float, float]:
        """The realised misorder rate among accepted pairs and the coverage on labelled pairs.

        Parameters
        ----------
        confidence : array-like of shape (n_pairs,)
            The confidence of each pair's predicted ordering (higher = surer).
        correct : array-like of bool or 0/1, shape (n_pairs,)
            Whether each pair's predicted ordering is right.

        Returns
        -------
        risk, coverage : float
            See :func:`selective_risk`.
        """
        accepted = self.predict(confidence)
        y = _check_correct(correct, accepted.shape[0], f"{type(self).__name__}.risk_coverage")
        return selective_risk(accepted, y)
