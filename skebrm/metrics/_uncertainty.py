"""Paired bootstrap, misorder and disagreement AUROC, abstention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.utils import check_random_state

from skebrm.metrics._checks import _as_1d, _same_length


class BootstrapResult(NamedTuple):
    """Difference of two paired means with its percentile bootstrap interval.

    Parameters
    ----------
    difference : float
        Mean of ``correct_a − correct_b`` over the pairs.
    ci_low, ci_high : float
        Ends of the percentile bootstrap interval of the difference.
    std_error : float
        Standard deviation of the bootstrap means (0.0 with one resample).
    n_resamples : int
        Bootstrap resamples drawn.
    confidence : float
        Two-sided coverage of the interval.
    """

    difference: float
    ci_low: float
    ci_high: float
    std_error: float
    n_resamples: int
    confidence: float


def paired_bootstrap(
    correct_a,
    correct_b,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state=None,
) -> BootstrapResult:
    """Mean of ``correct_a − correct_b`` with a paired percentile bootstrap interval.

    Pairs are resampled with replacement, keeping each pair's two scores together, so the
    interval accounts for the correlation between two methods scored on the same pairs.

    Parameters
    ----------
    correct_a, correct_b : array-like of shape (n_pairs,)
        Per-pair scores of two methods on the same pairs (for example
        :func:`pairwise_correct`).
    n_resamples : int, default=2000
        Bootstrap resamples of the pairs.
    confidence : float, default=0.95
        Two-sided coverage of the interval, in (0, 1).
    random_state : int, RandomState instance or None
        Seeds the resampling.

    Returns
    -------
    BootstrapResult
        The mean difference, its interval and standard error.

    Examples
    --------
    >>> res = paired_bootstrap([1, 1, 1, 0], [1, 0, 0, 0], random_state=0)
    >>> res.difference
    0.5
    """
    a = _as_1d("correct_a", correct_a, caller="paired_bootstrap")
    b = _as_1d("correct_b", correct_b, caller="paired_bootstrap")
    n = _same_length("paired_bootstrap", correct_a=a, correct_b=b)
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(
            f"paired_bootstrap: n_resamples must be a positive int, got {n_resamples!r}."
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_bootstrap: confidence must be in (0, 1), got {confidence!r}.")
    rng = check_random_state(random_state)
    diff = a - b
    stats = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.randint(0, n, size=(stop - start, n))
        stats[start:stop] = diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapResult(
        difference=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        std_error=float(stats.std(ddof=1)) if n_resamples > 1 else 0.0,
        n_resamples=int(n_resamples),
        confidence=float(confidence),
    )


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney AUROC with ties counted one half; NaN when a class is empty."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    ranks = np.empty(score.size)
    # average ranks over tied blocks
    _, start, counts = np.unique(sorted_score, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def misorder_auroc(uncertainty, reward_chosen, reward_rejected) -> float:
    """AUROC of pair uncertainty for predicting that a reward model misorders the pair.

    A pair is *misordered* when ``reward_chosen <= reward_rejected`` (a tie is not a
    correct order). An AUROC of 0.5 means the uncertainty says nothing about errors; 1
    means every misordered pair is more uncertain than every correctly ordered one. Ties
    in uncertainty count one half. Returns NaN when no pair, or every pair, is
    misordered (the AUROC is then undefined).

    Parameters
    ----------
    uncertainty : array-like of shape (n_pairs,)
        Uncertainty of each pair; higher is more uncertain.
    reward_chosen, reward_rejected : array-like of shape (n_pairs,)
        Rewards of the model whose errors are predicted (usually the base RM).

    Returns
    -------
    float
        The AUROC, in [0, 1], or NaN.

    Examples
    --------
    >>> misorder_auroc([0.1, 0.9, 0.2, 0.8], [1, 0, 1, 0], [0, 1, 0, 1])
    1.0
    """
    u = _as_1d("uncertainty", uncertainty, caller="misorder_auroc")
    rc = _as_1d("reward_chosen", reward_chosen, caller="misorder_auroc")
    rr = _as_1d("reward_rejected", reward_rejected, caller="misorder_auroc")
    _same_length("misorder_auroc", uncertainty=u, reward_chosen=rc, reward_rejected=rr)
    return _auroc(u, rc <= rr)


def margin_uncertainty(reward_chosen, reward_rejected) -> np.ndarray:
    """The base margin as a pair uncertainty: ``−|r_c − r_r|`` (a small margin is unsure).

    The uncertainty any reward model has for free; an uncertainty method is worth its
    cost only where it predicts errors (:func:`misorder_auroc`) better than this.

    Parameters
    ----------
    reward_chosen, reward_rejected : array-like of shape (n_pairs,)
        The reward of the chosen and of the rejected response of each pair.

    Returns
    -------
    ndarray of shape (n_pairs,)
        Minus the absolute reward margin of each pair.

    Examples
    --------
    >>> margin_uncertainty([2.0, 0.5], [1.5, 3.0])
    array([-0.5, -2.5])
    """
    rc = _as_1d("reward_chosen", reward_chosen, caller="margin_uncertainty")
    rr = _as_1d("reward_rejected", reward_rejected, caller="margin_uncertainty")
    _same_length("margin_uncertainty", reward_chosen=rc, reward_rejected=rr)
    return -np.abs(rc - rr)


def disagreement_auroc(uncertainty, disagreement) -> float:
    """AUROC of pair uncertainty for predicting that the annotators disagreed on a pair.

    ``disagreement`` is 1 where the annotators' votes were not unanimous, 0 where they
    were, and NaN where the pair has no votes (such pairs are left out). Ties in
    uncertainty count one half. NaN when no scored pair, or every one, has disagreement.

    Parameters
    ----------
    uncertainty : array-like of shape (n_pairs,)
        Uncertainty of each pair; higher is more uncertain.
    disagreement : array-like of shape (n_pairs,)
        0 / 1 / NaN per pair (see :attr:`skebrm.experiments.data.EmbeddedPairs.disagreement`).

    Returns
    -------
    float
        The AUROC over the pairs with votes, in [0, 1], or NaN.

    Examples
    --------
    >>> disagreement_auroc([0.1, 0.9, 0.5, 0.3], [0, 1, float("nan"), 0])
    1.0
    """
    u = _as_1d("uncertainty", uncertainty, caller="disagreement_auroc")
    d = np.asarray(disagreement, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"disagreement_auroc: disagreement must be 1-D, got shape {d.shape}.")
    _same_length("disagreement_auroc", uncertainty=u, disagreement=d)
    known = ~np.isnan(d)
    if np.any((d[known] != 0) & (d[known] != 1)):
        raise ValueError(
            "disagreement_auroc: disagreement must be 0, 1 or NaN, got values "
            f"{np.unique(d[known])[:5].tolist()}."
        )
    return _auroc(u[known], d[known] == 1)


def abstention_accuracy(
    uncertainty, correct, fractions: Sequence[float] = (0.1, 0.2, 0.3)
) -> dict[float, float]:
    """Accuracy on the pairs kept after abstaining on the most uncertain ones.

    For each fraction ``f`` the ``round(f * n_pairs)`` most uncertain pairs are dropped
    (ties broken by position, later pairs first) and the mean of ``correct`` over the
    rest is returned.

    Parameters
    ----------
    uncertainty : array-like of shape (n_pairs,)
        Uncertainty of each pair; higher is more uncertain.
    correct : array-like of shape (n_pairs,)
        Per-pair credit, e.g. from :func:`pairwise_correct`.
    fractions : sequence of float in [0, 1), default=(0.1, 0.2, 0.3)
        Shares of the pairs to abstain on.

    Returns
    -------
    dict
        ``{fraction: accuracy}``.

    Examples
    --------
    >>> abstention_accuracy([0.1, 0.9, 0.2, 0.3], [1, 0, 1, 1], fractions=(0.0, 0.25))
    {0.0: 0.75, 0.25: 1.0}
    """
    u = _as_1d("uncertainty", uncertainty, caller="abstention_accuracy")
    c = _as_1d("correct", correct, caller="abstention_accuracy")
    n = _same_length("abstention_accuracy", uncertainty=u, correct=c)
    order = np.argsort(u, kind="stable")  # most certain first
    out: dict[float, float] = {}
    for f in fractions:
        if not 0.0 <= f < 1.0:
            raise ValueError(f"abstention_accuracy: every fraction must lie in [0, 1), got {f!r}.")
        n_keep = n - round(f * n)
        if n_keep < 1:
            raise ValueError(
                f"abstention_accuracy: fraction {f!r} abstains on all {n} pairs; use a "
                "smaller fraction or more pairs."
            )
        out[float(f)] = float(c[order[:n_keep]].mean())
    return out
