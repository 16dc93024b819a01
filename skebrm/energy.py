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
    "Workspace",
    "dropout_drop_mask",
    "dropout_keep_mask",
    "mixture_log_density",
    "nce_plus_loss",
    "sample_nce_noise",
    "tanh_dropout",
    "tanh_dropout_",
]


def _mask_bits(p: float) -> int:
    """8 random bits per entry when ``p`` is a multiple of ``2⁻⁸`` (0.5, 0.25, ...), else 16."""
    return 8 if float(p * 256).is_integer() else 16


def _random_ints(numel: int, bits: int, *, device=None) -> torch.Tensor:
    """``numel`` uniform random integers of ``bits`` bits (uint8 or int16), drawn as 64-bit
    words from the global torch generator."""
    per_word = 64 // bits
    words = torch.empty((numel + per_word - 1) // per_word, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), (1 << 63) - 1)
    return words.view(torch.uint8 if bits == 8 else torch.int16)[:numel]


def _keep_count(p: float, bits: int) -> int:
    """Of the ``2^bits`` values of a random integer, how many keep the entry."""
    return min(max(round((1.0 - p) * (1 << bits)), 0), 1 << bits)


def _keep_threshold(n_keep: int, bits: int) -> int:
    """Keep an entry when its random integer is below this (uint8 for 8 bits, int16 for 16)."""
    return n_keep if bits == 8 else n_keep - (1 << 15)


def dropout_drop_mask(shape: Sequence[int], p: float, *, device=None) -> torch.Tensor:
    """A boolean mask of dropped entries, ``P(drop) = p``, from 8 or 16 random bits per entry.

    Drawing 64-bit words and comparing their 8- or 16-bit pieces with a threshold is
    several times cheaper on CPU than ``bernoulli_``; ``p`` is rounded to a multiple of
    ``2⁻¹⁶`` (exact for ``p = 0.5``, which uses 8 bits). Uses the global torch generator,
    like ``nn.Dropout``, and the same draws as :func:`dropout_keep_mask`.
    """
    bits = _mask_bits(p)
    n_keep = _keep_count(p, bits)
    if n_keep >= 1 << bits:
        return torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    if n_keep <= 0:
        return torch.ones(tuple(shape), dtype=torch.bool, device=device)
    ints = _random_ints(math.prod(shape), bits, device=device).view(tuple(shape))
    return ints >= _keep_threshold(n_keep, bits)


def dropout_keep_mask(
    shape: Sequence[int], p: float, *, dtype=torch.float32, device=None, out=None
) -> torch.Tensor:
    """``1 − dropout_drop_mask``, as 0/1 floats of ``dtype``, from the same random bits.

    Written straight into a float tensor (``out`` if given) by the comparison: a bool
    mask converted to float, or ``masked_fill_`` with it, costs several times more on CPU.
    """
    bits = _mask_bits(p)
    n_keep = _keep_count(p, bits)
    if out is None:
        out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if n_keep >= 1 << bits:
        return out.fill_(1.0)
    if n_keep <= 0:
        return out.zero_()
    ints = _random_ints(out.numel(), bits, device=out.device).view(out.shape)
    return torch.lt(ints, _keep_threshold(n_keep, bits), out=out)


def tanh_dropout_(x: torch.Tensor, p: float, *, slope_out: torch.Tensor | None = None):
    """In place, no autograd: ``x ← tanh(x)·keep`` with ``keep ~ Bernoulli(1 − p)`` (not
    rescaled); returns ``(x, slope)`` with ``slope = keep − x²``.

    ``tanh(x) = 2·σ(2x) − 1``, since ``sigmoid`` is several times cheaper than ``tanh`` on
    CPU (agreement to a few float ulps). ``slope`` is ``1 − tanh²(x)`` where the entry is
    kept and 0 where it is dropped: the layer's whole backward is ``grad · slope``. It is
    written into ``slope_out`` if given. ``p = 0`` draws no random bits.
    """
    keep = dropout_keep_mask(x.shape, p, dtype=x.dtype, device=x.device, out=slope_out)
    x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0).mul_(keep)
    return x, keep.addcmul_(x, x, value=-1.0)


