"""``EnergyRewardCalibrator``: the EBRM estimator."""

from __future__ import annotations

import copy
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from skebrm import _inference as inf
from skebrm._compat import Interval, StrOptions, _fit_context
from skebrm._pairs import check_pairs, conflicting_pairs
from skebrm._training import ACTIVATION_BUDGET, train_energy_model
from skebrm.energy import BasisEnergyNet, EnergyNet, nce_plus_loss, sample_nce_noise
from skebrm.exceptions import RefinementWarning

__all__ = ["EnergyRewardCalibrator"]

_FINITE_CHUNK = 1 << 16


def _check_finite(arr, name: str, caller: str) -> None:
    """Finite check in row chunks, so a memory-mapped X is never copied whole."""
    for start in range(0, arr.shape[0], _FINITE_CHUNK):
        block = np.asarray(arr[start : start + _FINITE_CHUNK])
        if not np.isfinite(block).all():
            kind = "NaN" if np.isnan(block).any() else "infinity"
            raise ValueError(
                f"{caller}: Input {name} contains {kind}; every value must be finite. "
                f"Drop or impute the affected rows first."
            )


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("EnergyRewardCalibrator: device='cuda' but CUDA is not available.")
    return torch.device(device)


def _pair_accuracy(r: np.ndarray, idx_c: np.ndarray, idx_r: np.ndarray) -> float:
    diff = r[idx_c] - r[idx_r]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


