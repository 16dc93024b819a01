"""Baseline reward heads fitted on the same embeddings as the energy-based calibrator.

Every baseline shares the pair interface of :class:`skebrm.BradleyTerryHead`:
``fit(X, y=None, *, pair_id, chosen)``, ``predict(X)`` (a reward per row) and
``score(X, y=None, *, pair_id, chosen)`` (pairwise accuracy, ties count 0.5), so they
run inside ``GridSearchCV(..., cv=GroupKFold())`` with metadata routing enabled::

    sklearn.set_config(enable_metadata_routing=True)
    est = BradleyTerryEnsemble().set_fit_request(pair_id=True, chosen=True)
    est.set_score_request(pair_id=True, chosen=True)
    GridSearchCV(est, {"C": [0.1, 1.0]}, cv=GroupKFold(3)).fit(
        X, groups=pair_id, pair_id=pair_id, chosen=chosen)

* :class:`BradleyTerryEnsemble` — K linear Bradley–Terry heads on bootstrap resamples of
  the pairs, aggregated as in Coste et al. (2023), "Reward Model Ensembles Help Mitigate
  Overoptimization": the mean, the worst case (minimum over members) or the
  uncertainty-weighted mean ``mean − λ·std``.
* :class:`MLPRewardHead` — an MLP reward head refitted on the conflict-filtered pairs;
  it isolates what the energy model adds beyond dropping the pairs the base RM gets
  wrong.

The Bayesian last layer on the Bradley–Terry head, :class:`skebrm.LaplaceBradleyTerryHead`,
lives with the other linear heads in :mod:`skebrm.bradley_terry`.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from skebrm._compat import Interval, StrOptions, _fit_context
from skebrm._pairs import check_pairs, conflicting_pairs
from skebrm._params import draw_seed
from skebrm.bradley_terry import _PairScoreMixin, fit_bradley_terry

__all__ = ["BradleyTerryEnsemble", "MLPRewardHead"]


class BradleyTerryEnsemble(_PairScoreMixin, BaseEstimator):
    """An ensemble of linear Bradley–Terry reward heads on bootstrap resamples of pairs.

    Each member is fitted with :func:`skebrm.fit_bradley_terry` on pairs drawn with
    replacement. Because comparisons do not identify a reward's offset or scale, each
    member's rewards are standardised on the training rows before they are aggregated,
    so that the minimum and the standard deviation across members compare like with like.

    Parameters
    ----------
    n_estimators : int, default=5
        Number of members K.
    aggregation : {"mean", "worst_case", "uncertainty_weighted"}, default="mean"
        How ``predict`` combines the members: their mean; their minimum; or
        ``mean − uncertainty_penalty · std`` (Coste et al., 2023).
    uncertainty_penalty : float, default=1.0
        λ of the uncertainty-weighted aggregation.
    C : float, default=1.0
        Inverse L2 regularisation of each member's logistic regression.
    max_iter : int, default=1000
        Iterations of each member's LBFGS solver.
    random_state : int, RandomState instance or None, default=None
        Seeds the bootstrap resamples.

    Attributes
    ----------
    coefs_ : ndarray of shape (n_estimators, n_features)
    reward_mean_, reward_scale_ : ndarray of shape (n_estimators,)
        Standardisation of each member's reward, from the training rows.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4))
    >>> pair_id, chosen = np.repeat(np.arange(100), 2), np.tile([True, False], 100)
    >>> ens = BradleyTerryEnsemble(n_estimators=3, random_state=0)
    >>> ens.fit(X, pair_id=pair_id, chosen=chosen).predict(X).shape
    (200,)
    """

    _parameter_constraints: dict = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "aggregation": [StrOptions({"mean", "worst_case", "uncertainty_weighted"})],
        "uncertainty_penalty": [Interval(Real, 0, None, closed="left")],
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_estimators: int = 5,
        aggregation: str = "mean",
        uncertainty_penalty: float = 1.0,
        C: float = 1.0,
        max_iter: int = 1000,
        random_state=None,
    ):
        self.n_estimators = n_estimators
        self.aggregation = aggregation
        self.uncertainty_penalty = uncertainty_penalty
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, pair_id=None, chosen=None):
        """Fit K members on bootstrap resamples of the pairs; ``y`` is ignored.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows, two per pair.
        y : None
            Ignored; present for scikit-learn API compatibility.
        pair_id, chosen : array-like of shape (n_samples,)
            Pair metadata (see :func:`skebrm.datasets.pairs_to_rows`).

        Returns
        -------
        self : BradleyTerryEnsemble
            The fitted ensemble.
        """
        X = validate_data(self, X, dtype=np.float64)
        idx_c, idx_r = check_pairs(pair_id, chosen, X.shape[0], caller="BradleyTerryEnsemble.fit")
        rng = check_random_state(self.random_state)
        n_pairs = idx_c.size
        coefs = []
        for _ in range(self.n_estimators):
            boot = rng.randint(0, n_pairs, size=n_pairs)
            coefs.append(
                fit_bradley_terry(X[idx_c[boot]], X[idx_r[boot]], C=self.C, max_iter=self.max_iter)
            )
        self.coefs_ = np.vstack(coefs)
        raw = X @ self.coefs_.T
        self.reward_mean_ = raw.mean(axis=0)
        scale = raw.std(axis=0)
        self.reward_scale_ = np.where(scale > 0, scale, 1.0)
        return self

    def predict_members(self, X) -> np.ndarray:
        """Standardised reward of every member, shape (n_samples, n_estimators).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples, n_estimators)
            Each member's reward of each row, standardised on the training rows.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return (X @ self.coefs_.T - self.reward_mean_) / self.reward_scale_

    def predict(self, X) -> np.ndarray:
        """The aggregated reward of each row (see ``aggregation``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples,)
            The members' standardised rewards of each row, combined by ``aggregation``.
        """
        self._validate_params()
        members = self.predict_members(X)
        if self.aggregation == "mean":
            return members.mean(axis=1)
        if self.aggregation == "worst_case":
            return members.min(axis=1)
        return members.mean(axis=1) - self.uncertainty_penalty * members.std(axis=1)

    def score_uncertainty(self, X) -> np.ndarray:
        """Standard deviation of the standardised rewards across members.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples,)
            The spread of the members' rewards of each row; higher is more uncertain.
        """
        return self.predict_members(X).std(axis=1)


