"""Pair metadata: validation, row indexing and conflict-aware filtering.

Rows are responses. ``pair_id[i]`` names the preference pair that row ``i`` belongs to
and ``chosen[i]`` says whether it is the preferred response. Every pair has exactly two
rows, one chosen and one rejected, in any order.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_pairs",
    "conflicting_pairs",
    "fit_layout",
    "pair_groups",
    "split_validation_pairs",
]


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


def pair_groups(groups, idx_chosen, idx_rejected, n_samples: int, *, caller: str) -> np.ndarray:
    """The group of each pair, from per-row ``groups`` (both rows of a pair must agree)."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != n_samples:
        raise ValueError(
            f"{caller}: groups must have shape ({n_samples},) to align with X, got shape "
            f"{groups.shape}."
        )
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    gc, gr = codes[idx_chosen], codes[idx_rejected]
    bad = np.flatnonzero(gc != gr)
    if bad.size:
        raise ValueError(
            f"{caller}: both rows of a pair must be in the same group; the rows of pair "
            f"{bad[0]} are in groups {groups[idx_chosen[bad[0]]]!r} and "
            f"{groups[idx_rejected[bad[0]]]!r} ({bad.size} pair(s) affected)."
        )
    return gc


def split_validation_pairs(
    pair_group: np.ndarray, fraction: float, rng, *, caller: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hold out whole groups of pairs; split them into a selection and a guard half.

    Groups are drawn in random order until they hold ``round(fraction · n_pairs)`` pairs
    (at least two groups); the held-out groups are then dealt in the same order to the
    half with fewer pairs so far, the selection half first. Returns sorted pair positions
    ``(train, selection, guard)``. The selection half picks the epoch; the guard half,
    which epoch selection never sees, decides whether refinement helps.
    """
    n_pairs = pair_group.size
    target = int(round(fraction * n_pairs))
    uniq, counts = np.unique(pair_group, return_counts=True)
    order = rng.permutation(uniq.size)
    held, n_held = [], 0
    for g in order:
        if n_held >= target and len(held) >= 2:
            break
        held.append((uniq[g], counts[g]))
        n_held += counts[g]
    if len(held) < 2 or n_held >= n_pairs:
        raise ValueError(
            f"{caller}: validation_fraction={fraction} of {n_pairs} pairs in {uniq.size} "
            "group(s) leaves no training pairs or fewer than two held-out groups (one picks "
            "the epoch, one decides the guard); use more pairs or groups, or another fraction."
        )
    sel, guard, n_sel, n_guard = [], [], 0, 0
    for g, count in held:
        if n_sel <= n_guard:
            sel.append(g)
            n_sel += count
        else:
            guard.append(g)
            n_guard += count
    in_sel, in_guard = np.isin(pair_group, sel), np.isin(pair_group, guard)
    pos = np.arange(n_pairs)
    return pos[~(in_sel | in_guard)], pos[in_sel], pos[in_guard]


def fit_layout(
    y,
    pair_id,
    chosen,
    groups,
    *,
    validation_fraction,
    filter_conflicts: bool,
    preference_weight: float,
    rng,
    caller: str,
) -> dict:
    """Which rows and pairs of a fit train, pick the epoch and decide the guard.

    Returns a dict: ``rows`` (rows in the likelihood term: the rows of the training pairs
    that survive conflict filtering, or every row without pairs), ``pref`` ((P, 2) chosen
    and rejected rows of *every* training pair, for the preference term, or None),
    ``select`` and ``guard`` (held-out rows laid out chosen, rejected, ..., or None),
    ``n_pairs`` and ``n_dropped``.
    """
    n = y.shape[0]
    out = {"n_pairs": 0, "n_dropped": 0, "select": None, "guard": None, "pref": None}
    if pair_id is None and chosen is None:
        if groups is not None or validation_fraction is not None:
            what = "groups" if groups is not None else f"validation_fraction={validation_fraction}"
            raise ValueError(
                f"{caller}: {what} needs pair metadata (pair_id and chosen) to score "
                "pairwise accuracy."
            )
        if preference_weight > 0:
            raise ValueError(
                f"{caller}: preference_weight={preference_weight} needs pair metadata "
                "(pair_id and chosen); pass them, or set preference_weight=0."
            )
        out["rows"] = np.arange(n)
        return out
    idx_c, idx_r = check_pairs(pair_id, chosen, n, caller=caller)
    out["n_pairs"] = len(idx_c)
    train = np.arange(len(idx_c))
    if validation_fraction is not None:
        if groups is None:
            group = np.arange(len(idx_c))
        else:
            group = pair_groups(groups, idx_c, idx_r, n, caller=caller)
        train, select, guard = split_validation_pairs(
            group, validation_fraction, rng, caller=caller
        )
        out["select"] = np.stack([idx_c[select], idx_r[select]], 1).reshape(-1)
        out["guard"] = np.stack([idx_c[guard], idx_r[guard]], 1).reshape(-1)
    keep = train
    if filter_conflicts:
        bad = conflicting_pairs(y, idx_c[train], idx_r[train])
        out["n_dropped"] = int(bad.sum())
        keep = train[~bad]
        if keep.size == 0:
            raise ValueError(
                f"{caller}: every training pair is conflicting (the reward of the chosen "
                "response is never strictly above the rejected one), so nothing is left to "
                "fit. Check the chosen labels, or set filter_conflicts=False."
            )
    out["rows"] = np.sort(np.r_[idx_c[keep], idx_r[keep]])
    if preference_weight > 0:
        out["pref"] = np.stack([idx_c[train], idx_r[train]], 1)
    return out
