"""The fitted posterior ``p(r | e)``: the network's inference copy, chunking and modes.

:class:`EnergyPosterior` is what :class:`~skebrm.EnergyRewardCalibrator` learns (as
``_CalibratedClassifier`` is what scikit-learn's ``CalibratedClassifierCV`` learns): the
trained energy network, the reward scaler and the grid. It owns the evaluation-mode copy
of the network in the inference dtype, the row chunks of every inference call, the two
mode finders (global, and hybrid from the RM's own reward) and the grid energies that
become a :class:`~skebrm.GridDistribution`. The estimator passes the inference settings
of each call (:class:`InferenceSettings`), so ``set_params`` after ``fit`` takes effect.

It also holds the fit's reward grid (:class:`RewardGrid`), the one network factory used
by fitting and loading (:func:`network_spec`, :func:`build_network`), the device fallback
of loading and unpickling (:func:`available_device`) and the estimator's methods that
read the posterior (:class:`PosteriorMethodsMixin`). Inference is thread safe: the
inference copy is built under a lock and only read afterwards.

Batch invariance: every matrix product sees a whole number of tiles of
:data:`~skebrm._inference.ROW_TILE` rows (rows and grid padded with zeros), so a row's
results do not depend, bit for bit on CPU, on the batch it came in.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from skebrm import _inference as inf
from skebrm._params import check_finite, check_rewards, validate_inputs
from skebrm._scaling import RewardScaler
from skebrm.distribution import GridDistribution
from skebrm.energy import BasisEnergyNet, EnergyNet

__all__ = [
    "NETWORKS",
    "EnergyPosterior",
    "InferenceSettings",
    "PosteriorMethodsMixin",
    "RewardGrid",
    "available_device",
    "build_network",
    "network_spec",
    "resolve_device",
]

#: the energy networks a posterior can hold, by class name (the saved ``module`` spec)
NETWORKS = {"EnergyNet": EnergyNet, "BasisEnergyNet": BasisEnergyNet}


def network_spec(
    energy: str,
    n_features: int,
    *,
    hidden,
    reward_hidden,
    n_basis: int,
    dropout: float,
    basis_range: tuple[float, float],
) -> dict:
    """The ``{"class", "config"}`` spec of a new energy network (``energy`` "mlp" or
    "basis"; ``basis_range``: the span of the basis centres, standardised units)."""
    if energy == "basis":
        config = {
            "n_features": int(n_features),
            "hidden": list(hidden),
            "n_basis": int(n_basis),
            "low": float(basis_range[0]),
            "high": float(basis_range[1]),
            "dropout": float(dropout),
        }
        return {"class": "BasisEnergyNet", "config": config}
    config = {
        "n_features": int(n_features),
        "reward_hidden": list(reward_hidden),
        "hidden": list(hidden),
        "dropout": float(dropout),
    }
    return {"class": "EnergyNet", "config": config}


def build_network(spec: dict) -> torch.nn.Module:
    """The one network factory, for fitting and loading: ``NETWORKS[class](**config)``.

    ``KeyError`` names the unknown class; loaders turn it into their integrity error.
    """
    cls = NETWORKS.get(spec.get("class"))
    if cls is None:
        raise KeyError(
            f"unknown energy network {spec.get('class')!r}; expected one of {sorted(NETWORKS)}."
        )
    return cls(**spec["config"])


@dataclass(frozen=True)
class RewardGrid:
    """A fit's reward scaler and grid: ``size`` cells of ``width`` from ``low``, over the
    standardised training rewards' range ``trusted`` widened by a margin on each side."""

    scaler: RewardScaler
    trusted: tuple[float, float]
    low: float
    width: float
    size: int

    @classmethod
    def fit(cls, y_train, *, target_std: float, margin: float, size: int, caller: str):
        """The scaler fitted on the training rewards ``y_train`` (RM units) and the grid."""
        if not np.std(y_train) > 1e-12 * max(1.0, float(np.abs(y_train).max())):
            raise ValueError(
                f"{caller}: y is constant (every training reward equals {y_train[0]!r}); "
                "an energy model over rewards needs rewards that vary."
            )
        scaler = RewardScaler.fit(y_train, target_std)
        ys = scaler.transform(y_train)
        trusted = (float(ys.min()), float(ys.max()))
        _, width = inf.make_grid(trusted[0] - margin, trusted[1] + margin, size)
        return cls(scaler, trusted, float(trusted[0] - margin), width, int(size))

    @property
    def centres(self) -> np.ndarray:
        return self.low + (np.arange(self.size) + 0.5) * self.width  # as make_grid

    def posterior(self, net: torch.nn.Module) -> EnergyPosterior:
        """The posterior of ``net`` on this grid."""
        return EnergyPosterior(
            net,
            self.scaler,
            grid_low=self.low,
            grid_width=self.width,
            grid_size=self.size,
            trusted=self.trusted,
        )