def _make_mlp(n_features: int, hidden: tuple[int, ...], dropout: float) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        if dropout > 0:
            layers.append(torch.nn.Dropout(dropout))
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


class MLPRewardHead(_PairScoreMixin, BaseEstimator):
    """An MLP reward head refitted on the pairs that the base reward orders correctly.

    Pairs where the base reward ``y`` does not strictly prefer the chosen response are
    dropped (the same conflict filter as :class:`skebrm.EnergyRewardCalibrator`), then an
    MLP is trained on the remaining rows.

    Parameters
    ----------
    objective : {"regression", "bradley_terry"}, default="regression"
        ``"regression"``: mean squared error to the base reward ``y`` (standardised) of
        every kept row — the targets the energy model sees. ``"bradley_terry"``: pairwise
        logistic loss ``−log σ(f(x_c) − f(x_r))`` on the kept pairs.
    filter_conflicts : bool, default=True
        Drop the pairs the base reward misorders. Needs ``y``.
    hidden : tuple of int, default=(256,)
        Widths of the hidden layers (ReLU).
    dropout : float, default=0.0
        Dropout probability after each hidden layer during training; 0 adds no dropout.
    learning_rate : float, default=1e-3
        AdamW learning rate.
    weight_decay : float, default=1e-4
        AdamW weight decay.
    batch_size : int, default=256
        Rows per step for ``"regression"``, pairs per step for ``"bradley_terry"``.
    max_epochs : int, default=50
        Passes over the training rows (or pairs).
    random_state : int or None, default=None
        Seeds the weights and the batch order (results are reproducible on CPU).

    Attributes
    ----------
    module_ : torch.nn.Sequential
    history_ : list of dict
        ``{"epoch", "loss"}`` per epoch (mean training loss).
    n_pairs_dropped_ : int
    x_mean_, x_scale_ : ndarray of shape (n_features,)
        Feature standardisation learned on the kept rows.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4))
    >>> y = X @ np.array([1.0, -1.0, 0.5, 0.0])
    >>> pair_id, chosen = np.repeat(np.arange(100), 2), np.tile([True, False], 100)
    >>> head = MLPRewardHead(hidden=(8,), max_epochs=5, random_state=0)
    >>> head.fit(X, y, pair_id=pair_id, chosen=chosen).predict(X).shape
    (200,)
    """

    _parameter_constraints: dict = {
        "objective": [StrOptions({"regression", "bradley_terry"})],
        "filter_conflicts": ["boolean"],
        "hidden": ["array-like"],
        "dropout": [Interval(Real, 0, 0.99, closed="both")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        # an int seed (the torch generator is seeded from it), not a RandomState
        "random_state": [Interval(Integral, None, None, closed="neither"), None],
    }

    def __init__(
        self,
        *,
        objective: str = "regression",
        filter_conflicts: bool = True,
        hidden: tuple[int, ...] = (256,),
        dropout: float = 0.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 50,
        random_state=None,
    ):
        self.objective = objective
        self.filter_conflicts = filter_conflicts
        self.hidden = hidden
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.random_state = random_state

    def _hidden(self) -> tuple[int, ...]:
        hidden = tuple(self.hidden)
        if not all(isinstance(h, Integral) and h >= 1 for h in hidden):
            raise ValueError(
                "The 'hidden' parameter of MLPRewardHead must be a tuple of positive ints. "
                f"Got {self.hidden!r} instead."
            )
        return hidden

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, pair_id=None, chosen=None):
        """Drop conflicting pairs, then train the MLP.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows, two per pair.
        y : array-like of shape (n_samples,), optional
            The base RM's reward per row. Required for ``objective="regression"`` and
            for ``filter_conflicts=True``.
        pair_id, chosen : array-like of shape (n_samples,)
            The pair of each row and whether it is the chosen response (see
            :func:`skebrm.datasets.pairs_to_rows`).

        Returns
        -------
        self : MLPRewardHead
            The fitted head.
        """
        hidden = self._hidden()
        if y is None and (self.objective == "regression" or self.filter_conflicts):
            raise ValueError(
                "MLPRewardHead.fit: y (the base reward per row) is required with "
                f"objective={self.objective!r} and filter_conflicts={self.filter_conflicts!r}; "
                "pass y or use objective='bradley_terry', filter_conflicts=False."
            )
        if y is None:
            X = validate_data(self, X, dtype=np.float64)
        else:
            X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        idx_c, idx_r = check_pairs(pair_id, chosen, X.shape[0], caller="MLPRewardHead.fit")
        keep = np.ones(idx_c.size, dtype=bool)
        if self.filter_conflicts:
            keep = ~conflicting_pairs(y, idx_c, idx_r)
        self.n_pairs_dropped_ = int((~keep).sum())
        if not keep.any():
            raise ValueError(
                "MLPRewardHead.fit: every pair conflicts with the base reward y (chosen not "
                "strictly above rejected), so no pair is left to fit; check the sign of y or "
                "set filter_conflicts=False."
            )
        idx_c, idx_r = idx_c[keep], idx_r[keep]
        rows = np.r_[idx_c, idx_r]
        self.x_mean_ = X[rows].mean(axis=0)
        scale = X[rows].std(axis=0)
        self.x_scale_ = np.where(scale > 0, scale, 1.0)
        Xs = torch.as_tensor((X - self.x_mean_) / self.x_scale_, dtype=torch.float32)

        if self.objective == "regression":
            self.y_mean_ = float(y[rows].mean())
            self.y_scale_ = float(y[rows].std()) or 1.0
            target = torch.as_tensor((y[rows] - self.y_mean_) / self.y_scale_).float()
            inputs = (Xs[rows], target)
        else:
            self.y_mean_, self.y_scale_ = 0.0, 1.0
            inputs = (Xs[idx_c], Xs[idx_r])
        seed = draw_seed(self.random_state)
        # dropout draws from the global torch generator: fork it so that the fit is
        # reproducible and leaves the caller's torch random state untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._train(inputs, X.shape[1], hidden, seed)
        return self

    def _train(self, inputs, n_features, hidden, seed):
        """Regression: ``inputs = (X_rows, target)``; Bradley–Terry: ``(X_c, X_r)``."""
        self.module_ = _make_mlp(n_features, hidden, float(self.dropout))
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(
            self.module_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        n = inputs[0].shape[0]
        self.history_ = []
        self.module_.train()
        for epoch in range(self.max_epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, self.batch_size):
                batch = order[start : start + self.batch_size]
                a, b = inputs[0][batch], inputs[1][batch]
                if self.objective == "regression":
                    loss = torch.mean((self.module_(a).squeeze(-1) - b) ** 2)
                else:
                    margin = self.module_(a).squeeze(-1) - self.module_(b).squeeze(-1)
                    loss = -torch.nn.functional.logsigmoid(margin).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch)
            self.history_.append({"epoch": epoch + 1, "loss": total / n})
        self.module_.eval()

    def predict(self, X) -> np.ndarray:
        """The reward of each row (on the scale of ``y`` for the regression objective).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples,)
            The MLP's reward of each row.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Xs = torch.as_tensor((X - self.x_mean_) / self.x_scale_, dtype=torch.float32)
        with torch.no_grad():
            out = self.module_(Xs).squeeze(-1).double().numpy()
        return out * self.y_scale_ + self.y_mean_
