"""The guard: does the served reward rank pairs better than the base reward?

The guard compares, pair by pair, the credit of the reward that is served with the credit
of the base reward on preference pairs it is given (held out from training, or passed to
``fit_guard``). A pair's credit is 1 when the chosen response gets the higher reward, ½ on
a tie and 0 otherwise, so the per-pair difference ``d`` is one of −1, −½, 0, ½, 1.

The test is exact: under the null hypothesis "refinement does not rank better" the two
rewards are exchangeable within each pair, so each non-zero ``d`` is as likely to be
positive as negative. The p-value is ``P(Σ d* ≥ Σ d)`` over the ``2^m`` sign flips of the
``m`` discordant pairs (``d ≠ 0``), computed exactly from two binomial laws (one for the
pairs with ``|d| = 1``, one for those with ``|d| = ½``). Without ties it is the one-sided
exact McNemar (sign) test, ``P(Binom(b + c, ½) ≥ b)`` with ``b`` the pairs the served
reward gets right and the base reward wrong, ``c`` the reverse. Refinement helps when
``p ≤ 1 − guard_confidence``.

The guard's power is reported as the smallest gain in pairwise accuracy (percentage
points) that the test detects with probability :data:`POWER` at its level, for the
number of guard pairs and the discordance rate observed (assumptions: the discordant
pairs are a fixed share ``m / n`` of the pairs, without ties, each independently in the
served reward's favour with probability π, so the gain is ``(2π − 1) · m / n``).
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy import stats

from skebrm._pairs import check_pairs
from skebrm._params import check_rewards
from skebrm.exceptions import GuardPowerWarning, RefinementWarning, warn_user

__all__ = [
    "MAX_UNDETECTED_GAIN",
    "POWER",
    "GuardMixin",
    "decide",
    "min_detectable_gain",
    "pair_credit",
    "refinement_message",
    "sign_flip_p_value",
]

#: the power at which :func:`min_detectable_gain` is stated
POWER = 0.8
#: a guard that cannot detect a gain of this many accuracy points warns
MAX_UNDETECTED_GAIN = 2.0


def pair_credit(r: np.ndarray) -> np.ndarray:
    """Per-pair credit (1 right, ½ tie, 0 wrong) of rewards laid out chosen, rejected, ..."""
    d = np.asarray(r)[0::2] - np.asarray(r)[1::2]
    return (d > 0) + 0.5 * (d == 0)


def sign_flip_p_value(diff) -> float:
    """Exact one-sided p-value of ``Σ diff`` under random signs (``diff`` in {0, ±½, ±1}).

    ``P(K_f·2 + K_h ≥ 2 f⁺ + h⁺)`` with ``K_f ~ Binom(n_f, ½)`` and ``K_h ~ Binom(n_h, ½)``
    independent: ``n_f`` pairs with ``|d| = 1`` (``f⁺`` of them positive), ``n_h`` with
    ``|d| = ½`` (``h⁺`` positive). 1.0 when no pair is discordant.
    """
    d = np.asarray(diff, dtype=np.float64)
    full, half = np.abs(d) == 1.0, np.abs(d) == 0.5
    if not np.all(full | half | (d == 0)):
        raise ValueError(f"sign_flip_p_value: differences must lie in {{0, ±0.5, ±1}}, got {d!r}.")
    n_f, n_h = int(full.sum()), int(half.sum())
    target = 2 * int((d == 1.0).sum()) + int((d == 0.5).sum())
    if target == 0:
        return 1.0  # P(U >= 0)
    k = np.arange(n_f + 1)
    # P(K_h ≥ target − 2k) = sf(target − 2k − 1)
    p = np.sum(stats.binom.pmf(k, n_f, 0.5) * stats.binom.sf(target - 2 * k - 1, n_h, 0.5))
    return float(min(1.0, p))


def min_detectable_gain(
    n_pairs: int, n_discordant: int, alpha: float, power: float = POWER
) -> float | None:
    """Smallest accuracy gain (points) the exact test detects with ``power`` at ``alpha``.

    ``n_discordant`` of the ``n_pairs`` guard pairs are discordant, each in the served
    reward's favour with probability π; the test rejects when at least ``k*`` of them
    are, ``k*`` the smallest count with ``P(Binom(m, ½) ≥ k*) ≤ alpha``. The gain is
    ``100 · (2π − 1) · m / n`` at the π where ``P(Binom(m, π) ≥ k*) = power``. ``None``
    when no gain is detectable (``k* > m``, e.g. no discordant pair).
    """
    m, n = int(n_discordant), int(n_pairs)
    if m == 0 or n == 0:
        return None
    counts = np.arange(m + 2)
    tail = stats.binom.sf(counts - 1, m, 0.5)  # P(Binom(m, ½) ≥ k)
    k_star = int(counts[np.argmax(tail <= alpha)]) if np.any(tail <= alpha) else m + 1
    if k_star > m:
        return None
    lo, hi = 0.5, 1.0
    for _ in range(60):  # bisection: power is increasing in π
        mid = 0.5 * (lo + hi)
        if stats.binom.sf(k_star - 1, m, mid) >= power:
            hi = mid
        else:
            lo = mid
    return float(100.0 * (2.0 * hi - 1.0) * m / n)


def decide(
    served: np.ndarray,
    base: np.ndarray,
    *,
    confidence: float,
    penalty: float = 0.0,
    source: str = "validation",
) -> dict:
    """The guard's scores for rewards laid out chosen, rejected, ..., and ``helps``.

    ``served`` is the reward that would be served (``refined − penalty · std``), ``base``
    the base reward of the same rows.
    """
    served_ok, base_ok = pair_credit(served), pair_credit(base)
    diff = served_ok - base_ok
    n_pairs = int(diff.size)
    n_discordant = int(np.count_nonzero(diff))
    alpha = 1.0 - float(confidence)
    p_value = sign_flip_p_value(diff)
    return {
        "refined_accuracy": float(served_ok.mean()),
        "base_accuracy": float(base_ok.mean()),
        "p_value": p_value,
        "n_pairs": n_pairs,
        "n_discordant": n_discordant,
        "n_better": int(np.count_nonzero(diff > 0)),
        "n_worse": int(np.count_nonzero(diff < 0)),
        "min_detectable_gain": min_detectable_gain(n_pairs, n_discordant, alpha),
        "penalty": float(penalty),
        "source": source,
        "helps": bool(p_value <= alpha),
    }


def _where(scores: dict) -> str:
    user = scores.get("source") == "fit_guard"
    return "pairs given to fit_guard" if user else "held-out guard pairs"


def refinement_message(owner: str, scores: dict, guard: str, confidence: float) -> str:
    """The ``RefinementWarning`` text for a guard that rejected refinement."""
    s = scores
    return (
        f"{owner}: on {s['n_pairs']} {_where(s)} the refined rewards rank "
        f"{s['refined_accuracy']:.3f} of pairs correctly against the base reward model's "
        f"{s['base_accuracy']:.3f} ({s['n_better']} pairs better, {s['n_worse']} worse; "
        f"exact one-sided sign test p = {s['p_value']:.3g}, above 1 - guard_confidence = "
        f"{1 - confidence:.3g}); refinement does not help here"
        + (
            "; predict returns the base reward (guard='base')."
            if guard == "base"
            else " (set guard='base' to make predict return the base reward)."
        )
    )


def power_message(owner: str, scores: dict, confidence: float) -> str | None:
    """The ``GuardPowerWarning`` text when the guard cannot see a gain of
    :data:`MAX_UNDETECTED_GAIN` points, else ``None``."""
    gain = scores.get("min_detectable_gain")
    if gain is not None and gain <= MAX_UNDETECTED_GAIN:
        return None
    s = scores
    can = (
        "cannot detect any gain"
        if gain is None
        else f"detects only gains of {gain:.1f} accuracy points or more"
    )
    return (
        f"{owner}: the guard decided on {s['n_pairs']} {_where(s)} ({s['n_discordant']} "
        f"discordant) {can} with {POWER:.0%} power at guard_confidence={confidence}; "
        f"gains below {MAX_UNDETECTED_GAIN:g} points go unseen. Decide the guard on more "
        "pairs (a larger validation_fraction, or more pairs given to fit_guard)."
    )


class GuardMixin:
    """The estimator's guard: :meth:`fit_guard` and the decision ``fit`` takes on its
    guard half. Mixed into :class:`~skebrm.EnergyRewardCalibrator`, which provides
    ``posterior_`` and the ``guard`` parameters (``_check_X`` and ``_settings`` come with
    :class:`~skebrm._posterior.PosteriorMethodsMixin`)."""

    def _guard_scores(self, post, X, y, g, penalty: float, source: str) -> dict:
        """The guard's scores on the rows ``g`` (laid out chosen, rejected, ...): the
        served reward ``refine − penalty · std`` against the base reward ``y``."""
        settings = self._settings()
        served = post.refine(X[g], y[g], settings)
        if penalty > 0:
            served = served - penalty * post.distribution(X[g], settings, mode=False).std()
        return decide(
            served, y[g], confidence=self.guard_confidence, penalty=penalty, source=source
        )

    def _fitted_guard(self, post, X, y, g) -> dict:
        """``refinement_helps_`` and ``guard_scores_`` of a fit: decided on its guard rows
        ``g`` (the reward served at penalty 0), or both ``None`` when it has none."""
        if g is None:
            return {"refinement_helps_": None, "guard_scores_": None}
        scores = self._guard_scores(post, X, y, g, 0.0, "validation")
        return {"refinement_helps_": scores.pop("helps"), "guard_scores_": scores}

    def _serves_base(self) -> bool:
        """Whether the guard rejected refinement with ``guard="base"``: the base reward is
        then served (without the penalty)."""
        return self.guard == "base" and getattr(self, "refinement_helps_", None) is False

    def fit_guard(self, X, y, *, pair_id, chosen, penalty: float = 0.0):
        """Decide the guard on pairs you supply, e.g. from the distribution to be served.

        The guard that ``validation_fraction`` fits sees held-out pairs of the training
        distribution only, so it cannot see a loss on another one. This re-decides it on
        the given pairs: the pairwise accuracy (ties ½) of the served reward, ``predict(X,
        base_reward=y) − penalty · std``, against that of ``y``. The network is not changed
        and no ``validation_fraction`` is needed.

        The test is exact: with ``d`` the per-pair difference of credit (1 right, ½ tie,
        0 wrong) between the served and the base reward, the null hypothesis "refinement
        does not rank better" makes every non-zero ``d`` equally likely positive or
        negative, and ``p_value = P(Σ d* ≥ Σ d)`` over those sign flips. Without ties this
        is the one-sided exact McNemar (sign) test ``P(Binom(b + c, ½) ≥ b)``, ``b`` the
        pairs the served reward gets right and the base reward wrong, ``c`` the reverse.
        Refinement helps when ``p_value ≤ 1 − guard_confidence``.

        ``guard_scores_["min_detectable_gain"]`` is the guard's power: the smallest gain
        in pairwise accuracy (points) that the test detects with 80 % power at its level,
        for the number of pairs and the discordance rate observed (``None``: no gain is
        detectable); above 2 points a :class:`~skebrm.exceptions.GuardPowerWarning` says
        so. ``refinement_helps_`` and ``guard_scores_`` are replaced; with
        ``guard="base"`` and a rejection, :meth:`predict` returns the base reward, and a
        bundle serves the base reward without the penalty. A ``RefinementWarning`` is
        raised when refinement does not help (unless ``guard="off"``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of both responses of every guard pair (not the training rows).
        y : array-like of shape (n_samples,)
            The frozen reward model's reward of each row.
        pair_id, chosen : array-like of shape (n_samples,)
            Pair metadata, as in :meth:`fit`.
        penalty : float, default=0.0
            λ of the served reward ``refined − λ · std`` (a bundle passes its own).

        Returns
        -------
        self : EnergyRewardCalibrator
            The estimator, with its guard re-decided.
        """
        caller = f"{type(self).__name__}.fit_guard"
        X = self._check_X(X, caller)
        y = check_rewards(y, X.shape[0], "y", caller)
        if not isinstance(penalty, Real) or not np.isfinite(penalty) or penalty < 0:
            raise ValueError(f"{caller}: penalty must be a finite float >= 0, got {penalty!r}.")
        idx_c, idx_r = check_pairs(pair_id, chosen, X.shape[0], caller=caller)
        rows = np.column_stack([idx_c, idx_r]).reshape(-1)
        scores = self._guard_scores(self.posterior_, X, y, rows, float(penalty), "fit_guard")
        self.refinement_helps_ = scores.pop("helps")
        self.guard_scores_ = scores
        self._warn_guard()
        return self

    def _warn_guard(self) -> None:
        if self.guard == "off":
            return
        s, confidence = self.guard_scores_, self.guard_confidence
        if self.refinement_helps_ is False:
            message = refinement_message(type(self).__name__, s, self.guard, confidence)
            warn_user(message, RefinementWarning)
        power = power_message(type(self).__name__, s, confidence)
        if power is not None:
            warn_user(power, GuardPowerWarning)
