"""Calibration of preference probabilities; P(a > b) for densities on a grid."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from skebrm.distribution import preference_probability_from_masses
from skebrm.metrics._checks import _as_1d, _same_length


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of predicted probabilities against observed frequencies.

    Empty bins hold NaN in ``mean_predicted`` and ``fraction_positive`` and 0 in ``count``.

    Parameters
    ----------
    bin_edges : ndarray of shape (n_bins + 1,)
        Edges of the bins on [0, 1].
    mean_predicted : ndarray of shape (n_bins,)
        Mean predicted probability in each bin.
    fraction_positive : ndarray of shape (n_bins,)
        Share of positive outcomes in each bin.
    count : ndarray of shape (n_bins,)
        Predictions in each bin.
    """

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray
    count: np.ndarray


def _check_prob_outcome(prob, outcome, caller: str) -> tuple[np.ndarray, np.ndarray]:
    p = _as_1d("prob", prob, caller=caller)
    y = _as_1d("outcome", outcome, caller=caller)
    _same_length(caller, prob=p, outcome=y)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"{caller}: prob must lie in [0, 1], got range [{p.min()}, {p.max()}].")
    if np.any((y != 0) & (y != 1)):
        raise ValueError(f"{caller}: outcome must be 0/1, got values {np.unique(y)[:5]}.")
    return p, y


def reliability_curve(prob, outcome, *, n_bins: int = 10) -> ReliabilityCurve:
    """Bin predicted probabilities into ``n_bins`` equal-width bins on [0, 1].

    Bin ``k`` holds ``k/n_bins <= p < (k+1)/n_bins``; ``p == 1`` falls in the last bin.

    Parameters
    ----------
    prob : array-like of shape (n,)
        Predicted probabilities, in [0, 1].
    outcome : array-like of shape (n,)
        Observed outcomes, 0 or 1.
    n_bins : int, default=10
        Equal-width bins on [0, 1].

    Returns
    -------
    ReliabilityCurve
        The edges, mean prediction, positive fraction and count of each bin.
    """
    p, y = _check_prob_outcome(prob, outcome, "reliability_curve")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"reliability_curve: n_bins must be a positive int, got {n_bins!r}.")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac = np.bincount(idx, weights=y, minlength=n_bins) / count
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), mean_p, frac, count)


def expected_calibration_error(prob, outcome, *, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins.

    ``ECE = Σ_k (n_k / n) · |mean(outcome in bin k) − mean(prob in bin k)|``.

    Parameters
    ----------
    prob : array-like of shape (n,)
        Predicted probabilities, in [0, 1].
    outcome : array-like of shape (n,)
        Observed outcomes, 0 or 1.
    n_bins : int, default=10
        Equal-width bins on [0, 1].

    Returns
    -------
    float
        The expected calibration error, in [0, 1].

    Examples
    --------
    >>> round(expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 1]), 6)
    0.25
    """
    curve = reliability_curve(prob, outcome, n_bins=n_bins)
    filled = curve.count > 0
    gap = np.abs(curve.fraction_positive[filled] - curve.mean_predicted[filled])
    return float(np.sum(curve.count[filled] * gap) / curve.count.sum())


def preference_calibration_data(prob_chosen) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrise ``P(chosen ≻ rejected)`` into a sample with both outcomes.

    Returns ``(concat(p, 1 − p), concat(ones, zeros))``: each pair seen in both orders.
    A perfectly calibrated preference model has zero ECE on this sample.

    Parameters
    ----------
    prob_chosen : array-like of shape (n_pairs,)
        Predicted ``P(chosen ≻ rejected)`` of each pair.

    Returns
    -------
    prob : ndarray of shape (2 * n_pairs,)
        The probabilities ``p`` followed by ``1 − p``.
    outcome : ndarray of shape (2 * n_pairs,)
        Ones for the first half, zeros for the second.
    """
    p = _as_1d("prob_chosen", prob_chosen, caller="preference_calibration_data")
    return np.r_[p, 1.0 - p], np.r_[np.ones(p.size), np.zeros(p.size)]


