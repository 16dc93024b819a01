"""Inference on ``p(r | e) ∝ exp f(e, r)``: mode finding and exact-on-grid statistics.

All functions work in the calibrator's internal (standardised) reward units.

Grid convention
---------------
A grid of ``G`` cells of width ``Δ`` covers ``[low, high]``; ``centres[i] = low + (i + ½)Δ``.
``p(r | e)`` is normalised on the grid: the probability of cell ``i`` is
``softmax(f(e, centres))_i`` and the density is taken uniform inside a cell, so masses
sum to exactly 1, the mean is ``Σ p_i c_i`` and the variance adds the within-cell
``Δ²/12``. Rewards outside ``[low, high]`` have density 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import jvp

__all__ = [
    "ascend",
    "grid_energies",
    "grid_log_density",
    "grid_mean_std",
    "grid_preference_probability",
    "grid_quantiles",
    "make_grid",
    "preference_probability_from_masses",
]


def make_grid(low: float, high: float, size: int) -> tuple[np.ndarray, float]:
    """Cell centres and width of a ``size``-cell grid over ``[low, high]``."""
    width = (high - low) / size
    return low + (np.arange(size) + 0.5) * width, width


def _energy_and_slope(net, h: torch.Tensor, r: torch.Tensor):
    """f(e, r) and ∂f/∂r for one candidate per row, by forward-mode differentiation.

    Uses the network's own ``energy_and_slope`` when it has one (both energy networks
    do, written out so value and tangent share each matrix product), else ``jvp``.
    """
    if hasattr(net, "energy_and_slope") and not net.training:
        return net.energy_and_slope(h, r)
    f, df = jvp(
        lambda rr: net.energy_from_embedded(h, rr.unsqueeze(1)).squeeze(1),
        (r,),
        (torch.ones_like(r),),
    )
    return f, df


@torch.no_grad()
def ascend(
    net,
    h: torch.Tensor,
    r0: torch.Tensor,
    *,
    max_steps: int = 50,
    step_size: float | torch.Tensor = 0.5,
    shrink: float = 0.2,
    tol: float = 0.0,
    return_path: bool = False,
):
    """Monotone gradient ascent of ``f(e, ·)`` from ``r0`` (accept/reject with backtracking).

    At each step every row proposes ``r + λ·∂f/∂r``; the proposal is accepted only if
    the energy rises, otherwise that row's step ``λ`` is multiplied by ``shrink``. This is
    the paper's inference (Gustafsson et al. 2020, Alg. 1), batched over rows; the energy
    never decreases along the path. Iteration stops after ``max_steps`` or once every
    row's proposed move is below ``tol``.

    Returns
    -------
    r : Tensor (B,)
    f : Tensor (B,)
        Energy at ``r``.
    path : Tensor (T + 1, B), only if ``return_path``
        Energy at the current point after each step.
    """
    r = r0.clone()
    f, g = _energy_and_slope(net, h, r)
    step = torch.as_tensor(step_size, dtype=r.dtype, device=r.device).expand_as(r).clone()
    path = [f.clone()] if return_path else None
    for _ in range(max_steps):
        move = step * g
        if tol > 0 and bool((move.abs() <= tol).all()):
            break
        cand = r + move
        f_new, g_new = _energy_and_slope(net, h, cand)
        accept = f_new > f
        r = torch.where(accept, cand, r)
        f = torch.where(accept, f_new, f)
        g = torch.where(accept, g_new, g)
        step = torch.where(accept, step, step * shrink)
        if return_path:
            path.append(f.clone())
    if return_path:
        return r, f, torch.stack(path)
    return r, f


@torch.no_grad()
def grid_energies(net, h: torch.Tensor, grid: torch.Tensor, *, chunk: int = 65536):
    """``f(e_i, grid_j)`` for all rows and grid points: (B, G), computed in row chunks.

    When the network splits into ``reward_features`` / ``energy_from_features`` (both
    energy networks do), the reward features of the grid, shared by every row, are
    computed once.
    """
    rows_per_chunk = max(1, chunk // max(1, grid.numel()))
    shared = None
    if hasattr(net, "reward_features") and hasattr(net, "energy_from_features"):
        shared = net.reward_features(grid.reshape(1, -1))
    out = []
    for start in range(0, h.shape[0], rows_per_chunk):
        hb = h[start : start + rows_per_chunk]
        if shared is not None:
            out.append(net.energy_from_features(hb, shared))
        else:
            out.append(net.energy_from_embedded(hb, grid.expand(hb.shape[0], -1)))
    return torch.cat(out) if out else h.new_zeros((0, grid.numel()))


def _log_masses(energies: np.ndarray) -> np.ndarray:
    e = np.asarray(energies, dtype=np.float64)
    m = e.max(axis=1, keepdims=True)
    return e - m - np.log(np.exp(e - m).sum(axis=1, keepdims=True))


def grid_log_density(energies: np.ndarray, width: float) -> np.ndarray:
    """Log-density at the cell centres: ``log softmax(f) − log Δ``. (B, G)."""
    return _log_masses(energies) - np.log(width)


def grid_mean_std(energies: np.ndarray, centres: np.ndarray, width: float):
    """Mean and standard deviation of the grid-normalised distribution of each row."""
    p = np.exp(_log_masses(energies))
    mean = p @ centres
    second = p @ (centres**2) + width**2 / 12.0
    var = np.maximum(second - mean**2, 0.0)
    return mean, np.sqrt(var)


def grid_quantiles(energies: np.ndarray, centres: np.ndarray, width: float, q) -> np.ndarray:
    """Quantiles of the piecewise-uniform distribution on the grid: (B, len(q)).

    The CDF is piecewise linear between cell edges, so quantiles are exact for the
    grid-normalised distribution and strictly increasing in ``q`` wherever mass is > 0.
    """
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    p = np.exp(_log_masses(energies))
    cdf = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p, axis=1)], axis=1)
    cdf[:, -1] = 1.0
    n, size = p.shape
    rows = np.arange(n)
    out = np.empty((n, q.size))
    for k, qk in enumerate(q):
        j = np.minimum(np.sum(cdf[:, 1:] < qk, axis=1), size - 1)
        pj = p[rows, j]
        frac = np.divide(qk - cdf[rows, j], pj, out=np.zeros(n), where=pj > 0)
        out[:, k] = centres[j] - width / 2 + np.clip(frac, 0.0, 1.0) * width
    return out


def preference_probability_from_masses(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """P(r_a > r_b) + ½·P(r_a = r_b) for independent discrete masses on one grid (..., G)."""
    cdf_b_below = np.cumsum(pb, axis=-1) - pb
    return np.sum(pa * (cdf_b_below + 0.5 * pb), axis=-1)


def grid_preference_probability(energies_a: np.ndarray, energies_b: np.ndarray) -> np.ndarray:
    """P(r_a > r_b) for independent grid distributions, ties (same cell) counting ½."""
    return preference_probability_from_masses(
        np.exp(_log_masses(energies_a)), np.exp(_log_masses(energies_b))
    )
