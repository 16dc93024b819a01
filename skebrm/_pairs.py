"""Pair metadata: validation, row indexing and conflict-aware filtering.

Rows are responses. ``pair_id[i]`` names the preference pair that row ``i`` belongs to
and ``chosen[i]`` says whether it is the preferred response. Every pair has exactly two
rows, one chosen and one rejected, in any order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_pairs", "conflicting_pairs"]


def check_pairs(pair_id, chosen, n_samples: int, *, caller: str = "fit") -> tuple[np.ndarray, ...]:
    """Validate pair metadata and index it.

    Parameters
    ----------
    pair_id : array-like of shape (n_samples,)
        Any hashable labels (ints, strings).
    chosen : array-like of shape (n_samples,)
        Truthy for the preferred response of its pair.
    n_samples : int
        Number of rows the metadata must align with.
    caller : str
        Name used in error messages.

    Returns
    -------
    idx_chosen, idx_rejected : ndarray of int of shape (n_pairs,)
        Row index of the chosen and the rejected response of each pair, ordered by the
        first appearance of the pair in ``pair_id``.
    """
    if pair_id is None and chosen is None:
        raise ValueError(f"{caller}: pair_id and chosen are both None.")
    if pair_id is None:
        raise ValueError(
            f"{caller}: chosen was given without pair_id; pass pair_id as well so that each "
            "row knows its pair."
        )
    if chosen is None:
        raise ValueError(
            f"{caller}: pair_id was given without chosen; pass chosen (bool per row, True for "
            "the preferred response)."
        )
    pair_id = np.asarray(pair_id)
    chosen_arr = np.asarray(chosen)
    for name, arr in (("pair_id", pair_id), ("chosen", chosen_arr)):
        if arr.ndim != 1 or arr.shape[0] != n_samples:
            raise ValueError(
                f"{caller}: {name} must have shape ({n_samples},) to align with X, got "
                f"shape {arr.shape}."
            )
    if chosen_arr.dtype != bool:
        if not np.all(np.isin(chosen_arr, [0, 1])):
            raise ValueError(
                f"{caller}: chosen must be boolean (or 0/1), got values "
                f"{np.unique(chosen_arr)[:5].tolist()}."
            )
        chosen_arr = chosen_arr.astype(bool)
    _, first, inverse, counts = np.unique(
        pair_id, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    bad = np.flatnonzero(counts != 2)
    if bad.size:
        uniq = np.unique(pair_id)
        raise ValueError(
            f"{caller}: every pair_id must appear on exactly two rows; pair_id "
            f"{uniq[bad[0]].item()!r} appears on {counts[bad[0]]} row(s) "
            f"({bad.size} pair(s) affected)."
        )
    n_chosen = np.bincount(inverse, weights=chosen_arr, minlength=counts.size)
    bad = np.flatnonzero(n_chosen != 1)
    if bad.size:
        uniq = np.unique(pair_id)
        raise ValueError(
            f"{caller}: each pair needs one chosen and one rejected row; pair_id "
            f"{uniq[bad[0]].item()!r} has {int(n_chosen[bad[0]])} chosen row(s) "
            f"({bad.size} pair(s) affected)."
        )
    idx_chosen = np.empty(counts.size, dtype=np.int64)
    idx_rejected = np.empty(counts.size, dtype=np.int64)
    rows = np.arange(n_samples)
    idx_chosen[inverse[chosen_arr]] = rows[chosen_arr]
    idx_rejected[inverse[~chosen_arr]] = rows[~chosen_arr]
    order = np.argsort(first, kind="stable")
    return idx_chosen[order], idx_rejected[order]


def conflicting_pairs(y, idx_chosen, idx_rejected) -> np.ndarray:
    """Boolean mask of pairs whose chosen reward is not strictly above the rejected one."""
    y = np.asarray(y)
    return ~(y[idx_chosen] > y[idx_rejected])
