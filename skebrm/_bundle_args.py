"""Argument checks of :class:`~skebrm.RefinedRewardModel` (shared with its loader)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch

from skebrm.exceptions import ModelIntegrityError

# The extractor's record of what determines an embedding; a calibrator fitted on one
# setting is only valid for the same one.
_EMBEDDING_KEYS = (
    "weights_sha256",
    "tokenizer_sha256",
    "head",
    "template",
    "max_length",
    "long_response",
    "pooling",
    "dtype",
)


def _check_penalty(penalty, caller: str) -> float:
    if (
        not isinstance(penalty, Real)
        or isinstance(penalty, bool)
        or not math.isfinite(penalty)
        or penalty < 0
    ):
        raise ValueError(f"{caller}: penalty must be a finite float >= 0, got {penalty!r}.")
    return float(penalty)


def _check_batch_size(batch_size, caller: str) -> int:
    if not isinstance(batch_size, Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be a positive int, got {batch_size!r}.")
    return int(batch_size)


def _check_texts(values, name: str, caller: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(
            f"{caller}: {name} must be a list of str, got {type(values).__name__}: {values!r:.60}."
        )
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise TypeError(
                f"{caller}: {name}[{i}] must be a str, got {type(v).__name__}: {v!r:.60}."
            )
    return out


def _check_text_columns(caller: str, **columns) -> list[list[str]]:
    """:func:`_check_texts` on each column, then one check that they are equally long."""

    def join(items):
        items = list(items)
        return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"

    out = [_check_texts(values, name, caller) for name, values in columns.items()]
    lengths = [len(col) for col in out]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"{caller}: {join(columns)} must have the same length, got "
            f"{join(str(n) for n in lengths)}."
        )
    return out


def _device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"RefinedRewardModel: device must be a torch device or its name ('cpu', 'cuda', "
            f"'cuda:1'), got {device!r}."
        ) from exc


def _check_name(name, caller: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{caller}: name must be a non-empty str, got {name!r}.")
    return name


def _check_calibrator(calibrator, caller: str):
    """A fitted :class:`~skebrm.EnergyRewardCalibrator`, else ``TypeError`` /
    ``NotFittedError``."""
    from sklearn.utils.validation import check_is_fitted

    from skebrm.calibrator import EnergyRewardCalibrator

    if not isinstance(calibrator, EnergyRewardCalibrator):
        raise TypeError(
            f"{caller}: calibrator must be a fitted EnergyRewardCalibrator, got "
            f"{type(calibrator).__name__}."
        )
    check_is_fitted(calibrator)
    return calibrator


def _check_width(calibrator, extractor, caller: str) -> None:
    """The calibrator takes the embeddings of the extractor's scoring layer."""
    width = int(extractor.n_features_out_)
    if calibrator.n_features_in_ != width:
        raise ModelIntegrityError(
            f"{caller}: the calibrator was fitted on {calibrator.n_features_in_}-dimensional "
            f"embeddings, but the scoring layer {extractor.head_name_!r} of "
            f"{type(extractor.model_).__name__} takes {width}: it was fitted on another "
            "reward model."
        )


def _embedding_diff(want: dict, have: dict, said: str, found: str, *, recorded_only: bool):
    """``"key: <said> A, <found> B"`` for every setting that determines an embedding and
    differs (``recorded_only``: only the settings that ``want`` records)."""
    return [
        f"{key}: {said} {want.get(key)!r}, {found} {have.get(key)!r}"
        for key in _EMBEDDING_KEYS
        if (key in want or not recorded_only) and want.get(key) != have.get(key)
    ]


def _check_fitted_on(fitted_on, settings: dict) -> None:
    """``fitted_on`` (the extractor record of the calibrator's embeddings) matches the
    bundle's extraction ``settings``."""
    if not isinstance(fitted_on, dict):
        raise TypeError(
            "RefinedRewardModel: fitted_on must be the dict that EmbeddingExtractor."
            f"identity() returns, got {type(fitted_on).__name__}."
        )
    diff = _embedding_diff(
        fitted_on, settings, "calibrator fitted on", "bundle has", recorded_only=True
    )
    if diff:
        raise ModelIntegrityError(
            "RefinedRewardModel: the calibrator was fitted on embeddings made with other "
            "settings or another reward model than this bundle's (" + "; ".join(diff) + ")."
        )


# ------------------------------------------------------------------ served steps
#: The rewards a bundle can serve (see :class:`~skebrm.RefinedRewardModel`), in the order
#: ``fit_guard(steps="all")`` offers them to the step guard.
STEPS = ("base", "debiased", "refined", "refined+debiased", "mean")
#: The steps that subtract the debiaser's curve.
DEBIASED_STEPS = ("debiased", "refined+debiased")


def _check_debiaser(debiaser, caller: str):
    """None, or a fitted :class:`~skebrm.LengthDebiaser` of the feature ``"chars"``."""
    if debiaser is None:
        return None
    from skebrm.debias import LengthDebiaser

    if not isinstance(debiaser, LengthDebiaser):
        raise TypeError(
            f"{caller}: debiaser must be a fitted LengthDebiaser (feature='chars') or None, "
            f"got {type(debiaser).__name__}."
        )
    if not hasattr(debiaser, "knots_x_"):
        raise ValueError(
            f"{caller}: debiaser must be fitted (LengthDebiaser(feature='chars').fit(lengths, "
            "base_rewards) on a reference set), got an unfitted LengthDebiaser."
        )
    if debiaser.feature != "chars":
        raise ValueError(
            f"{caller}: debiaser must have feature='chars' (the bundle measures each "
            f"completion's length in characters), got {debiaser.feature!r}."
        )
    return debiaser


def _check_step(step, debiaser, caller: str) -> str:
    """One of :data:`STEPS`, with the debiaser it needs."""
    if not isinstance(step, str) or step not in STEPS:
        raise ValueError(f"{caller}: step must be one of {list(STEPS)}, got {step!r}.")
    if step in DEBIASED_STEPS and debiaser is None:
        raise ValueError(
            f"{caller}: step {step!r} needs a debiaser (a fitted LengthDebiaser with "
            "feature='chars'), got debiaser=None."
        )
    return step


def _check_steps(steps, debiaser, caller: str) -> list[str]:
    """The candidates of ``fit_guard(steps=...)``: ``"base"`` first, then the others in
    the order given (``"all"``: every step the bundle can compute)."""
    if isinstance(steps, str) and steps == "all":
        names = [s for s in STEPS if debiaser is not None or s not in DEBIASED_STEPS]
    elif isinstance(steps, (list, tuple)) and steps:
        names = []
        for i, s in enumerate(steps):
            if not isinstance(s, str) or s not in STEPS:
                raise ValueError(f"{caller}: steps[{i}] must be one of {list(STEPS)}, got {s!r}.")
            _check_step(s, debiaser, caller)
            if s in names:
                raise ValueError(f"{caller}: steps names {s!r} twice.")
            names.append(s)
    else:
        raise ValueError(
            f"{caller}: steps must be 'all' or a non-empty list of step names from "
            f"{list(STEPS)}, got {steps!r}."
        )
    return ["base"] + [s for s in names if s != "base"]
