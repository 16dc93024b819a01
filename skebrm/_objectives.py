"""Training objectives of the energy network, as batch plans.

An objective turns a batch of training rows into a :class:`BatchPlan`: the reward
candidates at which the network is evaluated for every row, and a loss on those energies
that can be computed one micro-batch ("chunk") of rows at a time. Chunk losses are
normalised by the batch's totals, so the chunks' losses add up to the batch loss and
their gradients to the batch gradient; peak memory is then set by the chunk, not the
batch. All rewards are in the calibrator's standardised units.

Candidates come in two kinds: per-row candidates ``(B, K₁)`` (NCE+'s noise samples,
drawn around each row's reward) and candidates shared by every row ``(K₂,)`` (the cells
of the reward grid). The network evaluates the energy of the shared ones once per batch
in its reward branch, which is what makes the grid likelihood cheap.

Objectives
----------
``nce_plus``
    Label-noise-aware NCE (Gustafsson et al. 2020), the paper's objective:
    ``−log softmax_m(f_m − log q(y_m | y))`` at the positive ``y + ν`` among ``M``
    negatives drawn from ``q = (1/K) Σ_k N(y, σ_k²)``, plus ``penalty · mean(f²)``.
``grid_nll``
    Exact maximum likelihood on the grid: the negative log-likelihood of the
    label-noise-perturbed reward ``y + ν`` under the grid-normalised density
    ``p(r | e)`` — piecewise uniform on the cells, ``p(r) = softmax(f(e, c))_j / Δ`` for
    ``r`` in cell ``j`` (the convention of every grid method of the package) — plus
    ``penalty · mean(f²)`` over the ``G`` cells. One candidate per cell.
preference term
    ``preference_weight · mean_pairs(−log P(r_chosen > r_rejected))`` with ``P`` computed
    exactly from the two rows' grid distributions (cells independent; two rewards in the
    same cell are each other's superior with probability ½), the same ``P(a > b)`` as
    :meth:`skebrm.GridDistribution.preference_probability`. It needs both rows of a pair
    in the same chunk: plans with pairs lay rows out as ``chosen, rejected, chosen, ...``
    and chunk in whole pairs (``chunk_rows = 2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skebrm.energy import mixture_log_density, sample_nce_noise

__all__ = [
    "BatchPlan",
    "GridNLL",
    "NCEPlus",
    "grid_cell_index",
    "grid_nll_loss",
    "make_objective",
    "pair_preference_log_prob",
]

# −log P of a pair is computed from P clamped at this value, so that a pair the energy
# orders with near certainty the wrong way gives a large but finite loss and gradient.
_MIN_PROB = 1e-12


@dataclass
class BatchPlan:
    """What the training step evaluates for one batch of ``B`` rows.

    row_candidates : Tensor (B, K₁) or None
    shared_candidates : Tensor (K₂,) or None
    chunk_loss : callable ``(f, start, stop) -> Tensor``
        Loss contribution of rows ``start:stop`` from their energies ``f`` of shape
        ``(stop − start, K₁ + K₂)`` (per-row candidates first), normalised so that the sum
        over a partition of the batch is the batch loss.
    chunk_rows : int
        Chunk boundaries must fall on multiples of this (2 when pairs are in the loss).
    """

    row_candidates: torch.Tensor | None
    shared_candidates: torch.Tensor | None
    chunk_loss: Callable[[torch.Tensor, int, int], torch.Tensor]
    chunk_rows: int = 1

    @property
    def n_candidates(self) -> int:
        k1 = 0 if self.row_candidates is None else self.row_candidates.shape[1]
        k2 = 0 if self.shared_candidates is None else self.shared_candidates.numel()
        return k1 + k2


def grid_cell_index(r: torch.Tensor, low: float, width: float, size: int) -> torch.Tensor:
    """Cell of each reward on a grid of ``size`` cells ``[low + jΔ, low + (j+1)Δ)``; rewards
    beyond the grid fall in its end cells."""
    return torch.floor((r - low) / width).long().clamp_(0, size - 1)


def grid_nll_loss(f: torch.Tensor, cells: torch.Tensor, width: float) -> torch.Tensor:
    """Per-row ``−log p(r | e)`` on the grid: ``logsumexp(f) − f[cell] + log Δ``, (B,)."""
    return torch.logsumexp(f, dim=1) - f.gather(1, cells[:, None])[:, 0] + math.log(width)


def pair_preference_log_prob(f_chosen: torch.Tensor, f_rejected: torch.Tensor) -> torch.Tensor:
    """``log P(r_c > r_r)`` from grid energies (P, G) of both rows; ties in a cell count ½."""
    p_c = torch.softmax(f_chosen, dim=1)
    p_r = torch.softmax(f_rejected, dim=1)
    below = torch.cumsum(p_r, dim=1) - p_r  # P(r_r in a lower cell)
    prob = (p_c * (below + 0.5 * p_r)).sum(1)
    return torch.log(prob.clamp(min=_MIN_PROB))


def _label_noise(n: int, sigmas: torch.Tensor, beta: float, generator) -> torch.Tensor:
    """``ν`` from the zero-mean mixture with scales ``β·σ_k`` (the positive is ``y + ν``)."""
    comp = torch.randint(sigmas.numel(), (n,), generator=generator)
    return sigmas.cpu()[comp] * beta * torch.randn(n, generator=generator, dtype=sigmas.dtype)


class _Objective:
    """Shared layout logic: which rows are in the likelihood term, which pairs in the
    preference term, and their per-batch normalisations."""

    def __init__(self, *, penalty: float, preference_weight: float = 0.0, grid=None):
        self.penalty = float(penalty)
        self.preference_weight = float(preference_weight)
        self.grid = grid  # (centres tensor (G,), low, width) or None

    def _pref_loss(self, f_grid: torch.Tensor, start: int, stop: int, n_pairs: int):
        """Preference term of the pairs in rows ``start:stop`` (laid out chosen, rejected)."""
        if self.preference_weight == 0 or n_pairs == 0:
            return None
        logp = pair_preference_log_prob(f_grid[0::2], f_grid[1::2])
        return -self.preference_weight * logp.sum() / n_pairs


class NCEPlus(_Objective):
    """The paper's NCE+ objective, optionally with the preference term on grid candidates."""

    def __init__(
        self,
        sigmas: torch.Tensor,
        beta: float,
        n_negatives: int,
        penalty: float,
        *,
        preference_weight: float = 0.0,
        grid=None,
    ):
        super().__init__(penalty=penalty, preference_weight=preference_weight, grid=grid)
        self.sigmas = sigmas
        self.beta = float(beta)
        self.n_negatives = int(n_negatives)

    def plan(self, y, *, likelihood=None, pairs: bool = False, generator=None) -> BatchPlan:
        """Plan a batch of rows with standardised rewards ``y`` (B,): draw the ``M + 1``
        samples per row (column 0 the positive ``y + ν``), see :meth:`plan_from_samples`."""
        samples = sample_nce_noise(
            y.cpu(), self.sigmas.cpu(), self.beta, self.n_negatives, generator
        )
        return self.plan_from_samples(samples.to(y.device), y, likelihood=likelihood, pairs=pairs)

    def plan_from_samples(self, samples, y, *, likelihood=None, pairs: bool = False) -> BatchPlan:
        """The plan for given samples (B, M + 1).

        ``likelihood`` (B,) bool marks the rows in the NCE+ term (default: all);
        ``pairs=True`` means rows come as (chosen, rejected) pairs for the preference term.
        The penalty covers the NCE+ samples of every row.
        """
        n = y.shape[0]
        mask = torch.ones(n, dtype=torch.bool) if likelihood is None else likelihood
        mask = mask.to(y.device)
        n_like = max(int(mask.sum()), 1)
        sigmas = self.sigmas.to(y.device)
        k1 = samples.shape[1]
        use_pref = pairs and self.preference_weight > 0
        shared = self.grid[0].to(y.device) if use_pref else None
        n_pairs = n // 2 if use_pref else 0

        def chunk_loss(f, start, stop):
            s = samples[start:stop]
            logits = f[:, :k1] - mixture_log_density(s - y[start:stop, None], sigmas)
            nll = torch.logsumexp(logits, dim=1) - logits[:, 0]
            m = mask[start:stop]
            loss = (nll * m).sum() / n_like + self.penalty * f[:, :k1].pow(2).sum() / (n * k1)
            pref = self._pref_loss(f[:, k1:], start, stop, n_pairs)
            return loss if pref is None else loss + pref

        return BatchPlan(samples, shared, chunk_loss, 2 if use_pref else 1)


