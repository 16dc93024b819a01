"""Input checks shared by the metrics."""

from __future__ import annotations

import numpy as np


def _as_1d(name: str, value, *, caller: str, dtype=np.float64) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{caller}: {name} must be 1-D, got shape {arr.shape}.")
    if dtype is np.float64 and not np.all(np.isfinite(arr)):
        raise ValueError(f"{caller}: {name} must be finite, got NaN or infinite values.")
    return arr


def _same_length(caller: str, **arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{caller}: inputs must have the same length, got {lengths}.")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{caller}: inputs are empty; need at least one pair.")
    return n
