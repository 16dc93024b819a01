"""A plain, faithful re-implementation of EBRM as published, used only as a baseline.

Nothing here is optimised, and nothing here is imported by the library. The point is a
straightforward reading of the method (Lochab & Zhang 2025, on top of Gustafsson et al.
2020) against which the library's factored implementation is checked (same loss, same
modes) and timed (same process, same threads):

- :class:`ReferenceEnergyNet` concatenates ``[e, φ(r)]`` for *every* reward candidate and
  runs the full first trunk layer on the concatenation, as the paper's figure draws it.
  Its parameters have exactly the names and shapes of
  :class:`skebrm.energy.EnergyNet`, so the two share a ``state_dict``
  (:meth:`ReferenceEnergyNet.from_energy_net` copies one into the other).
- :func:`reference_noise` and :func:`reference_nce_plus_loss` build the NCE+ noise and
  loss from ``torch.distributions`` objects (a ``MixtureSameFamily`` of ``Normal`` with a
  uniform ``Categorical``), with the loss as a softmax cross-entropy.
- :func:`reference_ascent` is Gustafsson et al.'s Alg. 1 with autograd: at every step,
  ``ŷ' = ŷ + λ ∇_y f(x, ŷ)``; keep ``ŷ'`` if ``f`` rose, otherwise ``λ ← η λ``. Run for each
  row independently (batched), ``T = 50``, ``λ = 0.5``, ``η = 0.2``.

Import it by path (``benchmarks/`` is not a package)::

    spec = importlib.util.spec_from_file_location("reference", "benchmarks/reference.py")
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, Normal
from torch.nn import functional as F

__all__ = [
    "ReferenceEnergyNet",
    "reference_ascent",
    "reference_flops_per_row",
    "reference_nce_plus_loss",
    "reference_noise",
    "reference_train_step",
]


class ReferenceEnergyNet(nn.Module):
    """The paper's energy network ``f(e, r)``, evaluated on the literal concatenation.

    Reward branch ``1→16→32→64`` (tanh), concatenated with the embedding, then the trunk
    ``(d + 64)→1024→512→1`` (tanh, dropout). Parameter names match
    :class:`skebrm.energy.EnergyNet` one for one.
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
        self.n_features = int(n_features)
        layers: list[nn.Module] = []
        prev = 1
        for width in reward_hidden:
            layers += [nn.Linear(prev, width), nn.Tanh()]
            prev = width
        self.reward_net = nn.Sequential(*layers)
        self.first = nn.Linear(self.n_features + prev, hidden[0])
        trunk: list[nn.Module] = [nn.Tanh(), nn.Dropout(dropout)]
        prev = hidden[0]
        for width in hidden[1:]:
            trunk += [nn.Linear(prev, width), nn.Tanh(), nn.Dropout(dropout)]
            prev = width
        trunk.append(nn.Linear(prev, 1))
        self.trunk = nn.Sequential(*trunk)

    @classmethod
    def from_energy_net(cls, net: nn.Module) -> ReferenceEnergyNet:
        """A reference network holding a copy of the weights of a library ``EnergyNet``."""
        reward_hidden = [m.out_features for m in net.reward_net if isinstance(m, nn.Linear)]
        linears = [m for m in net.trunk if isinstance(m, nn.Linear)]
        hidden = [net.first.out_features] + [m.out_features for m in linears[:-1]]
        dropouts = [m.p for m in net.trunk if isinstance(m, nn.Dropout)]
        ref = cls(
            net.n_features,
            reward_hidden=reward_hidden,
            hidden=hidden,
            dropout=dropouts[0] if dropouts else 0.0,
        )
        ref.load_state_dict(net.state_dict(), strict=True)
        ref.to(next(net.parameters()).dtype)
        ref.train(net.training)
        return ref

    def forward(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Energies ``f(e_i, r_ik)``: e (B, d), r (B, K) → (B, K)."""
        phi = self.reward_net(r.unsqueeze(-1))
        x = torch.cat([e.unsqueeze(1).expand(-1, r.shape[1], -1), phi], dim=-1)
        return self.trunk(self.first(x)).squeeze(-1)


def _noise_mixture(loc: torch.Tensor, scales: torch.Tensor) -> MixtureSameFamily:
    """``(1/K) Σ_k N(loc, scales_k²)`` for every entry of ``loc``, batch shape ``loc.shape``."""
    k = scales.numel()
    batch = loc.shape
    mix = Categorical(logits=torch.zeros(*batch, k, dtype=loc.dtype, device=loc.device))
    comp = Normal(loc.unsqueeze(-1).expand(*batch, k), scales.expand(*batch, k))
    return MixtureSameFamily(mix, comp)


def reference_noise(
    y: torch.Tensor, sigmas: torch.Tensor, beta: float, n_negatives: int
) -> torch.Tensor:
    """NCE+ samples, column 0 the positive ``y + ν`` (``ν`` ~ mixture scaled by ``beta``),
    then ``n_negatives`` draws from ``(1/K) Σ_k N(y, σ_k²)``: (B, M + 1)."""
    positive = _noise_mixture(y, beta * sigmas).sample()
    negatives = _noise_mixture(y, sigmas).sample((n_negatives,)).T
    return torch.cat([positive.unsqueeze(1), negatives], dim=1)


def reference_nce_plus_loss(
    energies: torch.Tensor,
    samples: torch.Tensor,
    y: torch.Tensor,
    sigmas: torch.Tensor,
    penalty: float,
) -> torch.Tensor:
    """NCE+ as a softmax cross-entropy over ``f − log q``, target the positive (column 0),
    plus ``penalty · mean(f²)``; ``log q`` from the noise distribution's ``log_prob``."""
    q = _noise_mixture(y.unsqueeze(1).expand_as(samples), sigmas)
    logits = energies - q.log_prob(samples)
    target = torch.zeros(samples.shape[0], dtype=torch.long, device=samples.device)
    return F.cross_entropy(logits, target) + penalty * energies.pow(2).mean()


def reference_train_step(
    net: ReferenceEnergyNet,
    optimizer: torch.optim.Optimizer,
    e: torch.Tensor,
    y: torch.Tensor,
    *,
    sigmas: torch.Tensor,
    beta: float = 0.1,
    n_negatives: int = 768,
    penalty: float = 0.05,
) -> float:
    """One NCE+ optimisation step on a batch; returns the loss."""
    net.train()
    samples = reference_noise(y, sigmas, beta, n_negatives)
    loss = reference_nce_plus_loss(net(e, samples), samples, y, sigmas, penalty)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def reference_ascent(
    net: nn.Module,
    e: torch.Tensor,
    r0: torch.Tensor,
    *,
    n_steps: int = 50,
    step_size: float = 0.5,
    shrink: float = 0.2,
) -> torch.Tensor:
    """Gustafsson et al. (2020), Alg. 1, for every row: gradient ascent on ``f(e, ·)``
    with accept/reject and step backtracking. ``net(e, r)`` maps (B, d), (B, K) → (B, K).
    Returns the final ``ŷ`` (B,)."""
    y_hat = r0.detach().clone()
    lam = torch.full_like(y_hat, step_size)
    for _ in range(n_steps):
        y_req = y_hat.clone().requires_grad_(True)
        prev_value = net(e, y_req.unsqueeze(1)).squeeze(1)
        (grad,) = torch.autograd.grad(prev_value.sum(), y_req)
        with torch.no_grad():
            proposal = y_hat + lam * grad
            new_value = net(e, proposal.unsqueeze(1)).squeeze(1)
            accept = new_value > prev_value
            y_hat = torch.where(accept, proposal, y_hat)
            lam = torch.where(accept, lam, lam * shrink)
    return y_hat


def reference_flops_per_row(
    n_features: int,
    n_candidates: int,
    *,
    reward_hidden: Sequence[int] = (16, 32, 64),
    hidden: Sequence[int] = (1024, 512),
) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of one row: ``forward`` for ``n_candidates`` rewards
    and ``train`` (forward + backward ≈ 3× forward; the backward of the first layer forms
    both the weight gradient and the gradient of the whole concatenation). Elementwise
    work (tanh, dropout, the copy into the concatenation) is not counted."""
    branch, prev = 0, 1
    for width in reward_hidden:
        branch += 2 * prev * width
        prev = width
    per_candidate = branch + 2 * (n_features + prev) * hidden[0]
    widths = [*hidden, 1]
    per_candidate += sum(2 * a * b for a, b in itertools.pairwise(widths))
    forward = n_candidates * per_candidate
    return {"forward": float(forward), "train": float(3 * forward)}