class GridNLL(_Objective):
    """Exact grid likelihood of ``y + ν``, optionally with the preference term (free: the
    grid energies are already there)."""

    def __init__(
        self,
        grid,
        sigmas: torch.Tensor,
        beta: float,
        penalty: float,
        *,
        preference_weight: float = 0.0,
    ):
        super().__init__(penalty=penalty, preference_weight=preference_weight, grid=grid)
        self.sigmas = sigmas
        self.beta = float(beta)

    def plan(self, y, *, likelihood=None, pairs: bool = False, generator=None) -> BatchPlan:
        """Plan a batch (see :meth:`NCEPlus.plan`)."""
        centres, low, width = self.grid
        size = centres.numel()
        n = y.shape[0]
        mask = torch.ones(n, dtype=torch.bool) if likelihood is None else likelihood.cpu()
        n_like = max(int(mask.sum()), 1)
        noisy = y.cpu() + _label_noise(n, self.sigmas.cpu(), self.beta, generator).to(y.dtype)
        cells = grid_cell_index(noisy, low, width, size).to(y.device)
        mask = mask.to(y.device)
        use_pref = pairs and self.preference_weight > 0
        n_pairs = n // 2 if use_pref else 0

        def chunk_loss(f, start, stop):
            nll = grid_nll_loss(f, cells[start:stop], width)
            m = mask[start:stop]
            loss = (nll * m).sum() / n_like + self.penalty * f.pow(2).sum() / (n * size)
            pref = self._pref_loss(f, start, stop, n_pairs)
            return loss if pref is None else loss + pref

        return BatchPlan(None, centres.to(y.device), chunk_loss, 2 if use_pref else 1)


def make_objective(
    name: str,
    *,
    grid,
    sigmas: torch.Tensor,
    beta: float,
    n_negatives: int,
    penalty: float,
    preference_weight: float = 0.0,
):
    """The objective called ``name`` (``"nce_plus"`` or ``"grid_nll"``) on ``grid =
    (centres, low, width)`` (standardised units)."""
    if name == "grid_nll":
        return GridNLL(grid, sigmas, beta, penalty, preference_weight=preference_weight)
    if name == "nce_plus":
        return NCEPlus(
            sigmas, beta, n_negatives, penalty, preference_weight=preference_weight, grid=grid
        )
    raise ValueError(f"objective must be 'nce_plus' or 'grid_nll', got {name!r}.")
