"""The training step of :class:`~skebrm.energy.EnergyNet`, written out by hand.

Autograd computes the same gradients (``tests/unit/test_fused.py`` checks it to float64
round-off, dropout masks included), but on CPU most of a training step outside the
matrix products went to memory: every micro-batch allocated fresh ``(rows, M + 1,
width)`` tensors, which the allocator returns to the operating system and takes back
page by page, and ``tanh``, the dropout mask and its ``masked_fill`` were separate
passes. Here every per-candidate activation lives in buffers allocated once per fit
and reused by every micro-batch (:class:`Workspace`), weight gradients accumulate in
place (``addmm_``), and each ``tanh`` + dropout layer is the in-place
:func:`~skebrm.energy.tanh_dropout_` that the autograd path uses too: ``tanh(x) =
2·σ(2x) − 1`` (``sigmoid`` is several times cheaper than ``tanh`` on CPU), the keep mask
written as 0/1 floats straight from random bits (the same draws in both paths), and one
saved tensor per layer, ``keep − out²``, that is the layer's whole backward.

The embedding's share of the first layer, ``W_e·e + b``, is computed once per batch
rather than once per micro-batch, and its weight gradient is one product per batch; so are
the reward features of candidates shared by every row (the grid of ``grid_nll`` and of the
preference term). The tiny reward branch ``1→16→32→64`` still goes through autograd.
"""

from __future__ import annotations

import torch
from torch import nn

from skebrm._objectives import BatchPlan
from skebrm.energy import EnergyNet, Workspace, tanh_dropout_

__all__ = ["fused_plan_gradients", "supports_fused"]


def _trunk_layers(net: EnergyNet) -> list[tuple[float, nn.Linear]] | None:
    """``[(dropout p before the layer, layer), ...]`` for a ``(Tanh, Dropout, Linear)*``
    trunk; ``None`` for any other layout."""
    mods = list(net.trunk)
    if len(mods) % 3:
        return None
    layers = []
    for i in range(0, len(mods), 3):
        tanh, drop, lin = mods[i : i + 3]
        if not (
            isinstance(tanh, nn.Tanh)
            and isinstance(drop, nn.Dropout)
            and isinstance(lin, nn.Linear)
        ):
            return None
        layers.append((float(drop.p) if drop.training else 0.0, lin))
    return layers


def supports_fused(net: nn.Module) -> bool:
    """Whether :func:`fused_nce_plus_gradients` can train ``net``."""
    return type(net) is EnergyNet and _trunk_layers(net) is not None