def _grid_masses(log_density: np.ndarray, weights: np.ndarray) -> np.ndarray:
    finite_max = np.max(np.where(np.isneginf(log_density), -np.inf, log_density), axis=-1)
    if np.any(~np.isfinite(finite_max)):
        raise ValueError(
            "quadrature_preference_probability: every log density must have at least one "
            "finite value and no NaN or +inf."
        )
    mass = np.exp(log_density - finite_max[..., None]) * weights
    return mass / mass.sum(axis=-1, keepdims=True)


def quadrature_preference_probability(log_density_a, log_density_b, grid) -> np.ndarray:
    """``P(r_a > r_b) + ½·P(r_a = r_b)`` by quadrature, for densities evaluated at points.

    For densities known only at the points of a (possibly uneven) ``grid``, e.g. from
    another model. Each density becomes probability masses at the points (trapezoid
    weights, normalised, so unnormalised log densities are fine); ``r_a`` and ``r_b`` are
    then independent discrete variables and ties get half credit, which keeps
    ``P(a ≻ b) + P(b ≻ a) = 1``.

    This is not the calibrator's convention: a fitted
    :class:`~skebrm.EnergyRewardCalibrator` gives ``P(a ≻ b)`` exactly on its grid of
    cells, through :meth:`skebrm.GridDistribution.preference_probability` (as
    ``calibrator.preference_probability(X_a, X_b)``); use that for its distributions.

    Parameters
    ----------
    log_density_a, log_density_b : array-like of shape (n, G) or (G,)
        Log densities of the two rewards at ``grid`` (``-inf`` allowed).
    grid : array-like of shape (G,)
        Strictly increasing reward values shared by both densities.

    Returns
    -------
    ndarray of shape (n,), or float for 1-D inputs
        ``P(r_a > r_b) + ½·P(r_a = r_b)`` of each row.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.linspace(-8, 8, 1601)
    >>> ld = lambda mu: -0.5 * (g - mu) ** 2
    >>> round(float(quadrature_preference_probability(ld(1.0), ld(0.0), g)), 3)  # Φ(1/√2)
    0.76
    """
    grid = _as_1d("grid", grid, caller="quadrature_preference_probability")
    if grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError(
            f"quadrature_preference_probability: grid must be strictly increasing with at least 2 "
            f"points, got {grid.size} point(s)."
        )
    la = np.asarray(log_density_a, dtype=np.float64)
    lb = np.asarray(log_density_b, dtype=np.float64)
    if la.shape != lb.shape or la.shape[-1] != grid.size or la.ndim not in (1, 2):
        raise ValueError(
            "quadrature_preference_probability: log_density_a and log_density_b must both "
            "have shape "
            f"(n, {grid.size}) or ({grid.size},) to match grid, got {la.shape} and {lb.shape}."
        )
    step = np.diff(grid)
    weights = np.r_[step[0], step[:-1] + step[1:], step[-1]] / 2.0
    ma = _grid_masses(la, weights)
    mb = _grid_masses(lb, weights)
    prob = np.clip(preference_probability_from_masses(ma, mb), 0.0, 1.0)
    return float(prob) if prob.ndim == 0 else prob


def preference_probability(log_density_a, log_density_b, grid) -> np.ndarray:
    """Deprecated name of :func:`quadrature_preference_probability`.

    For a fitted calibrator use ``calibrator.preference_probability(X_a, X_b)`` (exact on
    its grid); this name will be removed.

    Parameters
    ----------
    log_density_a, log_density_b : array-like of shape (n, G) or (G,)
        Log densities of the two rewards at ``grid`` (``-inf`` allowed).
    grid : array-like of shape (G,)
        Strictly increasing reward values shared by both densities.

    Returns
    -------
    ndarray of shape (n,), or float for 1-D inputs
        What :func:`quadrature_preference_probability` returns.
    """
    import warnings

    warnings.warn(
        "skebrm.metrics.preference_probability is deprecated: it is the quadrature for "
        "densities evaluated at points, now quadrature_preference_probability. For a fitted "
        "EnergyRewardCalibrator use calibrator.preference_probability(X_a, X_b).",
        FutureWarning,
        stacklevel=2,
    )
    return quadrature_preference_probability(log_density_a, log_density_b, grid)
