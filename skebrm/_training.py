"""The NCE+ training loop with pairwise-accuracy model selection."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from skebrm._fused import fused_nce_plus_gradients, supports_fused
from skebrm.energy import Workspace, nce_plus_loss, sample_nce_noise
from skebrm.exceptions import ConvergenceWarning

__all__ = ["TrainingResult", "accumulate_nce_plus_gradients", "train_energy_model"]


@dataclass
class TrainingResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False


# Rows of a batch are pushed through the network in micro-batches whose widest
# per-candidate activation, (rows, M + 1, width), holds about this many floats (32 MiB
# in float32), with gradients accumulated. The loss is a mean over rows (and over all
# candidates for the penalty), so the sum of the micro-batch losses, each weighted by its
# share of the batch, is the batch loss, and its gradient is the batch gradient up to the
# order of floating-point summation. Peak memory then no longer grows with the batch size.
# Measured at d = 2,048, M = 768 on the 2-core CPU of benchmarks/README.md: 2 to 42 rows
# per micro-batch all ran within 4 % of each other with the fused step; 10 rows is the
# middle of that plateau.
ACTIVATION_BUDGET = 1 << 23

# A held-out loss counts as lower (to break ties in validation accuracy) only when it
# drops by more than this share of the best loss so far.
LOSS_TOL = 1e-4


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator).numpy()
    for start in range(0, n, batch_size):
        yield np.sort(perm[start : start + batch_size])


def accumulate_nce_plus_gradients(
    net: torch.nn.Module,
    X: torch.Tensor,
    samples: torch.Tensor,
    y: torch.Tensor,
    sigmas: torch.Tensor,
    penalty: float,
    *,
    activation_budget: int = ACTIVATION_BUDGET,
    workspace: Workspace | None = None,
    fused: bool | None = None,
) -> float:
    """Add the gradient of the batch's NCE+ loss to ``net``'s ``.grad``; return the loss.

    The batch (X (B, d), samples (B, M + 1), y (B,)) is processed in micro-batches of
    ``activation_budget // ((M + 1) · net.candidate_width)`` rows (at least 1), each
    loss weighted by its share of the rows, so that the result is the full batch's loss
    and gradient (up to the order of summation).

    An :class:`~skebrm.energy.EnergyNet` goes through the written-out forward and backward
    of :mod:`skebrm._fused` (same gradients, buffers reused across micro-batches and,
    given a ``workspace``, across calls); ``fused=False`` forces autograd.
    """
    n_rows = X.shape[0]
    width = int(getattr(net, "candidate_width", 1024))
    rows = max(1, activation_budget // (samples.shape[1] * width))
    if fused is None:
        fused = supports_fused(net)
    if fused:
        return fused_nce_plus_gradients(
            net, X, samples, y, sigmas, penalty, rows_per_chunk=rows, workspace=workspace
        )
    total = 0.0
    for start in range(0, n_rows, rows):
        sl = slice(start, min(start + rows, n_rows))
        weight = (sl.stop - sl.start) / n_rows
        loss = nce_plus_loss(net(X[sl], samples[sl]), samples[sl], y[sl], sigmas, penalty)
        (loss * weight).backward()
        total += loss.detach().item() * weight
    return total


def train_energy_model(
    net: torch.nn.Module,
    X,
    y: np.ndarray,
    *,
    sigmas: torch.Tensor,
    beta: float,
    n_negatives: int,
    penalty: float,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    max_epochs: int,
    device: torch.device,
    generator: torch.Generator,
    validate: Callable[[torch.nn.Module], tuple[float, float, float]] | None = None,
    n_iter_no_change: int | None = None,
    tol: float = 0.0,
    progress=None,
) -> TrainingResult:
    """Fit ``net`` in place by NCE+ on rows ``X`` (n, d; may be a memmap) with rewards ``y``.

    ``validate(net)`` returns ``(refined_accuracy, base_accuracy, loss)`` on held-out
    pairs (``loss``: the NCE+ loss of the held-out rows on fixed noise draws). When given,
    the epoch with the best refined accuracy is kept, ties (within ``tol``) going to the
    lower held-out loss (by more than ``LOSS_TOL`` relative); training stops once neither
    has improved for
    ``n_iter_no_change`` epochs. The loss breaks ties because the refined accuracy is
    often flat over many epochs (the ascent from the base reward keeps most pair orders),
    and selecting on accuracy alone would then keep the least trained epoch.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    y_t = torch.as_tensor(y, dtype=torch.float32)
    sigmas = sigmas.to(device)
    result = TrainingResult()
    workspace = Workspace()
    best_score, best_loss, best_state, since_best = -np.inf, np.inf, None, 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        total, count = 0.0, 0
        for idx in _batches(len(y_t), batch_size, generator):
            xb = torch.from_numpy(np.asarray(X[idx], dtype=np.float32)).to(device)
            yb = y_t[idx].to(device)
            samples = sample_nce_noise(yb.cpu(), sigmas.cpu(), beta, n_negatives, generator)
            samples = samples.to(device)
            opt.zero_grad(set_to_none=True)
            loss = accumulate_nce_plus_gradients(
                net, xb, samples, yb, sigmas, penalty, workspace=workspace
            )
            opt.step()
            total += loss * len(idx)
            count += len(idx)
        record = {"epoch": epoch, "train_loss": total / count}
        if validate is not None:
            refined, base, val_loss = validate(net)
            record["val_accuracy"] = refined
            record["val_base_accuracy"] = base
            record["val_loss"] = val_loss
            better = refined > best_score + tol or (
                refined >= best_score - tol and val_loss < best_loss - LOSS_TOL * abs(best_loss)
            )
            if better:
                best_score, best_loss, since_best = max(refined, best_score), val_loss, 0
                best_state = copy.deepcopy(net.state_dict())
                result.best_epoch = epoch
            else:
                since_best += 1
        result.history.append(record)
        if progress is not None:
            progress.update(1)
            progress.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if validate is not None and n_iter_no_change is not None and since_best >= n_iter_no_change:
            result.stopped_early = True
            break
    if validate is not None:
        net.load_state_dict(best_state)
        if n_iter_no_change is not None and not result.stopped_early:
            warnings.warn(
                f"EnergyRewardCalibrator: max_epochs={max_epochs} reached before validation "
                f"accuracy stopped improving for n_iter_no_change={n_iter_no_change} epochs "
                f"(best epoch {result.best_epoch}); consider raising max_epochs.",
                ConvergenceWarning,
                stacklevel=3,
            )
    else:
        result.best_epoch = max_epochs
    net.eval()
    return result
