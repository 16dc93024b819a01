"""The training loop: batches, gradient accumulation over micro-batches, model selection.

:func:`training_setup` makes what a fit trains from the estimator's parameters (the reward
grid, the objective, the network spec), and :func:`run_training` trains it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from skebrm._fused import fused_plan_gradients, supports_fused
from skebrm._objectives import BatchPlan, make_objective
from skebrm._posterior import RewardGrid, build_network, network_spec
from skebrm.energy import Workspace

__all__ = [
    "ACTIVATION_BUDGET",
    "TrainingData",
    "TrainingResult",
    "TrainingSetup",
    "accumulate_gradients",
    "plan_loss",
    "run_training",
    "selection_validator",
    "train_energy_model",
    "training_setup",
]


@dataclass
class TrainingResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    #: messages for the estimator to warn with (it knows the user's stack level)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainingData:
    """The training rows of a fit.

    X : array-like (n, d), indexed lazily (may be a memmap)
    y : ndarray (n,), standardised rewards
    rows : ndarray of int
        Rows in the likelihood term (NCE+ / grid NLL).
    pairs : ndarray (P, 2) of int or None
        ``(chosen row, rejected row)`` of the pairs in the preference term; with pairs,
        batches are made of whole pairs and a row outside ``rows`` is only in the
        preference term.
    """

    X: object
    y: np.ndarray
    rows: np.ndarray
    pairs: np.ndarray | None = None

    def batches(self, batch_size: int, generator: torch.Generator):
        """Yield ``(row indices, likelihood mask or None)`` for one epoch."""
        if self.pairs is None:
            perm = torch.randperm(len(self.rows), generator=generator).numpy()
            for start in range(0, len(perm), batch_size):
                yield np.sort(self.rows[perm[start : start + batch_size]]), None
            return
        in_likelihood = np.zeros(len(self.y), dtype=bool)
        in_likelihood[self.rows] = True
        perm = torch.randperm(len(self.pairs), generator=generator).numpy()
        per_batch = max(1, batch_size // 2)
        for start in range(0, len(perm), per_batch):
            pairs = self.pairs[np.sort(perm[start : start + per_batch])]
            idx = pairs.reshape(-1)  # chosen, rejected, chosen, rejected, ...
            yield idx, in_likelihood[idx]


# Rows of a batch are pushed through the network in micro-batches whose widest
# per-candidate activation, (rows, K, width), holds about this many floats (32 MiB in
# float32), with gradients accumulated. Every chunk loss is normalised by the batch's
# totals, so the micro-batch losses add up to the batch loss and their gradients to the
# batch gradient up to the order of floating-point summation; peak memory no longer grows
# with the batch size. Measured at d = 2,048, M = 768 on the 2-core CPU of
# benchmarks/README.md: 2 to 42 rows per micro-batch all ran within 4 % of each other with
# the fused step; 10 rows is the middle of that plateau.
ACTIVATION_BUDGET = 1 << 23

# A held-out loss counts as lower (to break ties in validation accuracy) only when it
# drops by more than this share of the best loss so far.
LOSS_TOL = 1e-4

# Without validation, a fit of two epochs whose last one still lowered the training loss
# by more than this share, and by more than FALLING_Z standard errors of the two epochs'
# mean batch losses (fresh noise draws make the loss fluctuate), warns that it may be
# undertrained.
FALLING_TOL = 1e-2
FALLING_Z = 2.0
# With three epochs or more: a downward trend over the last FALLING_WINDOW epochs at this
# one-sided level.
FALLING_WINDOW = 5
FALLING_P = 0.05


def _still_falling(losses: list[float], spread: list[float]) -> str | None:
    """Why the training loss was still falling at the last epoch, or ``None``.

    Three epochs or more: a one-sided test of a downward linear trend over the last
    :data:`FALLING_WINDOW` epochs at level :data:`FALLING_P`. Two epochs: the last one
    lowered the loss by more than ``FALLING_TOL`` of it and by more than ``FALLING_Z``
    standard errors of the two epochs' mean batch losses.
    """
    from scipy import stats

    if len(losses) >= 3:
        window = losses[-FALLING_WINDOW:]
        fit = stats.linregress(np.arange(len(window)), window)
        p = fit.pvalue / 2 if fit.slope < 0 else 1.0
        if p < FALLING_P:
            return (
                f"{-fit.slope:.3g} per epoch over the last {len(window)} epochs, one-sided "
                f"trend test p = {p:.2g}"
            )
        return None
    if len(losses) == 2:
        prev, last = losses
        if prev - last > max(FALLING_TOL * abs(last), FALLING_Z * math.hypot(*spread)):
            return f"{prev:.4g} -> {last:.4g}"
    return None


def _standard_error(values: list[float]) -> float:
    if len(values) < 2:
        return math.inf
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _chunk_rows(net, plan: BatchPlan, activation_budget: int) -> int:
    width = int(getattr(net, "candidate_width", 1024))
    rows = max(1, activation_budget // (max(1, plan.n_candidates) * width))
    step = max(1, plan.chunk_rows)
    return max(step, rows // step * step)


def _candidates(plan: BatchPlan, start: int, stop: int) -> torch.Tensor:
    parts = []
    if plan.row_candidates is not None:
        parts.append(plan.row_candidates[start:stop])
    if plan.shared_candidates is not None:
        parts.append(plan.shared_candidates.reshape(1, -1).expand(stop - start, -1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def accumulate_gradients(
    net: torch.nn.Module,
    X: torch.Tensor,
    plan: BatchPlan,
    *,
    activation_budget: int = ACTIVATION_BUDGET,
    workspace: Workspace | None = None,
    fused: bool | None = None,
) -> float:
    """Add the gradient of a batch plan's loss to ``net``'s ``.grad``; return the loss.

    The batch ``X`` (B, d) is processed in micro-batches of about
    ``activation_budget // (K · net.candidate_width)`` rows (a multiple of
    ``plan.chunk_rows``, at least one), so that the result is the whole batch's loss and
    gradient up to the order of summation.

    An :class:`~skebrm.energy.EnergyNet` goes through the written-out forward and backward
    of :mod:`skebrm._fused` (same gradients, buffers reused across micro-batches and,
    given a ``workspace``, across calls); ``fused=False`` forces autograd.
    """
    rows = _chunk_rows(net, plan, activation_budget)
    if fused is None:
        fused = supports_fused(net)
    if fused:
        return fused_plan_gradients(net, X, plan, rows_per_chunk=rows, workspace=workspace)
    total = 0.0
    for start in range(0, X.shape[0], rows):
        stop = min(start + rows, X.shape[0])
        loss = plan.chunk_loss(net(X[start:stop], _candidates(plan, start, stop)), start, stop)
        loss.backward()
        total += loss.detach().item()
    return total


@torch.no_grad()
def plan_loss(
    net: torch.nn.Module, X: torch.Tensor, plan: BatchPlan, *, activation_budget=ACTIVATION_BUDGET
) -> float:
    """The plan's loss without gradients (held-out loss)."""
    rows = _chunk_rows(net, plan, activation_budget)
    total = 0.0
    for start in range(0, X.shape[0], rows):
        stop = min(start + rows, X.shape[0])
        f = net(X[start:stop], _candidates(plan, start, stop))
        total += float(plan.chunk_loss(f, start, stop))
    return total


