"""Checks of the estimator's parameters and inputs that scikit-learn's constraints cannot say."""

from __future__ import annotations

import inspect
from numbers import Integral, Real

import numpy as np
import torch

from skebrm.exceptions import IneffectiveParameterWarning, warn_user

__all__ = [
    "check_confidence",
    "check_device",
    "check_finite",
    "check_rewards",
    "check_saved_header",
    "check_sigmas",
    "check_widths",
    "warn_ineffective",
]

_FINITE_CHUNK = 1 << 16


def draw_seed(random_state) -> int:
    """One int seed from ``random_state`` (scikit-learn's ``check_random_state`` rules):
    the same int ``random_state`` always gives the same seed."""
    from sklearn.utils.validation import check_random_state

    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def check_finite(arr, name: str, caller: str) -> None:
    """Finite check in row chunks, so a memory-mapped X is never copied whole."""
    for start in range(0, arr.shape[0], _FINITE_CHUNK):
        block = np.asarray(arr[start : start + _FINITE_CHUNK])
        if not np.isfinite(block).all():
            kind = "NaN" if np.isnan(block).any() else "infinity"
            raise ValueError(
                f"{caller}: Input {name} contains {kind}; every value must be finite. "
                f"Drop or impute the affected rows first."
            )


def check_rewards(r, n: int, name: str, caller: str) -> np.ndarray:
    """A finite float64 vector of ``n`` rewards."""
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 1 or r.shape[0] != n:
        raise ValueError(
            f"{caller}: {name} must have shape ({n},) to align with X, got shape {r.shape}."
        )
    check_finite(r, name, caller)
    return r


def check_widths(value, name: str, *, allow_empty: bool, owner: str) -> tuple[int, ...]:
    """Layer widths: a sequence of positive ints (``ValueError`` naming the parameter)."""
    try:
        widths = tuple(np.atleast_1d(np.asarray(value, dtype=object)).tolist())
    except (TypeError, ValueError):
        widths = None
    ok = (
        widths is not None
        and np.ndim(np.asarray(value, dtype=object)) <= 1
        and all(isinstance(w, Integral) and not isinstance(w, bool) and w >= 1 for w in widths)
        and (allow_empty or len(widths) > 0)
    )
    if not ok:
        need = "a sequence of positive ints" + ("" if allow_empty else " (at least one)")
        raise ValueError(
            f"The '{name}' parameter of {owner} must be {need}. Got {value!r} instead."
        )
    return tuple(int(w) for w in widths)


def check_sigmas(value, owner: str) -> np.ndarray:
    sigmas = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if (
        sigmas.ndim != 1
        or sigmas.size == 0
        or not np.all(sigmas > 0)
        or not np.isfinite(sigmas).all()
    ):
        raise ValueError(
            f"{owner}: sigmas must be a non-empty sequence of positive floats, got {value!r}."
        )
    return sigmas


def check_device(value, owner: str) -> None:
    """``"auto"``, or anything ``torch.device`` accepts (``"cpu"``, ``"cuda:1"``, a device)."""
    if isinstance(value, str) and value == "auto":
        return
    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"The 'device' parameter of {owner} must be 'auto', a device string such as "
            f"'cpu', 'cuda' or 'cuda:1', or a torch.device. Got {value!r} instead."
        ) from exc


def _default(est, name: str):
    return inspect.signature(type(est).__init__).parameters[name].default


def _is_default(est, name: str) -> bool:
    value, default = getattr(est, name), _default(est, name)
    if isinstance(default, tuple):
        try:
            return tuple(np.atleast_1d(value).tolist()) == default
        except (TypeError, ValueError):
            return False
    return value == default


def warn_ineffective(est, rules: list[tuple[str, bool, str]]) -> None:
    """Warn for each ``(parameter, applies, why)`` that was set away from its default
    while ``applies`` is False (the parameter then has no effect)."""
    for name, applies, why in rules:
        if not applies and not _is_default(est, name):
            warn_user(
                f"{type(est).__name__}: {name}={getattr(est, name)!r} has no effect {why}.",
                IneffectiveParameterWarning,
            )


