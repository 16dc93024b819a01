"""The energy network ``f(e, r)`` and the NCE+ loss, as pure torch code.

``p(r | e) ∝ exp f(e, r)``: a higher energy means a more probable reward. Two
architectures share one interface (:meth:`embed` once per row, then
:meth:`energy_from_embedded` for any number of reward candidates per row):

- :class:`EnergyNet` is the paper's network: a reward branch ``1→16→32→64`` (tanh),
  concatenated with the embedding, then a trunk ``1024→512→1`` (tanh). Because the
  first trunk layer is linear in the concatenation ``[e, φ(r)]``, it is evaluated in
  factored form: ``W·[e, φ(r)] + b = (W_e·e + b) + W_r·φ(r)``, with the embedding part
  computed once per row and shared by all ``M + 1`` candidates.
- :class:`BasisEnergyNet` makes the reward dependence cheap: ``f(e, r) = g(e)·ψ(r)``
  with ``g`` an MLP on the embedding and ``ψ`` a fixed Gaussian radial basis of the
  (standardised) reward, so each extra candidate costs one ``K``-term inner product.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BasisEnergyNet",
    "EnergyNet",
    "mixture_log_density",
    "nce_plus_loss",
    "sample_nce_noise",
]


class EnergyNet(nn.Module):
    """The EBRM energy network (Lochab & Zhang 2025), evaluated in factored form.

    Parameters
    ----------
    n_features : int
        Dimension of the embedding ``e``.
    reward_hidden : sequence of int
        Widths of the reward branch (tanh after each layer).
    hidden : sequence of int
        Widths of the trunk after concatenation (tanh after each layer, then dropout).
    dropout : float
        Dropout probability after each trunk activation.
    """

    def __init__(
        self,
        n_features: int,
        *,
        reward_hidden: Sequence[int] = (16, 32, 64),
        hidden: Sequence[int] = (1024, 512),
        dropout: float = 0.5,
    ):
        super().__init__()
        if len(hidden) < 1:
            raise ValueError(f"hidden must name at least one trunk layer, got {tuple(hidden)!r}.")
        self.n_features = int(n_features)
        layers: list[nn.Module] = []
        prev = 1
        for width in reward_hidden:
            layers += [nn.Linear(prev, width), nn.Tanh()]
            prev = width
        self.reward_net = nn.Sequential(*layers)
        self.n_reward_features = prev
        # One linear layer over the concatenation [e, φ(r)], as in the paper.
        self.first = nn.Linear(self.n_features + prev, hidden[0])
        trunk: list[nn.Module] = [nn.Tanh(), nn.Dropout(dropout)]
        prev = hidden[0]
        for width in hidden[1:]:
            trunk += [nn.Linear(prev, width), nn.Tanh(), nn.Dropout(dropout)]
            prev = width
        trunk.append(nn.Linear(prev, 1))
        self.trunk = nn.Sequential(*trunk)

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        """The embedding's share of the first trunk layer, ``W_e·e + b``: (B, d) → (B, H)."""
        return F.linear(e, self.first.weight[:, : self.n_features], self.first.bias)

    def energy_from_embedded(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Energies of reward candidates ``r`` (B, K) for rows embedded as ``h`` (B, H)."""
        phi = self.reward_net(r.unsqueeze(-1))
        pre = F.linear(phi, self.first.weight[:, self.n_features :]) + h.unsqueeze(1)
        return self.trunk(pre).squeeze(-1)

    def forward(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Energies ``f(e_i, r_ik)``: e (B, d), r (B, K) → (B, K)."""
        return self.energy_from_embedded(self.embed(e), r)

    def forward_concatenated(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The same energies through the literal concatenation (slow; for tests)."""
        phi = self.reward_net(r.unsqueeze(-1))
        x = torch.cat([e.unsqueeze(1).expand(-1, r.shape[1], -1), phi], dim=-1)
        return self.trunk(self.first(x)).squeeze(-1)


class BasisEnergyNet(nn.Module):
    """An energy that is an inner product ``f(e, r) = g(e)·ψ(r) + c(r)``.

    ``ψ`` is a fixed bank of ``n_basis`` Gaussian bumps with centres spread evenly over
    ``[low, high]`` (standardised reward units) and width equal to their spacing times
    ``bandwidth``; ``g`` is an MLP on the embedding. All the work that depends on the
    embedding happens once per row, so ``M`` negatives or a dense inference grid cost
    ``M`` (or ``G``) inner products of length ``n_basis`` per row.
    """

    def __init__(
        self,
        n_features: int,
        *,
        hidden: Sequence[int] = (1024, 512),
        n_basis: int = 64,
        low: float = -16.0,
        high: float = 16.0,
        bandwidth: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        if n_basis < 2:
            raise ValueError(f"n_basis must be >= 2, got {n_basis!r}.")
        if not high > low:
            raise ValueError(f"high must exceed low, got low={low!r}, high={high!r}.")
        self.n_features = int(n_features)
        layers: list[nn.Module] = []
        prev = self.n_features
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.Tanh(), nn.Dropout(dropout)]
            prev = width
        layers.append(nn.Linear(prev, n_basis))
        self.g = nn.Sequential(*layers)
        self.register_buffer("centres", torch.linspace(low, high, n_basis))
        self.width = float(bandwidth * (high - low) / (n_basis - 1))

    def basis(self, r: torch.Tensor) -> torch.Tensor:
        """ψ(r): (B, K) → (B, K, n_basis)."""
        return torch.exp(-0.5 * ((r.unsqueeze(-1) - self.centres) / self.width) ** 2)

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        return self.g(e)

    def energy_from_embedded(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bkn,bn->bk", self.basis(r), h)

    def forward(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.energy_from_embedded(self.embed(e), r)


def mixture_log_density(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Log-density at ``x`` of the zero-mean mixture ``(1/K) Σ_k N(0, σ_k²)``."""
    z = x.unsqueeze(-1) / sigmas
    log_comp = -0.5 * z**2 - torch.log(sigmas) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_comp, dim=-1) - math.log(sigmas.numel())


def sample_nce_noise(
    y: torch.Tensor,
    sigmas: torch.Tensor,
    beta: float,
    n_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw the ``M + 1`` NCE+ samples per row: column 0 the positive, then negatives.

    The positive is ``y + ν`` with ``ν`` from the mixture with scales ``β·σ_k``; the
    negatives come from ``(1/K) Σ_k N(y, σ_k²)``. Returns (B, M + 1).
    """
    n = y.shape[0]
    k = sigmas.numel()
    comp = torch.randint(k, (n, n_negatives + 1), generator=generator, device=y.device)
    scales = sigmas[comp]
    scales[:, 0] = scales[:, 0] * beta
    eps = torch.randn(n, n_negatives + 1, generator=generator, device=y.device, dtype=y.dtype)
    return y.unsqueeze(1) + scales * eps


def nce_plus_loss(
    energies: torch.Tensor,
    samples: torch.Tensor,
    y: torch.Tensor,
    sigmas: torch.Tensor,
    penalty: float,
) -> torch.Tensor:
    """The NCE+ loss (Gustafsson et al. 2020) with an L2 penalty on the energies.

    ``−log softmax_m(f_m − log q(y_m | y))`` at the positive ``m = 0``, averaged over
    rows, where ``q(·|y) = (1/K) Σ_k N(y, σ_k²)`` is the negatives' noise density, plus
    ``penalty · mean(f²)`` over all ``M + 1`` samples.

    Parameters
    ----------
    energies : Tensor (B, M + 1)
        ``f(e_i, samples_i)``; column 0 is the positive.
    samples : Tensor (B, M + 1)
    y : Tensor (B,)
        The observed (standardised) rewards the noise is centred on.
    sigmas : Tensor (K,)
    penalty : float
    """
    log_q = mixture_log_density(samples - y.unsqueeze(1), sigmas)
    logits = energies - log_q
    nll = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return nll.mean() + penalty * energies.pow(2).mean()