def _check_diverged(net, loss: float, epoch: int, history: list, learning_rate) -> None:
    """Raise ``FloatingPointError`` when an epoch's loss or the weights are not finite."""
    weights_ok = all(bool(torch.isfinite(p).all()) for p in net.parameters())
    if math.isfinite(loss) and weights_ok:
        return
    losses = ", ".join(f"{h['train_loss']:.4g}" for h in history) + f"{', ' if history else ''}"
    what = (
        f"the training loss is {loss!r}"
        if not math.isfinite(loss)
        else "the weights hold NaN or inf"
    )
    raise FloatingPointError(
        f"EnergyRewardCalibrator.fit: the fit diverged: {what} after epoch {epoch} "
        f"(training losses {losses}{loss:.4g}); no model was kept. Lower learning_rate "
        f"(got {learning_rate!r}) and fit again."
    )


def train_energy_model(
    net: torch.nn.Module,
    data: TrainingData,
    objective,
    *,
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
    """Fit ``net`` in place on ``data`` with ``objective`` (AdamW, shuffled batches).

    ``validate(net)`` returns ``(refined_accuracy, base_accuracy, loss)`` on held-out
    pairs (``loss``: the objective's loss on the held-out rows, on fixed noise draws).
    When given, the epoch with the best refined accuracy is kept, ties (within ``tol``)
    going to the lower held-out loss (by more than ``LOSS_TOL`` relative); training stops
    once neither has improved for ``n_iter_no_change`` epochs. The loss breaks ties because
    the refined accuracy is often flat over many epochs (the ascent from the base reward
    keeps most pair orders), and selecting on accuracy alone would then keep the least
    trained epoch.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    y_all = torch.as_tensor(data.y, dtype=torch.float32)
    result = TrainingResult()
    workspace = Workspace()
    pairs = data.pairs is not None
    best_score, best_loss, best_state, since_best = -np.inf, np.inf, None, 0
    spread = []  # standard error of each epoch's mean batch loss
    for epoch in range(1, max_epochs + 1):
        net.train()
        total, count, batch_losses = 0.0, 0, []
        for idx, mask in data.batches(batch_size, generator):
            xb = torch.from_numpy(np.asarray(data.X[idx], dtype=np.float32)).to(device)
            likelihood = None if mask is None else torch.from_numpy(mask)
            plan = objective.plan(
                y_all[idx].to(device), likelihood=likelihood, pairs=pairs, generator=generator
            )
            opt.zero_grad(set_to_none=True)
            loss = accumulate_gradients(net, xb, plan, workspace=workspace)
            opt.step()
            total += loss * len(idx)
            count += len(idx)
            batch_losses.append(loss)
        train_loss = total / count
        _check_diverged(net, train_loss, epoch, result.history, learning_rate)
        spread.append(_standard_error(batch_losses))
        record = {"epoch": epoch, "train_loss": train_loss}
        if validate is not None:
            refined, base, val_loss = validate(net)
            record["val_accuracy"] = refined
            record["val_base_accuracy"] = base
            record["val_loss"] = val_loss if math.isfinite(val_loss) else None
            val_loss = val_loss if math.isfinite(val_loss) else math.inf
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
            progress.set_postfix(
                {k: round(v, 4) for k, v in record.items() if k != "epoch" and v is not None}
            )
        if validate is not None and n_iter_no_change is not None and since_best >= n_iter_no_change:
            result.stopped_early = True
            break
    if validate is not None:
        net.load_state_dict(best_state)
        if n_iter_no_change is not None and not result.stopped_early:
            result.warnings.append(
                f"EnergyRewardCalibrator: max_epochs={max_epochs} reached before validation "
                f"accuracy stopped improving for n_iter_no_change={n_iter_no_change} epochs "
                f"(best epoch {result.best_epoch}); consider raising max_epochs."
            )
    else:
        result.best_epoch = max_epochs
        falling = _still_falling([h["train_loss"] for h in result.history], spread)
        if falling:
            result.warnings.append(
                f"EnergyRewardCalibrator: the training loss was still falling at the last of "
                f"max_epochs={max_epochs} epochs ({falling}); the model may be undertrained. "
                "Raise max_epochs or learning_rate, or fit with validation_fraction and "
                "n_iter_no_change."
            )
    net.eval()
    return result


@dataclass(frozen=True)
class TrainingSetup:
    """What a fit trains: the reward grid, the objective on it, the network's spec and the
    dropout it was given."""

    grid: RewardGrid
    objective: object
    spec: dict
    dropout: float


def training_setup(
    est, n_features: int, y_train, *, sigmas, hidden, reward_hidden, caller: str
) -> TrainingSetup:
    """The grid, objective and network spec of a fit with ``est``'s parameters.

    The grid is fitted on the training rewards ``y_train`` (RM units) and widened by
    ``grid_margin · max(sigmas)`` on each side; a basis network's centres span one
    ``max(sigmas)`` more. ``dropout="auto"`` is the paper's 0.5 with ``"nce_plus"`` and 0
    with ``"grid_nll"``. ``sigmas``, ``hidden`` and ``reward_hidden`` are the checked
    parameters.
    """
    sig_max = float(sigmas.max())
    grid = RewardGrid.fit(
        y_train,
        target_std=est.target_std,
        margin=est.grid_margin * sig_max,
        size=est.grid_size,
        caller=caller,
    )
    objective = make_objective(
        est.objective,
        grid=(torch.as_tensor(grid.centres, dtype=torch.float32), grid.low, grid.width),
        sigmas=torch.as_tensor(sigmas, dtype=torch.float32),
        beta=est.beta,
        n_negatives=est.n_negatives,
        penalty=est.penalty,
        preference_weight=est.preference_weight,
    )
    dropout = est.dropout
    if dropout == "auto":
        dropout = 0.5 if est.objective == "nce_plus" else 0.0
    pad = (est.grid_margin + 1.0) * sig_max
    spec = network_spec(
        est.energy,
        n_features,
        hidden=hidden,
        reward_hidden=reward_hidden,
        n_basis=est.n_basis,
        dropout=float(dropout),
        basis_range=(grid.trusted[0] - pad, grid.trusted[1] + pad),
    )
    return TrainingSetup(grid, objective, spec, float(dropout))


def selection_validator(X, y, ys, sel, objective, posterior, settings, *, seed, device, pairs):
    """The epoch-selection callback on the selection rows ``sel`` (laid out chosen,
    rejected, ...): the refined and the base pair accuracy there, and the objective's loss
    on them (fixed noise draws, drawn once from ``seed + 1``)."""
    from skebrm._guard import pair_credit

    X_sel, y_sel = X[sel], y[sel]
    base_acc = float(pair_credit(y_sel).mean())
    val_plan = objective.plan(
        torch.as_tensor(ys[sel], dtype=torch.float32).to(device),
        pairs=pairs,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    X_sel_t = torch.from_numpy(np.asarray(X_sel, dtype=np.float32)).to(device)

    def validate(net):
        net.eval()
        refined = posterior(net).refine(X_sel, y_sel, settings)
        return float(pair_credit(refined).mean()), base_acc, plan_loss(net, X_sel_t, val_plan)

    return validate


def run_training(
    est, spec: dict, data: TrainingData, objective, *, y, posterior, select, seed, device
):
    """Build the network from ``spec`` and train it with ``est``'s parameters.

    The global torch RNG is forked (the caller's stream is left as it was) and seeded with
    ``seed``, which also seeds the batch order and noise draws; ``select`` (rows laid out
    chosen, rejected, ... or ``None``) adds epoch selection on those pairs, scored through
    ``posterior(net)`` with ``est``'s inference settings (``y``: the rewards in RM units,
    ``data.y`` standardised). BLAS threads are pinned to one
    for the fit, so that the result does not depend on the machine's thread count.
    Returns ``(module, TrainingResult)``, the module frozen in evaluation mode.
    """
    from threadpoolctl import threadpool_limits

    with torch.random.fork_rng(devices=[]), threadpool_limits(limits=1, user_api="blas"):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        module = build_network(spec).to(device)
        validate = None
        if select is not None:
            validate = selection_validator(
                data.X,
                y,
                data.y,
                select,
                objective,
                posterior,
                est._settings(),
                seed=seed,
                device=device,
                pairs=est.preference_weight > 0,
            )
        progress = None
        if est.verbose:
            from tqdm.auto import tqdm

            progress = tqdm(total=est.max_epochs, desc="EBRM fit", unit="epoch")
        try:
            result = train_energy_model(
                module,
                data,
                objective,
                learning_rate=est.learning_rate,
                weight_decay=est.weight_decay,
                batch_size=est.batch_size,
                max_epochs=est.max_epochs,
                device=device,
                generator=generator,
                validate=validate,
                n_iter_no_change=est.n_iter_no_change,
                tol=est.tol,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.close()
    for p in module.parameters():
        p.requires_grad_(False)
    return module, result