class EnergyRewardCalibrator(RegressorMixin, BaseEstimator):
    """Energy-based reward model (EBRM) on top of a frozen reward model.

    Learns ``p(r | e) ∝ exp f(e, r)`` from a reward model's embeddings ``e`` (the
    input of its scoring head, ``X``) and its rewards ``r`` (``y``) by label-noise-aware
    noise-contrastive estimation (NCE+), after dropping the training pairs the RM
    already misorders. :meth:`predict` returns the refined reward, the mode of
    ``p(r | e)`` reached from the RM's own reward; the distribution itself gives
    uncertainty (:meth:`score_uncertainty`), intervals and preference probabilities.

    Parameters
    ----------
    sigmas : tuple of float, default=(3.5,)
        Scales of the noise mixture ``(1/K) Σ_k N(r, σ_k²)`` the negatives are drawn
        from, in standardised reward units (see ``target_std``).
    beta : float, default=0.1
        The positive is ``r + ν`` with ``ν`` from the same mixture scaled by ``beta``.
    n_negatives : int, default=768
        Negatives ``M`` per row.
    penalty : float, default=0.05
        Weight of the L2 penalty ``mean(f²)`` over all ``M + 1`` samples.
    energy : {"mlp", "basis"}, default="mlp"
        ``"mlp"``: the paper's network (:class:`skebrm.energy.EnergyNet`). ``"basis"``:
        ``f(e, r) = g(e)·ψ(r)`` with a Gaussian radial basis ψ
        (:class:`skebrm.energy.BasisEnergyNet`); much cheaper per reward candidate.
    reward_hidden : tuple of int, default=(16, 32, 64)
        Reward branch widths (``energy="mlp"``).
    hidden : tuple of int, default=(1024, 512)
        Trunk widths.
    n_basis : int, default=64
        Basis size for ``energy="basis"``.
    dropout : float, default=0.5
        Dropout after every trunk activation.
    learning_rate : float, default=9e-5
    weight_decay : float, default=1e-2
        AdamW settings.
    batch_size : int, default=256
    max_epochs : int, default=5
    filter_conflicts : bool, default=True
        With pair metadata, drop both rows of every training pair whose chosen reward is
        not strictly above its rejected reward (ties are dropped).
    validation_fraction : float or None, default=None
        With pair metadata, hold out this fraction of pairs (whole pairs, drawn before
        conflict filtering) and score the pairwise accuracy of the refined rewards after
        every epoch, next to the base rewards' accuracy. The best epoch is kept.
    n_iter_no_change : int or None, default=None
        With validation, stop once validation accuracy has not improved by more than
        ``tol`` for this many epochs; a ``ConvergenceWarning`` is raised if
        ``max_epochs`` runs out first.
    tol : float, default=0.0
        Minimum improvement of validation accuracy that counts.
    guard : {"warn", "base", "off"}, default="warn"
        What to do when the best validation accuracy of the refined rewards is below the
        base RM's: ``"warn"`` raises a :class:`~skebrm.exceptions.RefinementWarning`;
        ``"base"`` also makes ``predict(X, base_reward=...)`` return the base reward
        unchanged; ``"off"`` does nothing. Needs ``validation_fraction``.
    target_std : float, default=4.0
        Rewards are standardised to this standard deviation before training (the paper
        brought Skywork rewards to 4), so ``sigmas`` mean the same for every RM family.
        All outputs are in the RM's own units.
    grid_size : int, default=512
        Cells of the reward grid on which ``p(r | e)`` is normalised.
    grid_margin : float, default=1.0
        The grid covers the training rewards' range widened by
        ``grid_margin · max(sigmas)`` on each side (standardised units).
    ascent_steps : int, default=50
        Maximum steps of the accept/reject gradient ascent.
    ascent_step_size : float, default=0.5
        Initial step (standardised units) of the ascent from the base reward.
    ascent_shrink : float, default=0.2
        Step multiplier after a rejected step.
    inference_batch_size : int, default=1024
        Rows per chunk at inference.
    inference_dtype : {"float32", "float64"}, default="float32"
        Precision of inference. Either way the results do not depend on batch size or
        row order, bit for bit on CPU: every matrix product is padded to whole tiles of
        :data:`~skebrm._inference.ROW_TILE` rows. float64 is about half as fast on CPU;
        float32 and float64 refined rewards differ where an accept/reject decision of
        the ascent falls the other way (up to ~1e-2 RM units was seen on flat tops).
    random_state : int, RandomState instance or None, default=None
        Seeds weights, noise draws, shuffling and the validation split; with an int,
        CPU fits are bit-for-bit repeatable.
    device : {"auto", "cpu", "cuda"}, default="auto"
    verbose : int, default=0
        ``> 0`` shows a progress bar with epoch, loss and validation accuracy.

    Attributes
    ----------
    module_ : torch.nn.Module
        The fitted energy network (in eval mode).
    n_features_in_ : int
    n_pairs_ : int
        Pairs seen in fit (0 without pair metadata).
    n_pairs_dropped_ : int
        Training pairs dropped by conflict filtering.
    reward_mean_, reward_scale_ : float
        ``standardised = (y − reward_mean_) / reward_scale_``.
    trusted_range_ : tuple of float
        Range of the training rewards (RM units); base rewards outside it start the
        ascent from the global mode (see :meth:`predict`).
    grid_ : ndarray of shape (grid_size,)
        Cell centres of the inference grid, RM units.
    history_ : list of dict
        Per-epoch ``train_loss`` and, with validation, ``val_accuracy`` and
        ``val_base_accuracy``.
    best_epoch_ : int
    refinement_helps_ : bool or None
        Whether the kept epoch's validation accuracy is at least the base RM's
        (``None`` without validation).

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import EnergyRewardCalibrator
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 8)).astype(np.float32)
    >>> y = X[:, 0] + 0.1 * rng.normal(size=400)
    >>> cal = EnergyRewardCalibrator(hidden=(32, 16), n_negatives=64, max_epochs=2,
    ...                              random_state=0).fit(X, y)
    >>> cal.predict(X[:3], base_reward=y[:3]).shape
    (3,)
    >>> bool((cal.score_uncertainty(X[:3]) > 0).all())
    True
    """

    _parameter_constraints: dict = {
        "sigmas": ["array-like"],
        "beta": [Interval(Real, 0, None, closed="neither")],
        "n_negatives": [Interval(Integral, 1, None, closed="left")],
        "penalty": [Interval(Real, 0, None, closed="left")],
        "energy": [StrOptions({"mlp", "basis"})],
        "reward_hidden": ["array-like"],
        "hidden": ["array-like"],
        "n_basis": [Interval(Integral, 2, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "filter_conflicts": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "guard": [StrOptions({"warn", "base", "off"})],
        "target_std": [Interval(Real, 0, None, closed="neither")],
        "grid_size": [Interval(Integral, 16, None, closed="left")],
        "grid_margin": [Interval(Real, 0, None, closed="left")],
        "ascent_steps": [Interval(Integral, 0, None, closed="left")],
        "ascent_step_size": [Interval(Real, 0, None, closed="neither")],
        "ascent_shrink": [Interval(Real, 0, 1, closed="neither")],
        "inference_batch_size": [Interval(Integral, 1, None, closed="left")],
        "inference_dtype": [StrOptions({"float32", "float64"})],
        "random_state": ["random_state"],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        sigmas=(3.5,),
        beta: float = 0.1,
        n_negatives: int = 768,
        penalty: float = 0.05,
        energy: str = "mlp",
        reward_hidden=(16, 32, 64),
        hidden=(1024, 512),
        n_basis: int = 64,
        dropout: float = 0.5,
        learning_rate: float = 9e-5,
        weight_decay: float = 1e-2,
        batch_size: int = 256,
        max_epochs: int = 5,
        filter_conflicts: bool = True,
        validation_fraction: float | None = None,
        n_iter_no_change: int | None = None,
        tol: float = 0.0,
        guard: str = "warn",
        target_std: float = 4.0,
        grid_size: int = 512,
        grid_margin: float = 1.0,
        ascent_steps: int = 50,
        ascent_step_size: float = 0.5,
        ascent_shrink: float = 0.2,
        inference_batch_size: int = 1024,
        inference_dtype: str = "float32",
        random_state=None,
        device: str = "auto",
        verbose: int = 0,
    ):
        self.sigmas = sigmas
        self.beta = beta
        self.n_negatives = n_negatives
        self.penalty = penalty
        self.energy = energy
        self.reward_hidden = reward_hidden
        self.hidden = hidden
        self.n_basis = n_basis
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.filter_conflicts = filter_conflicts
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.guard = guard
        self.target_std = target_std
        self.grid_size = grid_size
        self.grid_margin = grid_margin
        self.ascent_steps = ascent_steps
        self.ascent_step_size = ascent_step_size
        self.ascent_shrink = ascent_shrink
        self.inference_batch_size = inference_batch_size
        self.inference_dtype = inference_dtype
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def _validate_X(self, X, *, reset: bool, y=None, caller: str):
        kwargs = dict(
            dtype=[np.float32, np.float64, np.float16],
            ensure_all_finite=False,
            ensure_min_samples=2 if reset else 1,
            copy=False,
        )
        if y is None:
            X = validate_data(self, X, reset=reset, **kwargs)
        else:
            X, y = validate_data(self, X, y, reset=reset, y_numeric=True, **kwargs)
        _check_finite(X, "X", caller)
        if y is not None:
            y = np.asarray(y, dtype=np.float64)
            _check_finite(y, "y", caller)
            return X, y
        return X

    def _sigmas_array(self) -> np.ndarray:
        sigmas = np.atleast_1d(np.asarray(self.sigmas, dtype=np.float64))
        if sigmas.ndim != 1 or sigmas.size == 0 or not np.all(sigmas > 0):
            raise ValueError(
                "EnergyRewardCalibrator: sigmas must be a non-empty sequence of positive "
                f"floats, got {self.sigmas!r}."
            )
        return sigmas

    def _build_module(self, n_features: int, sig_max: float, y_range) -> torch.nn.Module:
        if self.energy == "basis":
            low = y_range[0] - (self.grid_margin + 1.0) * sig_max
            high = y_range[1] + (self.grid_margin + 1.0) * sig_max
            return BasisEnergyNet(
                n_features,
                hidden=tuple(int(h) for h in self.hidden),
                n_basis=self.n_basis,
                low=low,
                high=high,
                dropout=self.dropout,
            )
        return EnergyNet(
            n_features,
            reward_hidden=tuple(int(h) for h in self.reward_hidden),
            hidden=tuple(int(h) for h in self.hidden),
            dropout=self.dropout,
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, *, pair_id=None, chosen=None):
        """Fit the energy model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Reward-model embeddings, one row per response. A ``numpy.memmap`` is read
            in mini-batches and never copied whole.
        y : array-like of shape (n_samples,)
            The frozen reward model's reward for each row.
        pair_id : array-like of shape (n_samples,), optional
            The preference pair of each row (every pair has two rows). Routed as
            metadata inside ``Pipeline`` / ``GridSearchCV`` (``set_fit_request``).
        chosen : array-like of bool of shape (n_samples,), optional
            True for the preferred response of its pair.

        Returns
        -------
        self : EnergyRewardCalibrator
        """
        caller = "EnergyRewardCalibrator.fit"
        if y is None:
            raise ValueError(
                f"{caller} requires y to be passed, but the target y is None: pass the "
                "frozen reward model's reward of every row."
            )
        X, y = self._validate_X(X, reset=True, y=y, caller=caller)
        n = X.shape[0]
        sigmas = self._sigmas_array()
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))

        train_rows = np.arange(n)
        val = None
        self.n_pairs_ = 0
        self.n_pairs_dropped_ = 0
        if pair_id is not None or chosen is not None:
            idx_c, idx_r = check_pairs(pair_id, chosen, n, caller=caller)
            self.n_pairs_ = len(idx_c)
            pair_rows = np.arange(len(idx_c))
            if self.validation_fraction is not None:
                n_val = int(round(self.validation_fraction * len(idx_c)))
                if n_val < 1 or n_val >= len(idx_c):
                    raise ValueError(
                        f"{caller}: validation_fraction={self.validation_fraction} of "
                        f"{len(idx_c)} pairs leaves no validation or no training pairs."
                    )
                perm = rng.permutation(len(idx_c))
                val_pairs, pair_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
                val = (idx_c[val_pairs], idx_r[val_pairs])
            if self.filter_conflicts:
                bad = conflicting_pairs(y, idx_c[pair_rows], idx_r[pair_rows])
                self.n_pairs_dropped_ = int(bad.sum())
                pair_rows = pair_rows[~bad]
                if pair_rows.size == 0:
                    raise ValueError(
                        f"{caller}: every training pair is conflicting (the reward of the "
                        "chosen response is never strictly above the rejected one), so "
                        "nothing is left to fit. Check the chosen labels, or set "
                        "filter_conflicts=False."
                    )
            train_rows = np.sort(np.r_[idx_c[pair_rows], idx_r[pair_rows]])
        elif self.validation_fraction is not None:
            raise ValueError(
                f"{caller}: validation_fraction={self.validation_fraction} needs pair "
                "metadata (pair_id and chosen) to score pairwise accuracy."
            )

        y_train = y[train_rows]
        scale = float(np.std(y_train))
        if not scale > 1e-12 * max(1.0, float(np.abs(y_train).max())):
            raise ValueError(
                f"{caller}: y is constant (every training reward equals {y_train[0]!r}); "
                "an energy model over rewards needs rewards that vary."
            )
        self.reward_mean_ = float(np.mean(y_train))
        self.reward_scale_ = scale / self.target_std
        ys = (y - self.reward_mean_) / self.reward_scale_
        ys_train = ys[train_rows]
        lo_s, hi_s = float(ys_train.min()), float(ys_train.max())
        self._trusted_s = (lo_s, hi_s)
        self.trusted_range_ = (float(y_train.min()), float(y_train.max()))
        margin = self.grid_margin * float(sigmas.max())
        self._grid_s, self._grid_width_s = inf.make_grid(
            lo_s - margin, hi_s + margin, self.grid_size
        )
        self.grid_ = self._to_raw(self._grid_s)

        device = _resolve_device(self.device)
        self.device_ = str(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            self.module_ = self._build_module(X.shape[1], float(sigmas.max()), (lo_s, hi_s))
            self.module_.to(device)

            validate = None
            if val is not None:
                rows = np.unique(np.r_[val[0], val[1]])
                pos = np.searchsorted(rows, val[0]), np.searchsorted(rows, val[1])
                X_val, y_val = X[rows], ys[rows]
                base_acc = _pair_accuracy(y_val, *pos)

                val_loss = _heldout_loss(
                    X_val,
                    y_val,
                    sigmas=sigmas,
                    beta=self.beta,
                    n_negatives=self.n_negatives,
                    penalty=self.penalty,
                    device=device,
                    seed=seed + 1,
                )

                def validate(net):
                    net.eval()
                    refined = self._refine_s(
                        X_val, y_val, net=_inference_copy(net, self.inference_dtype)
                    )
                    return _pair_accuracy(refined, *pos), base_acc, val_loss(net)

            progress = None
            if self.verbose:
                from tqdm.auto import tqdm

                progress = tqdm(total=self.max_epochs, desc="EBRM fit", unit="epoch")
            try:
                result = train_energy_model(
                    self.module_,
                    _RowSubset(X, train_rows),
                    ys_train,
                    sigmas=torch.as_tensor(sigmas, dtype=torch.float32),
                    beta=self.beta,
                    n_negatives=self.n_negatives,
                    penalty=self.penalty,
                    learning_rate=self.learning_rate,
                    weight_decay=self.weight_decay,
                    batch_size=self.batch_size,
                    max_epochs=self.max_epochs,
                    device=device,
                    generator=generator,
                    validate=validate,
                    n_iter_no_change=self.n_iter_no_change,
                    tol=self.tol,
                    progress=progress,
                )
            finally:
                if progress is not None:
                    progress.close()
        for p in self.module_.parameters():
            p.requires_grad_(False)
        self._inference_module = _inference_copy(self.module_, self.inference_dtype)
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.refinement_helps_ = None
        if val is not None:
            best = self.history_[[h["epoch"] for h in self.history_].index(self.best_epoch_)]
            self.refinement_helps_ = bool(best["val_accuracy"] >= best["val_base_accuracy"])
            if not self.refinement_helps_ and self.guard != "off":
                warnings.warn(
                    "EnergyRewardCalibrator: on held-out pairs the refined rewards rank "
                    f"{best['val_accuracy']:.3f} of pairs correctly, below the base "
                    f"reward model's {best['val_base_accuracy']:.3f}. The energy model "
                    "hurts here: train longer, lower dropout, or use the base reward"
                    + (" (guard='base' does so in predict)." if self.guard == "warn" else "."),
                    RefinementWarning,
                    stacklevel=2,
                )
        return self

    # --------------------------------------------------------------- internals
    def _to_raw(self, r_s):
        return np.asarray(r_s, dtype=np.float64) * self.reward_scale_ + self.reward_mean_

    def _to_std(self, r):
        return (np.asarray(r, dtype=np.float64) - self.reward_mean_) / self.reward_scale_

    def _device_module(self):
        """The inference copy of ``module_`` (``inference_dtype``) on the requested device."""
        device = _resolve_device(self.device)
        net = self._inference_module
        dtype = getattr(torch, self.inference_dtype)
        if next(net.parameters()).device != device or _net_dtype(net) != dtype:
            net.to(device, dtype)  # in place: set_params after fit takes effect
        return net, device

    def _chunks(self, X, net, device):
        """Yield (slice, embedded rows) in chunks of ``inference_batch_size``.

        The embedded rows are padded with zero rows to a multiple of
        :data:`~skebrm._inference.ROW_TILE` (so results do not depend on the batching);
        callers pad their per-row inputs to ``h.shape[0]`` and keep the first rows.
        """
        dtype = next(net.parameters()).dtype
        for start in range(0, X.shape[0], self.inference_batch_size):
            sl = slice(start, min(start + self.inference_batch_size, X.shape[0]))
            xb = torch.from_numpy(np.array(X[sl])).to(device, dtype)
            xb = inf.pad_rows(xb, inf.tile_rows(xb.shape[0]))
            with torch.no_grad():
                yield sl, net.embed(xb)

    def _global_mode_s(self, net, h, grid_t):
        """Global mode per row: best grid point refined by the ascent.

        The ascent starts at the best grid point with the step ``1 / |f''|`` of the grid's
        local quadratic model (:func:`~skebrm._inference.grid_newton_steps`) and stops a
        row once its move is below ``1e-4`` cell widths (or after ``ascent_steps``).

        Returns ``(mode, energy at the mode, grid energies (B, G))``.
        """
        n = h.shape[0]
        h = inf.pad_rows(h, inf.tile_rows(n))
        f = inf.grid_energies(net, h, grid_t)
        r, f_r = inf.ascend(
            net,
            h,
            grid_t[f.argmax(dim=1)],
            max_steps=self.ascent_steps,
            step_size=inf.grid_newton_steps(f, self._grid_width_s),
            shrink=self.ascent_shrink,
            tol=1e-4 * self._grid_width_s,
        )
        return r[:n], f_r[:n], f[:n]

    def _refine_s(self, X, base_s, *, net=None):
        """Hybrid-initialised mode in standardised units (see :meth:`predict`)."""
        if net is None:
            net, device = self._device_module()
        else:
            device = next(net.parameters()).device
        dtype = next(net.parameters()).dtype
        grid_t = torch.as_tensor(self._grid_s, dtype=dtype, device=device)
        lo, hi = self._trusted_s
        out = np.empty(X.shape[0])
        for sl, h in self._chunks(X, net, device):
            start = torch.as_tensor(base_s[sl], dtype=dtype, device=device)
            start = inf.pad_rows(start, h.shape[0])
            outside = (start < lo) | (start > hi)
            if bool(outside.any()):
                h_out = h[outside]
                r_g, f_g, _ = self._global_mode_s(net, h_out, grid_t)
                m = inf.tile_rows(h_out.shape[0])
                with torch.no_grad():
                    f_b = net.energy_from_embedded(
                        inf.pad_rows(h_out, m), inf.pad_rows(start[outside, None], m)
                    )[: h_out.shape[0], 0]
                start[outside] = torch.where(f_g > f_b, r_g, start[outside])
            r, _ = inf.ascend(
                net,
                h,
                start,
                max_steps=self.ascent_steps,
                step_size=self._ascent_step_s(),
                shrink=self.ascent_shrink,
            )
            out[sl] = r[: sl.stop - sl.start].double().cpu().numpy()
        return out

    def _ascent_step_s(self) -> float:
        return float(self.ascent_step_size)

    def _grid_energies_np(self, X) -> np.ndarray:
        net, device = self._device_module()
        grid_t = torch.as_tensor(self._grid_s, dtype=_net_dtype(net), device=device)
        out = np.empty((X.shape[0], self.grid_size))
        for sl, h in self._chunks(X, net, device):
            f = inf.grid_energies(net, h, grid_t)[: sl.stop - sl.start]
            out[sl] = f.double().cpu().numpy()
        return out

    def _check_X(self, X, caller):
        check_is_fitted(self)
        return self._validate_X(X, reset=False, caller=caller)

    def _check_rewards(self, r, n, name, caller):
        r = np.asarray(r, dtype=np.float64)
        if r.ndim != 1 or r.shape[0] != n:
            raise ValueError(
                f"{caller}: {name} must have shape ({n},) to align with X, got shape {r.shape}."
            )
        _check_finite(r, name, caller)
        return r

    # --------------------------------------------------------------- inference
    def predict(self, X, *, base_reward=None):
        """The refined reward: a mode of ``p(r | e)``.

        With ``base_reward`` (the RM's own reward; hybrid initialisation, as in the
        paper) the mode is reached by monotone accept/reject gradient ascent starting at
        ``base_reward``: the energy at the result is never below the energy at the start.
        Where the paper starts from a random point (a base reward outside the range of
        the training rewards, ``trusted_range_``), this estimator starts instead from the
        global mode on the grid, unless the energy is higher at the base reward itself;
        the result is deterministic. Without ``base_reward``: the global mode, found by
        evaluating the energy on the whole grid in one batched pass and refining the best
        grid point by the same accept/reject ascent, with the step ``1 / |f''|`` of the
        grid's local quadratic model, until the move is below ``1e-4`` cell widths.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        base_reward : array-like of shape (n_samples,), optional
            Routed as metadata in a ``Pipeline`` (``set_predict_request``).

        Returns
        -------
        ndarray of shape (n_samples,)
            Refined rewards in the RM's units.
        """
        caller = "EnergyRewardCalibrator.predict"
        X = self._check_X(X, caller)
        if base_reward is None:
            net, device = self._device_module()
            grid_t = torch.as_tensor(self._grid_s, dtype=_net_dtype(net), device=device)
            out = np.empty(X.shape[0])
            for sl, h in self._chunks(X, net, device):
                r = self._global_mode_s(net, h, grid_t)[0][: sl.stop - sl.start]
                out[sl] = r.double().cpu().numpy()
            return self._to_raw(out)
        base = self._check_rewards(base_reward, X.shape[0], "base_reward", caller)
        if self.guard == "base" and self.refinement_helps_ is False:
            return base.copy()
        return self._to_raw(self._refine_s(X, self._to_std(base)))

    def predict_energy(self, X, r):
        """The (unnormalised) log-density ``f(e, r)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        r : array-like of shape (n_samples,) or (n_samples, k)
            Rewards in RM units, one or ``k`` per row.

        Returns
        -------
        ndarray of the shape of ``r``
        """
        caller = "EnergyRewardCalibrator.predict_energy"
        X = self._check_X(X, caller)
        r = np.asarray(r, dtype=np.float64)
        if r.ndim not in (1, 2) or r.shape[0] != X.shape[0]:
            raise ValueError(
                f"{caller}: r must have shape ({X.shape[0]},) or ({X.shape[0]}, k), got {r.shape}."
            )
        r2 = self._to_std(r.reshape(r.shape[0], -1))
        net, device = self._device_module()
        out = np.empty(r2.shape)
        for sl, h in self._chunks(X, net, device):
            rr = torch.as_tensor(r2[sl], dtype=_net_dtype(net), device=device)
            with torch.no_grad():
                f = net.energy_from_embedded(h, inf.pad_rows(rr, h.shape[0]))
            out[sl] = f[: sl.stop - sl.start].double().cpu().numpy()
        return out.reshape(r.shape)

    def predict_log_density_grid(self, X):
        """``log p(r | e)`` on the inference grid.

        Returns
        -------
        grid : ndarray of shape (grid_size,)
            Cell centres, RM units (equal to ``grid_``).
        log_density : ndarray of shape (n_samples, grid_size)
            Log-density (RM units) at each centre; ``p`` is uniform inside a cell, so
            ``exp(log_density).sum(1) * cell_width == 1``.
        """
        X = self._check_X(X, "EnergyRewardCalibrator.predict_log_density_grid")
        logd = inf.grid_log_density(self._grid_energies_np(X), self._grid_width_s)
        return self.grid_.copy(), logd - np.log(self.reward_scale_)

    def log_density(self, X, r):
        """``log p(r | e)`` at the rewards ``r`` (RM units), normalised on the grid.

        ``f(e, r) − log Z(e)`` with ``Z`` the grid sum; ``−inf`` outside the grid's range.
        """
        caller = "EnergyRewardCalibrator.log_density"
        X = self._check_X(X, caller)
        r = self._check_rewards(r, X.shape[0], "r", caller)
        f_grid = self._grid_energies_np(X)
        m = f_grid.max(axis=1)
        log_z = m + np.log(np.exp(f_grid - m[:, None]).sum(axis=1)) + np.log(self._grid_width_s)
        f = self.predict_energy(X, r)
        out = f - log_z - np.log(self.reward_scale_)
        half = self._grid_width_s * self.grid_size / 2
        centre = (self._grid_s[0] + self._grid_s[-1]) / 2
        out[np.abs(self._to_std(r) - centre) > half] = -np.inf
        return out

    def predict_mean(self, X):
        """The mean of ``p(r | e)`` (RM units)."""
        X = self._check_X(X, "EnergyRewardCalibrator.predict_mean")
        mean, _ = inf.grid_mean_std(self._grid_energies_np(X), self._grid_s, self._grid_width_s)
        return self._to_raw(mean)

    def score_uncertainty(self, X):
        """The standard deviation of ``p(r | e)`` (RM units); higher is more uncertain.

        ``p(r | e)`` is normalised exactly on ``grid_size`` cells covering the training
        rewards' range widened by ``grid_margin · max(sigmas)`` (standardised units) on
        each side, with the density uniform inside each cell.
        """
        X = self._check_X(X, "EnergyRewardCalibrator.score_uncertainty")
        _, std = inf.grid_mean_std(self._grid_energies_np(X), self._grid_s, self._grid_width_s)
        return std * self.reward_scale_

    def predict_quantiles(self, X, q):
        """Quantiles of ``p(r | e)``: array of shape (n_samples, len(q)), RM units."""
        caller = "EnergyRewardCalibrator.predict_quantiles"
        X = self._check_X(X, caller)
        q = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if q.ndim != 1 or np.any((q < 0) | (q > 1)) or not np.isfinite(q).all():
            raise ValueError(f"{caller}: q must be levels in [0, 1], got {q!r}.")
        qs = inf.grid_quantiles(self._grid_energies_np(X), self._grid_s, self._grid_width_s, q)
        return self._to_raw(qs)

    def predict_interval(self, X, alpha: float = 0.1):
        """Central ``1 − alpha`` interval of ``p(r | e)``: (n_samples, 2), RM units."""
        if not isinstance(alpha, Real) or not 0 < alpha < 1:
            raise ValueError(
                f"EnergyRewardCalibrator.predict_interval: alpha must be in (0, 1), got {alpha!r}."
            )
        return self.predict_quantiles(X, [alpha / 2, 1 - alpha / 2])

    def predict_distribution(self, X, *, quantiles=(0.05, 0.5, 0.95)) -> dict:
        """Everything the grid gives, from one pass of the energy over the grid.

        Cheaper than calling :meth:`predict`, :meth:`predict_mean`,
        :meth:`score_uncertainty`, :meth:`predict_quantiles` and
        :meth:`predict_log_density_grid` one after the other (each evaluates the grid).

        Returns
        -------
        dict with, in RM units:
            ``mode`` (n,) the global mode (as ``predict(X)``), ``mean`` (n,), ``std`` (n,),
            ``quantiles`` (n, len(quantiles)), ``grid`` (G,) and ``log_density`` (n, G).
        """
        caller = "EnergyRewardCalibrator.predict_distribution"
        X = self._check_X(X, caller)
        q = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
        if q.ndim != 1 or np.any((q < 0) | (q > 1)) or not np.isfinite(q).all():
            raise ValueError(f"{caller}: quantiles must be levels in [0, 1], got {quantiles!r}.")
        net, device = self._device_module()
        grid_t = torch.as_tensor(self._grid_s, dtype=_net_dtype(net), device=device)
        n = X.shape[0]
        energies = np.empty((n, self.grid_size))
        mode = np.empty(n)
        for sl, h in self._chunks(X, net, device):
            r, _, f = self._global_mode_s(net, h, grid_t)
            energies[sl] = f[: sl.stop - sl.start].cpu().numpy()
            mode[sl] = r[: sl.stop - sl.start].cpu().numpy()
        mean, std = inf.grid_mean_std(energies, self._grid_s, self._grid_width_s)
        qs = inf.grid_quantiles(energies, self._grid_s, self._grid_width_s, q)
        log_density = inf.grid_log_density(energies, self._grid_width_s)
        return {
            "mode": self._to_raw(mode),
            "mean": self._to_raw(mean),
            "std": std * self.reward_scale_,
            "quantiles": self._to_raw(qs),
            "grid": self.grid_.copy(),
            "log_density": log_density - np.log(self.reward_scale_),
        }

    def preference_probability(self, X_a, X_b):
        """``P(r_a > r_b)`` for the independent distributions of row pairs (ties ½)."""
        caller = "EnergyRewardCalibrator.preference_probability"
        X_a = self._check_X(X_a, caller)
        X_b = self._check_X(X_b, caller)
        if X_a.shape[0] != X_b.shape[0]:
            raise ValueError(
                f"{caller}: X_a and X_b must have the same number of rows, got "
                f"{X_a.shape[0]} and {X_b.shape[0]}."
            )
        return inf.grid_preference_probability(
            self._grid_energies_np(X_a), self._grid_energies_np(X_b)
        )

    # ------------------------------------------------------------ persistence
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_inference_module", None)
        if "module_" in state:
            state["module_"] = copy.deepcopy(state["module_"]).to("cpu")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "module_" in state:
            self._inference_module = _inference_copy(self.module_, self.inference_dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _heldout_loss(X, y, *, sigmas, beta, n_negatives, penalty, device, seed):
    """A function of the network: its NCE+ loss on held-out rows, on fixed noise draws."""
    gen = torch.Generator().manual_seed(seed)
    y_t = torch.as_tensor(y, dtype=torch.float32)
    sig = torch.as_tensor(sigmas, dtype=torch.float32)
    samples = sample_nce_noise(y_t, sig, beta, n_negatives, gen)
    X_t = torch.from_numpy(np.asarray(X, dtype=np.float32))
    rows = max(1, ACTIVATION_BUDGET // ((n_negatives + 1) * 1024))

    @torch.no_grad()
    def loss(net) -> float:
        total = 0.0
        for start in range(0, len(y_t), rows):
            sl = slice(start, start + rows)
            s = samples[sl].to(device)
            f = net(X_t[sl].to(device), s)
            part = nce_plus_loss(f, s, y_t[sl].to(device), sig.to(device), penalty)
            total += part.item() * s.shape[0]
        return total / len(y_t)

    return loss


def _net_dtype(net: torch.nn.Module) -> torch.dtype:
    return next(net.parameters()).dtype


def _inference_copy(net: torch.nn.Module, dtype: str = "float32") -> torch.nn.Module:
    """An eval-mode, gradient-free copy of ``net`` in ``dtype``."""
    out = copy.deepcopy(net).to(getattr(torch, dtype)).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class _RowSubset:
    """A view of ``X[rows]`` indexed lazily, so a memmap is never copied whole."""

    def __init__(self, X, rows):
        self.X = X
        self.rows = rows

    def __getitem__(self, idx):
        return self.X[self.rows[idx]]

    def __len__(self):
        return len(self.rows)