def resolve_device(device) -> torch.device:
    """``"auto"`` → CUDA if available else CPU; anything else as ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"EnergyRewardCalibrator: device={device!r} but CUDA is not available; use "
            "device='cpu' or 'auto'."
        )
    return dev


def available_device(device, where: str):
    """``device``, or ``"cpu"`` (with a warning) when it names CUDA and CUDA is not
    available here: the fallback of loading and unpickling a model saved elsewhere."""
    from skebrm.exceptions import warn_user

    if isinstance(device, str) and device == "auto":
        return device
    try:
        cuda = torch.device(device).type == "cuda"
    except (RuntimeError, TypeError, ValueError):
        return device  # the parameter check reports it
    if cuda and not torch.cuda.is_available():
        warn_user(
            f"{where}: the model was saved with device={str(device)!r}, which is not "
            "available here; using device='cpu'."
        )
        return "cpu"
    return device


@dataclass(frozen=True)
class InferenceSettings:
    """Per-call inference settings (the estimator's current parameters)."""

    dtype: str = "float32"
    device: object = "auto"
    batch_size: int = 1024
    ascent_steps: int = 50
    ascent_step_size: float = 0.5
    ascent_shrink: float = 0.2


def inference_copy(net: torch.nn.Module, dtype: str, device) -> torch.nn.Module:
    """An evaluation-mode, gradient-free copy of ``net`` in ``dtype`` on ``device``."""
    out = copy.deepcopy(net).to(device=device, dtype=getattr(torch, dtype)).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class EnergyPosterior:
    """A trained energy network on a reward grid (standardised units inside).

    Parameters
    ----------
    module : torch.nn.Module
        The trained network (kept as is; inference runs on copies).
    scaler : RewardScaler
    grid_low, grid_width : float
        Left edge and cell width of the grid, standardised units.
    grid_size : int
    trusted : tuple of float
        Range of the training rewards, standardised; base rewards outside it start the
        hybrid ascent from the global mode.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        scaler: RewardScaler,
        *,
        grid_low: float,
        grid_width: float,
        grid_size: int,
        trusted: tuple[float, float],
    ):
        self.module = module
        self.scaler = scaler
        self.grid_low = float(grid_low)
        self.grid_width = float(grid_width)
        self.grid_size = int(grid_size)
        self.trusted = (float(trusted[0]), float(trusted[1]))
        self._copies: dict = {}
        self._lock = threading.RLock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_copies"] = {}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ grid
    @property
    def centres_s(self) -> np.ndarray:
        return self.grid_low + (np.arange(self.grid_size) + 0.5) * self.grid_width

    @property
    def bounds_s(self) -> tuple[float, float]:
        """First and last cell centre: where modes may lie."""
        c = self.centres_s
        return float(c[0]), float(c[-1])

    @property
    def grid(self) -> np.ndarray:
        """Cell centres in RM units."""
        return self.scaler.inverse_transform(self.centres_s)

    def _distribution(self, energies: np.ndarray, mode_s=None) -> GridDistribution:
        low = float(self.scaler.inverse_transform(self.grid_low))
        mode = None if mode_s is None else self.scaler.inverse_transform(mode_s)
        return GridDistribution(
            energies, low=low, width=self.grid_width * self.scaler.scale, mode=mode
        )

    # ------------------------------------------------------------- internals
    def net(self, settings: InferenceSettings) -> tuple[torch.nn.Module, torch.device]:
        device = resolve_device(settings.device)
        key = (settings.dtype, str(device))
        with self._lock:
            net = self._copies.get(key)
            if net is None:
                # built outside a caller's ``torch.inference_mode``: inference tensors have
                # no version counter, which the folded-weight cache of the network reads
                with torch.inference_mode(False):
                    net = inference_copy(self.module, settings.dtype, device)
                self._copies = {key: net}
        return net, device

    def chunks(self, X, settings: InferenceSettings) -> Iterator[tuple[slice, torch.Tensor]]:
        """(slice, embedded rows padded to whole row tiles) per ``batch_size`` rows."""
        net, device = self.net(settings)
        dtype = getattr(torch, settings.dtype)
        for start in range(0, X.shape[0], settings.batch_size):
            sl = slice(start, min(start + settings.batch_size, X.shape[0]))
            xb = torch.from_numpy(np.array(X[sl])).to(device, dtype)
            xb = inf.pad_rows(xb, inf.tile_rows(xb.shape[0]))
            with torch.no_grad():
                yield sl, net.embed(xb)

    def _grid_t(self, net) -> torch.Tensor:
        p = next(net.parameters())
        return torch.as_tensor(self.centres_s, dtype=p.dtype, device=p.device)

    # ------------------------------------------------------------------ API
    def distribution(self, X, settings: InferenceSettings, *, mode: bool = True):
        """``p(r | e)`` of every row as a :class:`GridDistribution` (RM units); ``mode``
        also runs the global-mode ascent."""
        n = X.shape[0]
        energies = np.empty((n, self.grid_size))
        modes = np.empty(n) if mode else None
        net, _ = self.net(settings)
        grid_t = self._grid_t(net)
        for sl, h in self.chunks(X, settings):
            k = sl.stop - sl.start
            if mode:
                r, _, f = global_mode_s(net, h, grid_t, self.grid_width, settings, self.bounds_s)
                modes[sl] = self._on_grid(r[:k])
            else:
                f = inf.grid_energies(net, h, grid_t)
            energies[sl] = f[:k].double().cpu().numpy()
        return self._distribution(energies, modes)

    def global_mode(self, X, settings: InferenceSettings) -> np.ndarray:
        """The global mode of every row (RM units)."""
        out = np.empty(X.shape[0])
        net, _ = self.net(settings)
        grid_t = self._grid_t(net)
        for sl, h in self.chunks(X, settings):
            r = global_mode_s(net, h, grid_t, self.grid_width, settings, self.bounds_s)[0]
            out[sl] = self._on_grid(r[: sl.stop - sl.start])
        return self.scaler.inverse_transform(out)

    def _on_grid(self, r_s: torch.Tensor) -> np.ndarray:
        """Modes as float64, clipped to the first and last cell centre (a float32 ascent
        clamps to the float32-rounded bounds, which can lie a hair outside)."""
        return np.clip(r_s.double().cpu().numpy(), *self.bounds_s)

    def refine(self, X, base_reward, settings: InferenceSettings) -> np.ndarray:
        """Hybrid-initialised modes from the RM's own rewards (RM units in and out).

        A row whose ascent never moved (its result equals its base reward in the
        inference dtype) gets its base reward back exactly, bit for bit: the round trip
        through standardised units and the inference dtype would otherwise perturb it,
        which can create or flip near-ties.
        """
        net, _ = self.net(settings)
        base_reward = np.asarray(base_reward, dtype=np.float64)
        base_s = self.scaler.transform(base_reward)
        refined_s = refine_s(
            net,
            self.chunks(X, settings),
            base_s,
            grid_t=self._grid_t(net),
            grid_width=self.grid_width,
            trusted=self.trusted,
            bounds=self.bounds_s,
            settings=settings,
        )
        start = base_s.astype(settings.dtype).astype(np.float64)
        refined = self.scaler.inverse_transform(np.clip(refined_s, *self.bounds_s))
        return np.where(refined_s == start, base_reward, refined)

    def energy(self, X, r, settings: InferenceSettings) -> np.ndarray:
        """``f(e, r)`` for ``r`` (n, k) in RM units."""
        r_s = self.scaler.transform(r)
        net, device = self.net(settings)
        dtype = next(net.parameters()).dtype
        out = np.empty(r_s.shape)
        for sl, h in self.chunks(X, settings):
            rr = torch.as_tensor(r_s[sl], dtype=dtype, device=device)
            with torch.no_grad():
                f = net.energy_from_embedded(h, inf.pad_rows(rr, h.shape[0]))
            out[sl] = f[: sl.stop - sl.start].double().cpu().numpy()
        return out


def global_mode_s(net, h, grid_t, grid_width, settings: InferenceSettings, bounds):
    """Global mode per row: best grid point refined by the ascent (standardised units).

    The ascent starts at the best grid point with the step ``1 / |f''|`` of the grid's
    local quadratic model (:func:`~skebrm._inference.grid_newton_steps`), stays within
    ``bounds`` (the first and last cell centre) and stops a row once its move is below
    ``1e-4`` cell widths (or after ``ascent_steps``).

    Returns ``(mode, energy at the mode, grid energies (B, G))``.
    """
    n = h.shape[0]
    h = inf.pad_rows(h, inf.tile_rows(n))
    f = inf.grid_energies(net, h, grid_t)
    r, f_r = inf.ascend(
        net,
        h,
        grid_t[f.argmax(dim=1)],
        max_steps=settings.ascent_steps,
        step_size=inf.grid_newton_steps(f, grid_width),
        shrink=settings.ascent_shrink,
        tol=1e-4 * grid_width,
        bounds=bounds,
    )
    return r[:n], f_r[:n], f[:n]


def refine_s(net, chunks, base_s, *, grid_t, grid_width, trusted, bounds, settings):
    """Hybrid-initialised mode in standardised units.

    Each row ascends from its base reward, accepting a step only if the energy rises.
    Where the paper restarts from a random point (a base reward outside ``trusted``), the
    row starts from the global mode instead, unless the energy is higher at the base
    reward itself (which is then clipped to the grid); deterministic either way.
    """
    lo, hi = trusted
    out = np.empty(len(base_s))
    dtype = next(net.parameters()).dtype
    for sl, h in chunks:
        start = torch.as_tensor(base_s[sl], dtype=dtype, device=h.device)
        start = inf.pad_rows(start, h.shape[0])
        outside = (start < lo) | (start > hi)
        if bool(outside.any()):
            h_out = h[outside]
            r_g, f_g, _ = global_mode_s(net, h_out, grid_t, grid_width, settings, bounds)
            m = inf.tile_rows(h_out.shape[0])
            clipped = start[outside].clamp(bounds[0], bounds[1])
            with torch.no_grad():
                f_b = net.energy_from_embedded(
                    inf.pad_rows(h_out, m), inf.pad_rows(clipped[:, None], m)
                )[: h_out.shape[0], 0]
            start[outside] = torch.where(f_g > f_b, r_g, clipped)
        r, _ = inf.ascend(
            net,
            h,
            start,
            max_steps=settings.ascent_steps,
            step_size=float(settings.ascent_step_size),
            shrink=settings.ascent_shrink,
            bounds=bounds,
        )
        out[sl] = r[: sl.stop - sl.start].double().cpu().numpy()
    return out


class PosteriorMethodsMixin:
    """The estimator's methods that read ``p(r | e)`` from its fitted ``posterior_``.

    Mixed into :class:`~skebrm.EnergyRewardCalibrator`, which provides the inference
    parameters (``ascent_*``, ``inference_*``, ``device``) and ``grid_``. ``_check_X``
    (``check_is_fitted`` and input validation) and ``_settings`` also serve the guard.
    """

    def _check_X(self, X, caller):
        check_is_fitted(self)
        return validate_inputs(self, X, reset=False, caller=caller)

    def _settings(self) -> InferenceSettings:
        """The inference parameters (``ascent_*``, ``inference_*``, ``device``) as one object."""
        return InferenceSettings(
            dtype=self.inference_dtype,
            device=self.device,
            batch_size=int(self.inference_batch_size),
            ascent_steps=int(self.ascent_steps),
            ascent_step_size=float(self.ascent_step_size),
            ascent_shrink=float(self.ascent_shrink),
        )

    def predict_distribution(self, X) -> GridDistribution:
        """``p(r | e)`` of every row from one pass of the energy over the grid.

        Returns a :class:`~skebrm.GridDistribution` (RM units) whose ``mode`` is the
        global mode (as ``predict(X)``) and which gives ``mean()``, ``std()``,
        ``quantiles(q)``, ``interval(alpha)``, ``log_density(r)``, ``cdf(r)`` and
        ``preference_probability(other)`` without evaluating the energy again.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        GridDistribution
            The distribution of the reward of each row, on the grid.
        """
        X = self._check_X(X, f"{type(self).__name__}.predict_distribution")
        return self.posterior_.distribution(X, self._settings())

    def _distribution(self, X, caller, *, mode=False) -> GridDistribution:
        X = self._check_X(X, caller)
        return self.posterior_.distribution(X, self._settings(), mode=mode)

    def score_uncertainty(self, X):
        """The standard deviation of ``p(r | e)`` (RM units); higher is more uncertain.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples,)
            The standard deviation of each row's reward distribution.
        """
        return self._distribution(X, f"{type(self).__name__}.score_uncertainty").std()

    def predict_mean(self, X):
        """The mean of ``p(r | e)`` (RM units).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        ndarray of shape (n_samples,)
            The mean of each row's reward distribution.
        """
        return self._distribution(X, f"{type(self).__name__}.predict_mean").mean()

    def predict_quantiles(self, X, q):
        """Quantiles of ``p(r | e)``: array of shape (n_samples, len(q)), RM units.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.
        q : array-like of float
            The quantile levels, each in [0, 1].

        Returns
        -------
        ndarray of shape (n_samples, len(q))
            The quantiles of each row's reward distribution at the levels ``q``.
        """
        return self._distribution(X, f"{type(self).__name__}.predict_quantiles").quantiles(q)

    def predict_interval(self, X, alpha: float = 0.1):
        """Central ``1 − alpha`` interval of ``p(r | e)``: (n_samples, 2), RM units.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.
        alpha : float, default=0.1
            Probability mass left outside the interval, in (0, 1), half on each side.

        Returns
        -------
        ndarray of shape (n_samples, 2)
            The lower and upper end of each row's interval.
        """
        if not isinstance(alpha, Real) or not 0 < alpha < 1:
            raise ValueError(
                f"{type(self).__name__}.predict_interval: alpha must be in (0, 1), got {alpha!r}."
            )
        return self._distribution(X, f"{type(self).__name__}.predict_interval").interval(alpha)

    def predict_log_density_grid(self, X):
        """``log p(r | e)`` on the grid: ``(grid_, log_density (n_samples, grid_size))``;
        ``exp(log_density).sum(1) * cell_width == 1``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.

        Returns
        -------
        grid : ndarray of shape (grid_size,)
            A copy of the reward grid ``grid_`` (RM units).
        log_density : ndarray of shape (n_samples, grid_size)
            ``log p(r | e)`` of each row at each grid point.
        """
        dist = self._distribution(X, f"{type(self).__name__}.predict_log_density_grid")
        return self.grid_.copy(), dist.log_density_grid()

    def log_density(self, X, r):
        """``log p(r | e)`` at rewards ``r`` (RM units), piecewise uniform on the grid's
        cells (the derivative of the CDF behind :meth:`predict_quantiles`); ``−inf``
        outside the grid.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.
        r : array-like of shape (n_samples,)
            The reward at which to evaluate each row's density (RM units), one per row.

        Returns
        -------
        ndarray of shape (n_samples,)
            ``log p(r[i] | e_i)`` of each row ``i``.
        """
        caller = f"{type(self).__name__}.log_density"
        dist = self._distribution(X, caller)
        return dist.log_density(check_rewards(r, len(dist), "r", caller))

    def predict_energy(self, X, r):
        """The unnormalised log-density ``f(e, r)`` at ``r`` (n_samples,) or (n_samples, k),
        RM units; the array has the shape of ``r``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.
        r : array-like of shape (n_samples,) or (n_samples, k)
            The rewards at which to evaluate the energy of each row (RM units).

        Returns
        -------
        ndarray
            The energy ``f(e, r)``, with the shape of ``r``.
        """
        caller = f"{type(self).__name__}.predict_energy"
        X = self._check_X(X, caller)
        r = np.asarray(r, dtype=np.float64)
        if r.ndim not in (1, 2) or r.shape[0] != X.shape[0]:
            raise ValueError(
                f"{caller}: r must have shape ({X.shape[0]},) or ({X.shape[0]}, k), got {r.shape}."
            )
        check_finite(r, "r", caller)
        out = self.posterior_.energy(X, r.reshape(r.shape[0], -1), self._settings())
        return out.reshape(r.shape)

    def preference_probability(self, X_a, X_b):
        """``P(r_a > r_b)`` for the independent distributions of row pairs (exact on the
        grid; two rewards in the same cell are each other's superior with probability ½).

        Parameters
        ----------
        X_a, X_b : array-like of shape (n_pairs, n_features)
            Embeddings of the two sides of each pair, row ``i`` of each forming pair ``i``.

        Returns
        -------
        ndarray of shape (n_pairs,)
            The probability that the reward of side ``a`` exceeds that of side ``b``.
        """
        caller = f"{type(self).__name__}.preference_probability"
        da, db = self._distribution(X_a, caller), self._distribution(X_b, caller)
        if len(da) != len(db):
            raise ValueError(
                f"{caller}: X_a and X_b must have the same number of rows, got "
                f"{len(da)} and {len(db)}."
            )
        return da.preference_probability(db)

    def pessimistic_reward(self, X, beta: float):
        """The entropic risk of ``p(r | e)`` at risk aversion ``beta`` (RM units):
        ``predict_distribution(X).entropic_risk(beta)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings of the rows.
        beta : float
            The entropic risk's ``β > 0``, in RM units: smaller is more pessimistic (see
            :meth:`skebrm.GridDistribution.entropic_risk`).

        Returns
        -------
        ndarray of shape (n_samples,)
            The pessimistic reward of each row.
        """
        return self.predict_distribution(X).entropic_risk(beta)