class _TanhDrop(torch.autograd.Function):
    """:func:`tanh_dropout_` as an autograd node: consumes ``x`` (a fresh pre-activation
    that nothing else reads) and saves only ``slope`` for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        out, slope = tanh_dropout_(x, p)
        ctx.mark_dirty(x)
        ctx.save_for_backward(slope)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (slope,) = ctx.saved_tensors
        return grad * slope, None


def tanh_dropout(x: torch.Tensor, p: float, *, training: bool) -> torch.Tensor:
    """``nn.Dropout(p)(torch.tanh(x))`` with a cheaper mask (:func:`dropout_drop_mask`).

    In evaluation mode, or with ``p = 0``, it is ``torch.tanh(x)`` (so forward-mode
    differentiation works through it).
    """
    if not training or p == 0:
        return torch.tanh(x)
    if p >= 1:
        return torch.zeros_like(x)
    return _TanhDrop.apply(x.clone(), p) * (1.0 / (1.0 - p))


def _linear_with_tangent(z: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """A linear layer on stacked (value, tangent) rows: the bias enters the value only."""
    out = F.linear(z, layer.weight)
    if layer.bias is not None:
        out[0] += layer.bias
    return out


def _tanh_jvp(z: torch.Tensor) -> torch.Tensor:
    """tanh on the value, ``(1 − tanh²)·tangent`` on the tangent."""
    t = torch.tanh(z[0])
    return torch.stack([t, z[1] * (1 - t * t)])


class Workspace:
    """Named buffers reused across calls (grown on demand, never shrunk).

    On CPU, a fresh multi-megabyte tensor costs a page fault per 4 KiB the first time it
    is written; reusing buffers across micro-batches and row chunks avoids that.
    """

    def __init__(self):
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, n: int, width: int, *, dtype, device) -> torch.Tensor:
        """An ``(n, width)`` buffer (uninitialised)."""
        key = (name, dtype, torch.device(device) if device is not None else None)
        buf = self._bufs.get(key)
        if buf is None or buf.shape[0] < n or buf.shape[1] != width:
            buf = torch.empty((n, width), dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:n]


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
        self._config = {
            "n_features": int(n_features),
            "reward_hidden": [int(w) for w in reward_hidden],
            "hidden": [int(w) for w in hidden],
            "dropout": float(dropout),
        }
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

    @property
    def candidate_width(self) -> int:
        """Width of the widest activation computed per reward candidate."""
        return self.first.out_features

    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable): ``EnergyNet(**net.config())``
        builds a network with the same layout, ready for ``load_state_dict``."""
        return dict(self._config)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_sigmoid_form_cache", None)  # derived from the weights; not pickled
        return state

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        """The embedding's share of the first trunk layer, ``W_e·e + b``: (B, d) → (B, H)."""
        return F.linear(e, self.first.weight[:, : self.n_features], self.first.bias)

    def reward_features(self, r: torch.Tensor) -> torch.Tensor:
        """The reward's share of the first trunk layer, ``W_r·φ(r)``: (..., K) → (..., K, H).

        It does not depend on the embedding, so for rewards shared by all rows (an
        inference grid) it is computed once, not once per row.
        """
        phi = self.reward_net(r.unsqueeze(-1))
        return F.linear(phi, self.first.weight[:, self.n_features :])

    def energy_from_features(
        self, h: torch.Tensor, u: torch.Tensor, *, workspace: Workspace | None = None
    ) -> torch.Tensor:
        """Energies from embedded rows ``h`` (B, H) and reward features ``u`` (B or 1, K, H).

        Without autograd, intermediate activations go to ``workspace`` buffers if given.
        """
        if self._sigmoid_form_applies():
            shape = (h.shape[0], u.shape[1], u.shape[2])
            out = None
            if workspace is not None:
                n = shape[0] * shape[1]
                out = workspace.get("pre", n, shape[2], dtype=h.dtype, device=h.device)
                out = out.view(shape)
            # 2h + 2u in one pass over (B, K, H): only the small (B, H) rows are doubled
            pre2 = torch.add((h * 2.0).unsqueeze(1), u, alpha=2.0, out=out)
            return self._sigmoid_form_energies(pre2, workspace=workspace)
        return self._trunk(u + h.unsqueeze(1))

    def energy_from_embedded(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Energies of reward candidates ``r`` (B, K) for rows embedded as ``h`` (B, H)."""
        u = self.reward_features(r.expand(h.shape[0], -1))
        # ``u`` is a fresh (B, K, H) product that its backward does not need: add in place.
        if self._sigmoid_form_applies():
            pre2 = torch.add((h * 2.0).unsqueeze(1), u, alpha=2.0, out=u)
            return self._sigmoid_form_energies(pre2)
        return self._trunk(u.add_(h.unsqueeze(1)))

    # -- evaluation without autograd: tanh(x) = 2·σ(2x) − 1 with the affine parts folded
    # into the linear layers, so each trunk activation is one in-place ``sigmoid_`` (on
    # CPU several times cheaper than ``tanh``) and no separate scaling pass is needed.
    def _sigmoid_form_applies(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def _sigmoid_form_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(W', b')`` per trunk linear layer, acting on ``σ = sigmoid(2·pre)``.

        ``W·tanh(pre) + b = 2W·σ + (b − W·1)``; a hidden layer returns its doubled
        pre-activation (``4W``, ``2(b − W·1)``) so the next activation is again ``σ``.
        """
        lins = [m for m in self.trunk if isinstance(m, nn.Linear)]
        # cached until a weight is replaced or changed in place (version counter)
        key = tuple((t.data_ptr(), t._version) for m in lins for t in (m.weight, m.bias))
        cached = self.__dict__.get("_sigmoid_form_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        out = []
        for i, lin in enumerate(lins):
            shift = lin.bias - lin.weight.sum(1)
            last = i + 1 == len(lins)
            out.append((lin.weight * (2.0 if last else 4.0), shift if last else 2.0 * shift))
        self.__dict__["_sigmoid_form_cache"] = (key, out)
        return out

    def _sigmoid_form_energies(
        self, pre2: torch.Tensor, *, workspace: Workspace | None = None
    ) -> torch.Tensor:
        """Energies (B, K) from the doubled first pre-activations (B, K, H), consumed."""
        lead = pre2.shape[:-1]
        s = pre2.reshape(-1, pre2.shape[-1]).sigmoid_()
        weights = self._sigmoid_form_weights()
        for i, (w, b) in enumerate(weights[:-1]):
            out = None
            if workspace is not None:
                out = workspace.get(
                    f"act{i}", s.shape[0], w.shape[0], dtype=s.dtype, device=s.device
                )
            s = torch.addmm(b, s, w.t(), out=out).sigmoid_()
        w, b = weights[-1]
        return torch.addmm(b, s, w.t()).view(lead)

    def _trunk(self, pre: torch.Tensor) -> torch.Tensor:
        """The trunk after the first linear layer, on pre-activations (B, K, H) → (B, K).

        Runs the modules of ``self.trunk`` in order. A ``Tanh`` followed by an active
        ``Dropout`` is one step that zeroes the dropped entries without rescaling the
        (B, K, H) tensor; the ``1 / (1 − p)`` rescaling is folded into the next linear
        layer's weight, which is much smaller: ``W·(s·x) + b = (s·W)·x + b``.
        """
        modules = list(self.trunk)
        x, scale, i = pre, 1.0, 0
        while i < len(modules):
            module = modules[i]
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            if isinstance(module, nn.Tanh) and isinstance(nxt, nn.Dropout):
                if nxt.training and 0 < nxt.p < 1:
                    x = _TanhDrop.apply(x, nxt.p)
                    scale = scale / (1.0 - nxt.p)
                else:
                    x = tanh_dropout(x, nxt.p, training=nxt.training)
                i += 2
                continue
            if isinstance(module, nn.Linear) and scale != 1.0:
                x = F.linear(x, module.weight * scale, module.bias)
                scale = 1.0
            else:
                x = module(x) if scale == 1.0 else module(x * scale)
                scale = 1.0
            i += 1
        if scale != 1.0:
            x = x * scale
        return x.squeeze(-1)

    def forward(self, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Energies ``f(e_i, r_ik)``: e (B, d), r (B, K) → (B, K)."""
        return self.energy_from_embedded(self.embed(e), r)

    def energy_and_slope(self, h: torch.Tensor, r: torch.Tensor):
        """``f(e, r)`` and ``∂f/∂r`` for one candidate per row, r (B,) → two (B,) tensors.

        Forward-mode differentiation written out (evaluation mode: dropout is the
        identity): value and tangent are stacked so each linear layer is one matrix
        product over ``2B`` rows.
        """
        if self.training:
            raise RuntimeError("EnergyNet.energy_and_slope needs evaluation mode (net.eval()).")
        z = torch.stack([r, torch.ones_like(r)]).unsqueeze(-1)  # (2, B, 1): value, tangent
        for module in self.reward_net:
            z = _linear_with_tangent(z, module) if isinstance(module, nn.Linear) else _tanh_jvp(z)
        if not torch.is_grad_enabled():
            # sigmoid form (see _sigmoid_form_weights): z holds doubled pre-activations;
            # dσ/dr = σ(1 − σ)·dz/dr.
            z = F.linear(z, self.first.weight[:, self.n_features :] * 2.0)
            z[0].add_(h, alpha=2.0)
            for w, b in self._sigmoid_form_weights():
                v = z[0].sigmoid_()
                z[1].mul_(torch.addcmul(v, v, v, value=-1.0))
                z = F.linear(z, w)
                z[0] += b
            return z[0, :, 0], z[1, :, 0]
        z = F.linear(z, self.first.weight[:, self.n_features :])
        z[0] += h
        for module in self.trunk:
            if isinstance(module, nn.Linear):
                z = _linear_with_tangent(z, module)
            elif isinstance(module, nn.Tanh):
                z = _tanh_jvp(z)
        return z[0, :, 0], z[1, :, 0]


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
        self._config = {
            "n_features": int(n_features),
            "hidden": [int(w) for w in hidden],
            "n_basis": int(n_basis),
            "low": float(low),
            "high": float(high),
            "bandwidth": float(bandwidth),
            "dropout": float(dropout),
        }
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

    @property
    def candidate_width(self) -> int:
        """Width of the widest activation computed per reward candidate."""
        return self.centres.numel()

    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable), as :meth:`EnergyNet.config`."""
        return dict(self._config)

    def basis(self, r: torch.Tensor) -> torch.Tensor:
        """ψ(r): (B, K) → (B, K, n_basis)."""
        z = torch.sub(r.unsqueeze(-1) / self.width, self.centres / self.width)
        if torch.is_grad_enabled() and r.requires_grad:
            return torch.exp(-0.5 * z * z)
        return z.square_().mul_(-0.5).exp_()

    def energy_and_slope(self, h: torch.Tensor, r: torch.Tensor):
        """``f(e, r)`` and ``∂f/∂r`` for one candidate per row: r (B,) → two (B,) tensors."""
        z = (r.unsqueeze(-1) - self.centres) / self.width
        psi = torch.exp(-0.5 * z * z)
        return (psi * h).sum(-1), (-(z / self.width) * psi * h).sum(-1)

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        return self.g(e)

    def reward_features(self, r: torch.Tensor) -> torch.Tensor:
        """ψ(r), the reward's features: (..., K) → (..., K, n_basis)."""
        return self.basis(r)

    def energy_from_features(
        self, h: torch.Tensor, u: torch.Tensor, *, workspace: Workspace | None = None
    ) -> torch.Tensor:
        """Energies from ``h = g(e)`` (B, n_basis) and ``u = ψ(r)`` (B or 1, K, n_basis).

        One small product per row: ``workspace`` is accepted for the common interface
        and not needed.
        """
        return torch.matmul(u, h.unsqueeze(-1)).squeeze(-1)

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