def validate_inputs(est, X, y=None, *, reset: bool, caller: str):
    """``X`` (and ``y``) through scikit-learn's ``validate_data``, then finite checks in
    row chunks (a memory-mapped ``X`` is never copied whole)."""
    from sklearn.utils.validation import validate_data

    kwargs = dict(
        dtype=[np.float32, np.float64, np.float16],
        ensure_all_finite=False,
        ensure_min_samples=2 if reset else 1,
        copy=False,
    )
    if y is None:
        X = validate_data(est, X, reset=reset, **kwargs)
    else:
        X, y = validate_data(est, X, y, reset=reset, y_numeric=True, **kwargs)
        y = np.asarray(y, dtype=np.float64)
        check_finite(y, "y", caller)
    check_finite(X, "X", caller)
    return X if y is None else (X, y)


def check_fit_params(est, owner: str):
    """The calibrator's checks beyond ``_parameter_constraints`` and its warnings for
    parameters with no effect: ``(hidden, reward_hidden, sigmas)``."""
    check_device(est.device, owner)
    hidden = check_widths(est.hidden, "hidden", allow_empty=est.energy == "basis", owner=owner)
    reward_hidden = check_widths(est.reward_hidden, "reward_hidden", allow_empty=True, owner=owner)
    sigmas = check_sigmas(est.sigmas, owner)
    validated = est.validation_fraction is not None
    no_val = "without validation_fraction"
    no_guard = f"{no_val} until fit_guard is called"
    warn_ineffective(
        est,
        [
            ("guard", validated, no_guard),
            ("guard_confidence", validated, no_guard),
            ("n_iter_no_change", validated, no_val),
            ("tol", validated, no_val),
            ("reward_hidden", est.energy == "mlp", "with energy='basis'"),
            ("n_basis", est.energy == "basis", "with energy='mlp'"),
            ("n_negatives", est.objective == "nce_plus", "with objective='grid_nll'"),
        ],
    )
    return hidden, reward_hidden, sigmas


def check_version(package: str, saved, owner: str, where: str) -> None:
    """Warn when a model was saved or pickled by another version of ``package``
    (scikit-learn's ``InconsistentVersionWarning`` for scikit-learn)."""
    if package == "scikit-learn":
        import sklearn
        from sklearn.exceptions import InconsistentVersionWarning

        if saved is not None and saved != sklearn.__version__:
            warning = InconsistentVersionWarning(
                estimator_name=owner,
                current_sklearn_version=sklearn.__version__,
                original_sklearn_version=saved,
            )
            warn_user(warning, InconsistentVersionWarning)
        return
    from skebrm import __version__ as current
    from skebrm.exceptions import VersionMismatchWarning

    if saved is not None and saved != current:
        warn_user(
            f"{where}: the model was saved with {package} {saved}, this is {package} "
            f"{current}; it may load wrongly or predict differently. Refit it, or install "
            f"{package}=={saved}.",
            VersionMismatchWarning,
        )


def check_saved_header(data, *, fmt: str, version: int, what: str, caller: str) -> None:
    """Refuse ``data`` unless it is a plain saved dict (``to_dict``) of format ``fmt`` at
    ``version``; the error names ``caller`` and what was expected."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"{caller}: data is not a saved {what} (expected format {fmt!r}).")
    if data.get("version") != version:
        raise ValueError(
            f"{caller}: unsupported version {data.get('version')!r}; this skebrm reads "
            f"version {version}."
        )


def check_confidence(confidence, caller: str) -> float:
    """``confidence`` as a float in (0, 1), else a ``ValueError`` naming ``caller``."""
    if (
        not isinstance(confidence, Real)
        or isinstance(confidence, bool)
        or not 0.0 < float(confidence) < 1.0
    ):
        raise ValueError(f"{caller}: confidence must be a float in (0, 1), got {confidence!r}.")
    return float(confidence)
