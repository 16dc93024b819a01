"""``EnergyRewardCalibrator``: the EBRM estimator (the scikit-learn shell).

``fit`` validates, lays out the pairs (:mod:`skebrm._pairs`), sets up the reward grid,
objective and network and trains (:mod:`skebrm._training`), decides the guard
(:mod:`skebrm._guard`) and sets the fitted state at once. The numerics live in those
modules, in :mod:`skebrm._posterior`, :mod:`skebrm._objectives` and
:class:`skebrm.GridDistribution`. The mixins hold the guard, the methods that read the
posterior and saving and pickling (:mod:`skebrm._persistence`).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_random_state

from skebrm._compat import Interval, StrOptions, _fit_context
from skebrm._guard import GuardMixin, pair_credit
from skebrm._pairs import check_pairs, fit_layout
from skebrm._params import check_fit_params, check_rewards, draw_seed, validate_inputs
from skebrm._persistence import PersistenceMixin
from skebrm._posterior import PosteriorMethodsMixin, resolve_device
from skebrm._training import TrainingData, run_training, training_setup
from skebrm.exceptions import ConvergenceWarning, FallbackWarning, warn_user

__all__ = ["EnergyRewardCalibrator"]

_NAME = "EnergyRewardCalibrator"
_WARNED: set[str] = set()  # fallbacks already announced in this process


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warn_user(message, FallbackWarning)


class EnergyRewardCalibrator(
    GuardMixin, PosteriorMethodsMixin, PersistenceMixin, RegressorMixin, BaseEstimator
):
    """Energy-based reward model (EBRM) on top of a frozen reward model.

    Learns ``p(r | e) ∝ exp f(e, r)`` from a reward model's embeddings ``e`` (the input of
    its scoring head, ``X``) and its rewards ``r`` (``y``). :meth:`predict` returns the
    refined reward, the mode of ``p(r | e)`` reached from the RM's own reward; the
    distribution itself gives uncertainty (:meth:`score_uncertainty`), intervals and
    preference probabilities, all exact on a grid (:class:`~skebrm.GridDistribution`).

    Two objectives fit the density: ``"nce_plus"``, the paper's label-noise-aware NCE+
    after dropping the training pairs the RM already misorders, and ``"grid_nll"`` (beyond
    the paper), the exact likelihood of ``y + ν`` under the grid-normalised density. Both
    fit the RM's *own* reward: the density says where the RM's reward is noisy, not where
    the RM is wrong. ``preference_weight > 0`` (beyond the paper) adds
    ``−log P(r_chosen > r_rejected)`` on the training pairs, so the labels move rewards.

    The defaults are the paper's hyperparameters (``conf/calibrator/paper.yaml``). They
    train little on small data in 5 epochs: without validation, a ``ConvergenceWarning``
    says when the training loss was still falling at the last epoch (raise ``max_epochs``
    or ``learning_rate``, or see ``conf/calibrator/basis.yaml``). A fit whose loss or
    weights become NaN or infinite raises ``FloatingPointError`` and keeps the previous
    model.

    Parameters
    ----------
    objective : {"nce_plus", "grid_nll"}, default="nce_plus"
        Density objective (see above).
    preference_weight : float, default=0.0
        Weight of the preference term (0: the paper's method). Needs pair metadata.
    sigmas : tuple of float, default=(3.5,)
        Scales of the noise mixture ``(1/K) Σ_k N(r, σ_k²)`` (standardised units) of NCE+'s
        negatives; the label noise ``ν`` of both objectives uses scales ``β·σ_k``.
    beta : float, default=0.1
        Scale of the label noise relative to the negatives' scales: the noise ``ν`` of
        both objectives has scales ``β·σ_k``.
    n_negatives : int, default=768
        NCE+ negatives ``M`` per row.
    penalty : float, default=0.05
        Weight of the L2 penalty ``mean(f²)`` over the objective's candidates.
    energy : {"mlp", "basis"}, default="mlp"
        The paper's network (:class:`skebrm.energy.EnergyNet`), or ``f(e, r) = g(e)·ψ(r)``
        with a Gaussian radial basis ψ (:class:`skebrm.energy.BasisEnergyNet`, cheaper).
    reward_hidden, hidden : tuple of int, default=(16, 32, 64), (1024, 512)
        Reward branch (``"mlp"``, may be empty) and trunk widths.
    n_basis : int, default=64
        Basis size for ``energy="basis"``.
    dropout : float or "auto", default="auto"
        Dropout after every trunk activation. ``"auto"``: the paper's 0.5 with
        ``"nce_plus"``, 0 with ``"grid_nll"`` (dropout widens and flattens the density).
    learning_rate : float, default=9e-5
        AdamW learning rate.
    weight_decay : float, default=1e-2
        AdamW settings.
    batch_size : int, default=256
        Rows per step (with the preference term, ``batch_size // 2`` whole pairs).
    max_epochs : int, default=5
        Most passes over the training rows.
    filter_conflicts : bool, default=True
        Keep out of the likelihood term the training pairs the RM misorders (or ties).
    validation_fraction : float or None, default=None
        With pair metadata, hold out this fraction of pairs (whole ``groups``), half to
        select the epoch (refined pairwise accuracy, ties to the lower held-out loss) and
        half, never seen by selection, to decide the guard.
    n_iter_no_change : int or None, default=None
        With validation, stop once validation accuracy has not improved by more than
        ``tol`` for this many epochs (``ConvergenceWarning`` if ``max_epochs`` runs out).
    tol : float, default=0.0
        Smallest rise in validation accuracy that counts as an improvement, for epoch
        selection and ``n_iter_no_change``.
    guard : {"warn", "base", "off"}, default="warn"
        What to do when refinement does not help on the guard pairs: ``"warn"`` raises a
        :class:`~skebrm.exceptions.RefinementWarning`; ``"base"`` also makes
        ``predict(X, base_reward=...)`` return the base reward; ``"off"`` does nothing.
        Needs ``validation_fraction`` or a call of :meth:`fit_guard` after ``fit``.
    guard_confidence : float, default=0.8
        Refinement helps when the exact one-sided sign test on the guard pairs (null:
        refinement does not rank better) gives ``p ≤ 1 − guard_confidence``; see
        :meth:`fit_guard`.
    target_std : float, default=4.0
        Rewards are standardised to this standard deviation before training (the paper
        brought Skywork rewards to 4). All outputs are in the RM's own units.
    grid_size : int, default=512
        Cells of the reward grid on which ``p(r | e)`` is normalised.
    grid_margin : float, default=1.0
        The grid covers the training rewards' range widened by ``grid_margin ·
        max(sigmas)`` on each side (standardised units); densities are 0 outside.
    ascent_steps, ascent_step_size, ascent_shrink : int, float, float, default=50, 0.5, 0.2
        Inference: maximum steps, initial step (standardised units) and the multiplier
        after a rejected step of the accept/reject gradient ascent of :meth:`predict`.
    inference_batch_size : int, default=1024
        Inference: rows per chunk.
    inference_dtype : {"float32", "float64"}, default="float32"
        Inference: precision. Results do not depend on batch size or row order, bit for
        bit on CPU; float64 is about half as fast.
    random_state : int, RandomState instance or None, default=None
        Seeds weights, noise draws, shuffling and the validation split. With an int, CPU
        fits are bit-for-bit repeatable (BLAS threads are pinned to one during the fit);
        CUDA kernels are not deterministic, so CUDA fits are repeatable only to round-off.
    device : "auto", str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else CPU; or any ``torch.device`` spec. Used for
        fitting and inference. Pass ``"cpu"`` for fits repeatable on every machine.
    verbose : int, default=0
        ``> 0`` shows a progress bar with epoch, loss and validation accuracy.

    Attributes
    ----------
    module_ : torch.nn.Module
        The fitted energy network (evaluation mode).
    posterior_ : EnergyPosterior
        The fitted posterior (network, scaler, grid) every inference method uses.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names.
    n_pairs_, n_pairs_dropped_ : int
        Pairs seen in fit, and those kept out of the likelihood term by filtering.
    reward_mean_, reward_scale_ : float
        ``standardised = (y − reward_mean_) / reward_scale_``.
    trusted_range_ : tuple of float
        Range of the training rewards (RM units); see :meth:`predict`.
    grid_ : ndarray of shape (grid_size,)
        Cell centres of the grid, RM units.
    dropout_ : float
    history_ : list of dict
        Per epoch ``train_loss`` and, with validation, ``val_accuracy``,
        ``val_base_accuracy`` and ``val_loss`` (on the selection half; ``None`` where not
        finite).
    best_epoch_ : int
    refinement_helps_ : bool or None
        Whether refinement helps on the guard pairs (``None`` without validation, until
        :meth:`fit_guard` decides it).
    guard_scores_ : dict or None
        The guard's decision (see :meth:`fit_guard`): ``refined_accuracy`` (of the served
        reward), ``base_accuracy``, ``p_value``, ``n_pairs``, ``n_discordant``,
        ``n_better``, ``n_worse``, ``min_detectable_gain``, ``penalty`` and ``source``
        (``"validation"`` or ``"fit_guard"``).

    Notes
    -----
    Inference methods are safe to call from several threads: they share one inference
    copy of the network, built under a lock, and only read it.

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import EnergyRewardCalibrator
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 8)).astype(np.float32)
    >>> y = X[:, 0] + 0.1 * rng.normal(size=400)
    >>> cal = EnergyRewardCalibrator(hidden=(32, 16), n_negatives=64, max_epochs=2,
    ...                              random_state=0).fit(X, y)
    >>> refined, std = cal.predict(X[:3], base_reward=y[:3], return_std=True)
    >>> refined.shape, bool((std > 0).all())
    ((3,), True)
    >>> dist = cal.predict_distribution(X[:3])  # one grid pass for every statistic
    >>> dist.interval(0.1).shape
    (3, 2)
    """

    # groups, pair_id and chosen are requested by default: GridSearchCV(est,
    # cv=GroupKFold(...)).fit(X, y, groups=..., pair_id=..., chosen=...) routes them
    __metadata_request__fit = {"groups": True, "pair_id": True, "chosen": True}
    __metadata_request__score = {"pair_id": True, "chosen": True}

    _parameter_constraints: dict = {
        "objective": [StrOptions({"nce_plus", "grid_nll"})],
        "preference_weight": [Interval(Real, 0, None, closed="left")],
        "sigmas": ["array-like"],
        "beta": [Interval(Real, 0, None, closed="neither")],
        "n_negatives": [Interval(Integral, 1, None, closed="left")],
        "penalty": [Interval(Real, 0, None, closed="left")],
        "energy": [StrOptions({"mlp", "basis"})],
        "reward_hidden": ["array-like"],
        "hidden": ["array-like"],
        "n_basis": [Interval(Integral, 2, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left"), StrOptions({"auto"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "filter_conflicts": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "guard": [StrOptions({"warn", "base", "off"})],
        "guard_confidence": [Interval(Real, 0, 1, closed="both")],
        "target_std": [Interval(Real, 0, None, closed="neither")],
        "grid_size": [Interval(Integral, 16, None, closed="left")],
        "grid_margin": [Interval(Real, 0, None, closed="left")],
        "ascent_steps": [Interval(Integral, 0, None, closed="left")],
        "ascent_step_size": [Interval(Real, 0, None, closed="neither")],
        "ascent_shrink": [Interval(Real, 0, 1, closed="neither")],
        "inference_batch_size": [Interval(Integral, 1, None, closed="left")],
        "inference_dtype": [StrOptions({"float32", "float64"})],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        objective: str = "nce_plus",
        preference_weight: float = 0.0,
        sigmas=(3.5,),
        beta: float = 0.1,
        n_negatives: int = 768,
        penalty: float = 0.05,
        energy: str = "mlp",
        reward_hidden=(16, 32, 64),
        hidden=(1024, 512),
        n_basis: int = 64,
        dropout="auto",
        learning_rate: float = 9e-5,
        weight_decay: float = 1e-2,
        batch_size: int = 256,
        max_epochs: int = 5,
        filter_conflicts: bool = True,
        validation_fraction: float | None = None,
        n_iter_no_change: int | None = None,
        tol: float = 0.0,
        guard: str = "warn",
        guard_confidence: float = 0.8,
        target_std: float = 4.0,
        grid_size: int = 512,
        grid_margin: float = 1.0,
        ascent_steps: int = 50,
        ascent_step_size: float = 0.5,
        ascent_shrink: float = 0.2,
        inference_batch_size: int = 1024,
        inference_dtype: str = "float32",
        random_state=None,
        device="auto",
        verbose: int = 0,
    ):
        self.objective = objective
        self.preference_weight = preference_weight
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
        self.guard_confidence = guard_confidence
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
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, *, pair_id=None, chosen=None, groups=None):
        """Fit the energy model.

        The fitted state is replaced all at once at the end: if the fit raises or is
        interrupted, the estimator keeps its previous model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Reward-model embeddings, one row per response. A ``numpy.memmap`` is read
            in mini-batches and never copied whole.
        y : array-like of shape (n_samples,)
            The frozen reward model's reward for each row.
        pair_id : array-like of shape (n_samples,), optional
            The preference pair of each row (every pair has two rows). Routed as
            metadata inside ``Pipeline`` / ``GridSearchCV`` (requested by default).
        chosen : array-like of bool of shape (n_samples,), optional
            True for the preferred response of its pair.
        groups : array-like of shape (n_samples,), optional
            Group of each row (e.g. its prompt; both rows of a pair in one group). The
            validation split holds out whole groups. Routed as metadata (requested by
            default, so a ``GroupKFold`` search and the validation split share groups).

        Returns
        -------
        self : EnergyRewardCalibrator
            The fitted estimator.
        """
        caller = f"{_NAME}.fit"
        if y is None:
            raise ValueError(
                f"{caller} requires y to be passed, but the target y is None: pass the "
                "frozen reward model's reward of every row."
            )
        shell = clone(self)  # takes n_features_in_ / feature_names_in_ until fit succeeds
        X, y = validate_inputs(shell, X, y, reset=True, caller=caller)
        hidden, reward_hidden, sigmas = check_fit_params(self, _NAME)
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        seed = draw_seed(rng)
        layout = fit_layout(
            y,
            pair_id,
            chosen,
            groups,
            validation_fraction=self.validation_fraction,
            filter_conflicts=self.filter_conflicts,
            preference_weight=self.preference_weight,
            rng=rng,
            caller=caller,
        )
        rows = layout["rows"]
        setup = training_setup(
            self,
            X.shape[1],
            y[rows],
            sigmas=sigmas,
            hidden=hidden,
            reward_hidden=reward_hidden,
            caller=caller,
        )
        grid = setup.grid
        module, result = run_training(
            self,
            setup.spec,
            TrainingData(X, grid.scaler.transform(y), rows, layout["pref"]),
            setup.objective,
            y=y,
            posterior=grid.posterior,
            select=layout["select"],
            seed=seed,
            device=device,
        )
        for message in result.warnings:
            warn_user(message, ConvergenceWarning)
        post = grid.posterior(module)
        guard = self._fitted_guard(post, X, y, layout["guard"])
        self._set_fitted(
            shell,
            module_=module,
            posterior_=post,
            n_pairs_=layout["n_pairs"],
            n_pairs_dropped_=layout["n_dropped"],
            reward_mean_=grid.scaler.mean,
            reward_scale_=grid.scaler.scale,
            trusted_range_=(float(y[rows].min()), float(y[rows].max())),
            grid_=post.grid,
            dropout_=setup.dropout,
            device_=str(device),
            history_=result.history,
            best_epoch_=result.best_epoch,
            **guard,
        )
        if guard["guard_scores_"] is not None:
            self._warn_guard()
        return self

    def _set_fitted(self, shell=None, **fitted) -> None:
        """Replace the whole fitted state at once (old fitted attributes removed first);
        ``shell`` carries ``n_features_in_`` / ``feature_names_in_`` from validation."""
        for name in ("n_features_in_", "feature_names_in_"):
            if shell is not None and hasattr(shell, name):
                fitted[name] = getattr(shell, name)
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)
        for name, value in fitted.items():
            setattr(self, name, value)

    # --------------------------------------------------------------- inference
    def predict(self, X, *, base_reward=None, return_std: bool = False):
        """The refined reward: a mode of ``p(r | e)``.

        With ``base_reward`` (the RM's own reward; hybrid initialisation, as in the
        paper) the mode is reached by monotone accept/reject gradient ascent starting at
        ``base_reward``: the energy at the result is never below the energy at the start.
        Where the paper starts from a random point (a base reward outside the range of
        the training rewards, ``trusted_range_``), this estimator starts instead from the
        global mode on the grid, unless the energy is higher at the base reward itself;
        the result is deterministic. Without ``base_reward``: the global mode, found by
        evaluating the energy on the whole grid in one batched pass and refining the best
        grid point by the same ascent, with the step ``1 / |f''|`` of the grid's local
        quadratic model, until the move is below ``1e-4`` cell widths. Modes always lie
        within ``[grid_.min(), grid_.max()]``. Without ``base_reward`` a
        :class:`~skebrm.exceptions.FallbackWarning` says so, once per process. Rows whose
        ascent never moved return their ``base_reward`` exactly, bit for bit.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Reward-model embeddings, one row per response.
        base_reward : array-like of shape (n_samples,), optional
            Routed as metadata in a ``Pipeline`` (``set_predict_request``).
        return_std : bool, default=False
            Also return the standard deviation of ``p(r | e)`` (as
            :meth:`score_uncertainty`), as scikit-learn's probabilistic regressors do.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Refined rewards in the RM's units.
        y_std : ndarray of shape (n_samples,)
            Only with ``return_std=True``.
        """
        caller = f"{_NAME}.predict"
        X = self._check_X(X, caller)
        post, settings = self.posterior_, self._settings()
        if base_reward is None:
            _warn_once(
                "predict",
                f"{caller}: no base_reward was passed, so predict returns the global mode of "
                "p(r | e), not the refined reward. Pass base_reward= (the reward model's own "
                "reward; set_predict_request(base_reward=True) in a Pipeline) to refine it; "
                "predict_distribution(X).mode is the global mode without this warning.",
            )
            if return_std:
                dist = post.distribution(X, settings)
                return dist.mode, dist.std()
            return post.global_mode(X, settings)
        base = check_rewards(base_reward, X.shape[0], "base_reward", caller)
        refined = self._refine_checked(X, base)
        if return_std:
            return refined, post.distribution(X, settings, mode=False).std()
        return refined

    def _refine_checked(self, X: np.ndarray, base: np.ndarray, *, gated: bool = True):
        """The refined reward of checked rows ``X`` from checked ``base`` rewards: the
        base itself (a copy) where the guard serves it and ``gated``, else the ascent.
        :meth:`predict` and the bundle's scoring both refine through this."""
        if gated and self._serves_base():
            return base.copy()
        return self.posterior_.refine(X, base, self._settings())

    def score(self, X, y, *, pair_id=None, chosen=None, sample_weight=None) -> float:
        """Pairwise accuracy of the refined rewards; R² without pair metadata.

        With ``pair_id`` / ``chosen`` (routed by ``set_score_request``) this is what a user
        of a reward model selects on: the share of pairs that ``predict(X,
        base_reward=y)`` orders correctly (ties count ½), ``y`` being the RM's own reward.
        Without them it is scikit-learn's R² of the global mode ``predict(X)`` against
        ``y``: a density regressor's score, which rewards reproducing the RM (a
        :class:`~skebrm.exceptions.FallbackWarning` says so, once per process).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Reward-model embeddings, one row per response.
        y : array-like of shape (n_samples,)
            The frozen reward model's reward of each row.
        pair_id, chosen : array-like of shape (n_samples,), optional
            Pair metadata, as in :meth:`fit`; without them the score is R².
        sample_weight : array-like of shape (n_samples,), optional
            Row weights; with pair metadata, each pair weighs its chosen row's weight.

        Returns
        -------
        float
            The pairwise accuracy (ties count ½), or R² without pair metadata.
        """
        caller = f"{_NAME}.score"
        if pair_id is None and chosen is None:
            _warn_once(
                "score",
                f"{caller}: no pair_id / chosen were passed, so score is the R² of the "
                "global mode against y, not the pairwise accuracy of the refined rewards. "
                "Pass pair_id= and chosen= (routed by default when metadata routing is on).",
            )
            from sklearn.metrics import r2_score

            X = self._check_X(X, caller)
            mode = self.posterior_.global_mode(X, self._settings())
            return float(r2_score(y, mode, sample_weight=sample_weight))
        X = self._check_X(X, caller)
        y = check_rewards(y, X.shape[0], "y", caller)
        idx_c, idx_r = check_pairs(pair_id, chosen, X.shape[0], caller=caller)
        rows = np.column_stack([idx_c, idx_r]).reshape(-1)  # chosen, rejected, ...
        correct = pair_credit(self.predict(X, base_reward=y)[rows])
        if sample_weight is not None:
            w = check_rewards(sample_weight, X.shape[0], "sample_weight", caller)
            return float(np.average(correct, weights=w[idx_c]))
        return float(correct.mean())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
