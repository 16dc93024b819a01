"""Argument checks of :class:`~skebrm.RefinedRewardModel` (shared with its loader)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch


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
