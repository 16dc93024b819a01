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