def fused_plan_gradients(
    net: EnergyNet,
    X: torch.Tensor,
    plan: BatchPlan,
    *,
    rows_per_chunk: int,
    workspace: Workspace | None = None,
) -> float:
    """Add the gradient of a batch plan's loss to ``net``'s ``.grad``; return the loss.

    Same contract as :func:`skebrm._training.accumulate_gradients`: the batch (X (B, d))
    is processed ``rows_per_chunk`` rows at a time (a multiple of ``plan.chunk_rows``), each
    chunk contributing ``plan.chunk_loss``. Per-row candidates go through the reward branch
    per row; shared candidates (a grid) once per batch, their reward features broadcast
    to every row and their gradient summed over rows. Dropout is active for the trunk's
    ``Dropout`` modules that are in training mode, with masks drawn from the global torch
    generator in the order the autograd path draws them.
    """
    layers = _trunk_layers(net) if supports_fused(net) else None
    if layers is None:
        raise TypeError("fused_plan_gradients needs an EnergyNet with a tanh trunk.")
    ws = workspace if workspace is not None else Workspace()
    n_rows = X.shape[0]
    rows_cand, shared = plan.row_candidates, plan.shared_candidates
    k1 = 0 if rows_cand is None else rows_cand.shape[1]
    k2 = 0 if shared is None else shared.numel()
    n_cand = k1 + k2
    d = net.n_features
    dtype, device = X.dtype, X.device
    first = net.first
    w_e, w_r = first.weight[:, :d], first.weight[:, d:]
    for p in net.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)

    phi_s = None
    if k2:
        phi_s = net.reward_net(shared.reshape(k2, 1).to(dtype))  # autograd: tiny, once
    with torch.no_grad():
        h = torch.addmm(first.bias, X, w_e.t())  # (B, H0): embedding share, once per batch
        u_s = None if phi_s is None else phi_s.detach() @ w_r.t()  # (K2, H0)
        d_us = None if phi_s is None else torch.zeros_like(u_s)
        # dropout's 1 / (1 − p) is folded into the weight of the layer after it
        scales = [1.0 / (1.0 - p) if 0.0 < p < 1.0 else 1.0 for p, _ in layers]
        weights = [
            lin.weight * s if s != 1.0 else lin.weight for (_, lin), s in zip(layers, scales)
        ]
    d_h = torch.zeros_like(h)
    widths = [first.out_features] + [lin.out_features for _, lin in layers[:-1]]
    step = max(1, int(plan.chunk_rows))
    rows = max(step, int(rows_per_chunk) // step * step)
    total = 0.0
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        b = stop - start
        n = b * n_cand

        # ---- forward
        phi = None
        if k1:
            phi = net.reward_net(rows_cand[start:stop].reshape(b * k1, 1))  # autograd: tiny
        with torch.no_grad():
            x = ws.get("act0", n, widths[0], dtype=dtype, device=device)
            x3 = x.view(b, n_cand, -1)
            if k1 and not k2:
                torch.mm(phi, w_r.t(), out=x)
            elif k1:
                x3[:, :k1] = (phi.detach() @ w_r.t()).view(b, k1, -1)
            if k2:
                x3[:, k1:] = u_s
            x3.add_(h[start:stop].unsqueeze(1))
            acts, slopes = [], []
            for i, (p, lin) in enumerate(layers):
                slope = ws.get(f"slope{i}", n, widths[i], dtype=dtype, device=device)
                a, slope = tanh_dropout_(x, p, slope_out=slope)
                acts.append(a)
                slopes.append(slope)
                if i + 1 < len(layers):
                    x = ws.get(f"act{i + 1}", n, lin.out_features, dtype=dtype, device=device)
                    torch.addmm(lin.bias, a, weights[i].t(), out=x)
                else:
                    f = torch.addmm(lin.bias, a, weights[i].t())  # (n, 1)

        # ---- loss and its gradient with respect to the energies (small: (rows, K))
        f_leaf = f.view(b, n_cand).detach().requires_grad_(True)
        loss = plan.chunk_loss(f_leaf, start, stop)
        (g,) = torch.autograd.grad(loss, f_leaf)
        total += float(loss.detach())

        # ---- backward through the trunk
        with torch.no_grad():
            g = g.reshape(n, 1)
            for i in range(len(layers) - 1, -1, -1):
                _, lin = layers[i]
                lin.bias.grad.add_(g.sum(0))
                lin.weight.grad.addmm_(g.t(), acts[i], alpha=scales[i])
                d_a = ws.get(f"grad{i}", n, widths[i], dtype=dtype, device=device)
                if g.shape[1] == 1:  # the output layer: an outer product
                    torch.mul(g, weights[i], out=d_a)
                else:
                    torch.mm(g, weights[i], out=d_a)
                g = d_a.mul_(slopes[i])
            # g: gradient at the first layer's pre-activation (n, H0)
            g3 = g.view(b, n_cand, -1)
            d_h[start:stop] += g3.sum(1)
            d_phi = None
            if k1:
                g_rows = g3[:, :k1].reshape(b * k1, -1)
                first.weight.grad[:, d:].addmm_(g_rows.t(), phi.detach())
                d_phi = g_rows @ w_r
            if k2:
                d_us += g3[:, k1:].sum(0)
        if phi is not None and phi.requires_grad:
            phi.backward(d_phi)

    with torch.no_grad():
        first.weight.grad[:, :d].addmm_(d_h.t(), X)
        first.bias.grad.add_(d_h.sum(0))
        if phi_s is not None:
            first.weight.grad[:, d:].addmm_(d_us.t(), phi_s.detach())
    if phi_s is not None and phi_s.requires_grad:
        phi_s.backward(d_us @ w_r)
    return total
