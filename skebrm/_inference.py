"""Inference on ``p(r | e) ∝ exp f(e, r)``: energies on the grid and mode finding.

All functions work in the calibrator's internal (standardised) reward units, on torch
tensors. A grid of ``G`` cells of width ``Δ`` covers ``[low, high]``;
``centres[i] = low + (i + ½)Δ``. What the grid energies mean as a distribution (cells
uniform inside, masses ``softmax(f)``) is :class:`skebrm.GridDistribution`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import jvp

from skebrm.energy import Workspace

__all__ = [
    "ROW_TILE",
    "ascend",
    "grid_energies",
    "grid_newton_steps",
    "make_grid",
    "pad_rows",
    "tile_rows",
]


# Every matrix product at inference sees a multiple of this many rows (padding with zero
# rows): the CPU BLAS kernels then give each row bit for bit the same result whatever the
# batch size or the row's position (checked for MKL in float32 and float64 with tiles of
# 8, 16 and 32 rows; rows in a partial tile are computed by other code and round
# differently), so refined rewards do not depend on how rows are batched, even in
# float32. Small, because a lone row pays for a whole tile.
ROW_TILE = 8


def pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` with zero rows appended up to ``n`` rows (``t`` itself if it has ``n``)."""
    if t.shape[0] == n:
        return t
    out = t.new_zeros((n, *t.shape[1:]))
    out[: t.shape[0]] = t
    return out


def tile_rows(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ROW_TILE`."""
    return -(-n // ROW_TILE) * ROW_TILE


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
    bounds: tuple[float, float] | None = None,
    return_path: bool = False,
):
    """Monotone gradient ascent of ``f(e, ·)`` from ``r0`` (accept/reject with backtracking).

    At each step every row proposes ``r + λ·∂f/∂r``; the proposal is accepted only if
    the energy rises, otherwise that row's step ``λ`` is multiplied by ``shrink``. This is
    the paper's inference (Gustafsson et al. 2020, Alg. 1), batched over rows; the energy
    never decreases along the path. A row stops for good once its proposed move is at
    most ``tol`` (with ``tol = 0``: once the move is exactly 0, after which it could not
    change anyway), so each row's result is independent of the other rows; iteration
    ends after ``max_steps`` or when every row has stopped. With ``bounds = (lo, hi)``
    the start and every proposal are clipped to ``[lo, hi]`` (the calibrator keeps modes on
    its grid), so the result lies in the bounds.

    Returns
    -------
    r : Tensor (B,)
    f : Tensor (B,)
        Energy at ``r``.
    path : Tensor (T + 1, B), only if ``return_path``
        Energy at the current point after each step.
    """
    r = r0.clone() if bounds is None else r0.clamp(bounds[0], bounds[1])
    f, g = _energy_and_slope(net, h, r)
    step = torch.as_tensor(step_size, dtype=r.dtype, device=r.device).expand_as(r).clone()
    active = torch.ones_like(r, dtype=torch.bool)
    path = [f.clone()] if return_path else None
    for _ in range(max_steps):
        move = step * g
        active &= move.abs() > tol
        if not bool(active.any()):
            if return_path:
                path.append(f.clone())
            break
        cand = r + move
        if bounds is not None:
            cand = cand.clamp(bounds[0], bounds[1])
            active &= cand != r  # pinned against a bound: nothing left to try
        cand = torch.where(active, cand, r)
        f_new, g_new = _energy_and_slope(net, h, cand)
        accept = active & (f_new > f)
        r = torch.where(accept, cand, r)
        f = torch.where(accept, f_new, f)
        g = torch.where(accept, g_new, g)
        step = torch.where(accept, step, step * shrink)
        if return_path:
            path.append(f.clone())
    if return_path:
        return r, f, torch.stack(path)
    return r, f


def grid_newton_steps(energies: torch.Tensor, width: float) -> torch.Tensor:
    """Per-row ascent step ``1 / |f''|`` at each row's best grid point, from the grid.

    ``f''`` is the second difference of the grid energies around the argmax; where it is
    not negative, or the best point is at an end of the grid, the step is the cell
    width. With this step one gradient step lands on the vertex of the local quadratic
    model, so an ascent started at the best grid point converges in a few steps instead
    of creeping at the cell width.
    """
    j = energies.argmax(dim=1, keepdim=True)
    size = energies.shape[1]
    lo = energies.gather(1, (j - 1).clamp(min=0))
    hi = energies.gather(1, (j + 1).clamp(max=size - 1))
    mid = energies.gather(1, j)
    curv = ((lo - 2 * mid + hi) / (width * width)).squeeze(1)
    inner = ((j > 0) & (j < size - 1)).squeeze(1)
    newton = inner & (curv < 0)
    return torch.where(newton, 1.0 / (-curv).clamp(min=1e-30), torch.full_like(curv, width))


@torch.no_grad()
def grid_energies(net, h: torch.Tensor, grid: torch.Tensor, *, chunk: int = 1 << 22):
    """``f(e_i, grid_j)`` for all rows and grid points: (B, G), computed in row chunks.

    A chunk's widest activation (rows, G, ``net.candidate_width``) holds about ``chunk``
    numbers, in buffers reused by every chunk. When the network splits into
    ``reward_features`` / ``energy_from_features(h, u, workspace=...)`` (both energy
    networks do), the reward features of the grid, shared by every row, are computed once.
    """
    size = grid.numel()
    # pad the grid to whole row tiles (see ROW_TILE): every chunk's products then have a
    # multiple of ROW_TILE rows
    grid = pad_rows(grid.reshape(-1), tile_rows(size)) if size else grid.reshape(-1)
    if grid.numel() > size:
        grid[size:] = grid[size - 1]
    width = int(getattr(net, "candidate_width", 1))
    rows_per_chunk = max(1, chunk // max(1, grid.numel() * width))
    shared = None
    if hasattr(net, "reward_features") and hasattr(net, "energy_from_features"):
        shared = net.reward_features(grid.reshape(1, -1))
    workspace = Workspace()
    out = h.new_empty((h.shape[0], grid.numel()))
    for start in range(0, h.shape[0], rows_per_chunk):
        hb = h[start : start + rows_per_chunk]
        if shared is not None:
            f = net.energy_from_features(hb, shared, workspace=workspace)
        else:
            f = net.energy_from_embedded(hb, grid.expand(hb.shape[0], -1))
        out[start : start + hb.shape[0]] = f
    return out[:, :size]
