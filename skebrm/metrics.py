"""Evaluation metrics for reward models: plain functions on arrays.

Conventions
-----------
* A *pair* is scored by the reward of its chosen and of its rejected response. A pair is
  ordered correctly when ``reward_chosen > reward_rejected``; a tie counts one half
  (RewardBench's rule).
* Uncertainty is "higher is less sure". Pair uncertainty is whatever the caller passes,
  for example ``sqrt(std_chosen**2 + std_rejected**2)``, the posterior spread of the
  margin, or the base margin ``−|r_c − r_r|`` (:func:`margin_uncertainty`), the baseline
  every uncertainty has to beat.
* Best-of-k (RewardBench 2): pairs that share a prompt and a chosen response form one
  group of ``k`` responses, scored by whether the chosen beats all ``k − 1`` rejected.
* A preference probability is ``P(chosen ≻ rejected)``. Its calibration is measured on the
  symmetrised sample ``(p, 1) ∪ (1 − p, 0)`` (see :func:`preference_calibration_data`),
  because in preference data the chosen response is, by construction, always the winner.

Plotting helpers import matplotlib lazily and draw on a bare ``Figure`` with the Agg
canvas, so they never touch the global pyplot state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.utils import check_random_state

from skebrm._io import write_bytes_atomic
from skebrm.distribution import preference_probability_from_masses

__all__ = [
    "REWARDBENCH_EXAMPLE_COUNTS",
    "REWARDBENCH_SUBSET_MAPPING",
    "BootstrapResult",
    "ReliabilityCurve",
    "abstention_accuracy",
    "best_of_k_accuracy",
    "best_of_k_correct",
    "disagreement_auroc",
    "expected_calibration_error",
    "margin_uncertainty",
    "misorder_auroc",
    "paired_bootstrap",
    "pairwise_accuracy",
    "pairwise_correct",
    "plot_abstention",
    "plot_percent_lines",
    "plot_reliability_diagram",
    "preference_calibration_data",
    "preference_probability",
    "reliability_curve",
    "rewardbench_scores",
]

IMPLICIT_SECTION = "all"
"""Name of the single section of a dataset whose rows carry no section label."""


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


def pairwise_correct(reward_chosen, reward_rejected) -> np.ndarray:
    """Per-pair credit: 1 if ``chosen > rejected``, 0.5 on a tie, else 0.

    Parameters
    ----------
    reward_chosen, reward_rejected : array-like of shape (n_pairs,)

    Returns
    -------
    ndarray of shape (n_pairs,)

    Examples
    --------
    >>> pairwise_correct([2.0, 1.0, 0.0], [1.0, 1.0, 3.0])
    array([1. , 0.5, 0. ])
    """
    rc = _as_1d("reward_chosen", reward_chosen, caller="pairwise_correct")
    rr = _as_1d("reward_rejected", reward_rejected, caller="pairwise_correct")
    _same_length("pairwise_correct", reward_chosen=rc, reward_rejected=rr)
    return (rc > rr) + 0.5 * (rc == rr)


def pairwise_accuracy(reward_chosen, reward_rejected) -> float:
    """Share of pairs ordered correctly; a tie counts 0.5.

    Examples
    --------
    >>> pairwise_accuracy([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 3.0, 4.0])
    0.625
    """
    return float(pairwise_correct(reward_chosen, reward_rejected).mean())


def _labels(name: str, value, n: int, default: str) -> np.ndarray:
    if value is None:
        return np.full(n, default, dtype=object)
    arr = np.asarray(value, dtype=object)
    if arr.shape != (n,):
        raise ValueError(
            f"rewardbench_scores: {name} must have shape ({n},) to align with the rewards, "
            f"got shape {arr.shape}."
        )
    return np.array([default if v is None or v in ("", "None") else str(v) for v in arr], object)


# RewardBench's constants, from allenai/reward-bench, rewardbench/constants.py at commit
# 05a9005efb607249822c193590c8ecab87c77052 (which includes #175, the swap that gave
# xstest-should-respond 250 and xstest-should-refuse 154, "mirror change from leaderboard").
# ``EXAMPLE_COUNTS`` weights each subset inside its section; ``math-prm`` is upweighted from
# its 447 pairs to 984 ("to be equal to code", 6 × 164), so Reasoning is half math, half code.
REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
"""RewardBench's per-subset weights (``rewardbench/constants.py::EXAMPLE_COUNTS``)."""

REWARDBENCH_SUBSET_MAPPING: dict[str, tuple[str, ...]] = {
    "Chat": (
        "alpacaeval-easy",
        "alpacaeval-length",
        "alpacaeval-hard",
        "mt-bench-easy",
        "mt-bench-med",
    ),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
"""RewardBench's sections (``rewardbench/constants.py::SUBSET_MAPPING``)."""

_REWARDBENCH_SECTION_OF = {
    sub: sec for sec, subs in REWARDBENCH_SUBSET_MAPPING.items() for sub in subs
}


def rewardbench_scores(
    reward_chosen, reward_rejected, subset=None, section=None, *, weighting: str = "auto"
) -> dict:
    """Pairwise accuracy per subset, per section and overall, with RewardBench's rules.

    * subset accuracy: share of its pairs ordered correctly (ties count 0.5);
    * section score: the weighted mean of its subsets' accuracies;
    * overall score: the unweighted mean of the section scores.

    Two weightings of the subsets inside a section:

    * ``"rewardbench"`` — RewardBench's own: every subset label must be a RewardBench
      subset name; sections come from :data:`REWARDBENCH_SUBSET_MAPPING` and weights from
      :data:`REWARDBENCH_EXAMPLE_COUNTS`, whatever the number of pairs present (as
      ``rewardbench.utils.calculate_scores_per_section`` does, over the subsets present).
      ``math-prm`` weighs 984, so Reasoning is half math and half code. A ``section``
      label, where given, must agree with RewardBench's mapping.
    * ``"pooled"`` — each subset weighs its number of pairs, so a section score is the
      accuracy over its pooled pairs. For data whose subsets are not RewardBench's.
    * ``"auto"`` (default) — ``"rewardbench"`` when every subset label is a RewardBench
      subset name, else ``"pooled"``.

    A dataset whose rows carry no section (``section`` is ``None`` or every value is
    ``None``) forms, under pooling, one implicit section named ``"all"``, so ``overall``
    is then the pooled accuracy. Rows without a subset label fall in the subset ``"all"``.
    A subset that appears in several sections is scored separately in each.

    Parameters
    ----------
    reward_chosen, reward_rejected : array-like of shape (n_pairs,)
    subset, section : array-like of shape (n_pairs,), optional
        Labels per pair (the ``subset`` and ``section`` fields of the shared schema).
    weighting : {"auto", "rewardbench", "pooled"}, default="auto"

    Returns
    -------
    dict
        ``{"subsets": {name: {"accuracy", "count", "weight", "section"}}, "sections":
        {name: {"accuracy", "count"}}, "overall": float, "n_pairs": int, "weighting":
        "rewardbench" | "pooled"}``. ``count`` is the number of pairs present, ``weight``
        the subset's weight in its section. When one subset name lies in two sections its
        key is ``"section/subset"``.

    Examples
    --------
    >>> s = rewardbench_scores([1, 1, 0, 1], [0, 0, 1, 0], subset=["a", "a", "b", "c"],
    ...                        section=["S", "S", "S", "T"])
    >>> s["sections"]["S"]["accuracy"], s["overall"], s["weighting"]
    (0.6666666666666666, 0.8333333333333333, 'pooled')
    >>> s = rewardbench_scores([1, 0, 1], [0, 1, 0], subset=["math-prm", "hep-go", "hep-cpp"])
    >>> s["sections"]["Reasoning"]["accuracy"]  # (984·1 + 164·0 + 164·1) / 1312
    0.875
    """
    if weighting not in ("auto", "rewardbench", "pooled"):
        raise ValueError(
            "rewardbench_scores: weighting must be one of 'auto', 'rewardbench', 'pooled', "
            f"got {weighting!r}."
        )
    correct = pairwise_correct(reward_chosen, reward_rejected)
    n = len(correct)
    sub = _labels("subset", subset, n, IMPLICIT_SECTION)
    sec = _labels("section", section, n, IMPLICIT_SECTION)
    unknown = sorted(set(sub.tolist()) - set(REWARDBENCH_EXAMPLE_COUNTS))
    if weighting == "auto":
        weighting = "pooled" if unknown else "rewardbench"
    if weighting == "rewardbench":
        if unknown:
            raise ValueError(
                "rewardbench_scores: weighting='rewardbench' needs RewardBench subset names, "
                f"got {len(unknown)} other(s): {unknown[:5]}; use weighting='pooled'."
            )
        mapped = np.array([_REWARDBENCH_SECTION_OF[s] for s in sub], dtype=object)
        given = sec != IMPLICIT_SECTION
        clash = given & (sec != mapped)
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise ValueError(
                f"rewardbench_scores: subset {sub[i]!r} lies in RewardBench's section "
                f"{mapped[i]!r}, but its section label is {sec[i]!r}; drop the section "
                "labels or use weighting='pooled'."
            )
        sec = mapped
    keys = sorted(set(zip(sec.tolist(), sub.tolist())))
    subset_names = [k[1] for k in keys]
    duplicated = {s for s in subset_names if subset_names.count(s) > 1}
    subsets: dict[str, dict] = {}
    sections: dict[str, dict] = {}
    for sec_name, sub_name in keys:
        mask = (sec == sec_name) & (sub == sub_name)
        key = f"{sec_name}/{sub_name}" if sub_name in duplicated else sub_name
        count = int(mask.sum())
        subsets[key] = {
            "accuracy": float(correct[mask].mean()),
            "count": count,
            "weight": REWARDBENCH_EXAMPLE_COUNTS[sub_name] if weighting == "rewardbench" else count,
            "section": sec_name,
        }
    for sec_name in sorted(set(sec.tolist())):
        members = [v for v in subsets.values() if v["section"] == sec_name]
        weight = sum(v["weight"] for v in members)
        acc = sum(v["accuracy"] * v["weight"] for v in members) / weight
        sections[sec_name] = {
            "accuracy": float(acc),
            "count": int(sum(v["count"] for v in members)),
        }
    overall = float(np.mean([v["accuracy"] for v in sections.values()]))
    return {
        "subsets": subsets,
        "sections": sections,
        "overall": overall,
        "n_pairs": int(n),
        "weighting": weighting,
    }


def best_of_k_correct(reward_chosen, reward_rejected, group) -> tuple[np.ndarray, np.ndarray]:
    """Best-of-k credit per group of pairs that share a prompt and a chosen response.

    A group of ``k − 1`` pairs compares one chosen response with ``k − 1`` rejected ones
    (RewardBench 2's format). Its credit is 1 when the chosen reward is above every
    rejected reward, 0 when any rejected reward is above it, and ``1 / (1 + t)`` when it
    is above the others but tied with ``t`` of them. That is RewardBench 2's tie rule
    (``rewardbench/utils.py::reroll_and_score_dataset``: ``1 / #max`` if the chosen score
    is a maximum, else 0), evaluated pair by pair, so it is exact when the chosen
    response's reward is one number and still defined when the ``k − 1`` copies of the
    chosen row differ by float round-off.

    Parameters
    ----------
    reward_chosen, reward_rejected : array-like of shape (n_pairs,)
    group : array-like of shape (n_pairs,)
        Hashable label per pair; pairs with one label form one group.

    Returns
    -------
    credit : ndarray of shape (n_groups,)
    k : ndarray of int of shape (n_groups,)
        Responses per group (pairs + 1). Groups are in order of first appearance.

    Examples
    --------
    >>> credit, k = best_of_k_correct([3, 3, 3, 1], [1, 2, 3, 0], ["a", "a", "a", "b"])
    >>> credit.tolist(), k.tolist()
    ([0.5, 1.0], [4, 2])
    """
    rc = _as_1d("reward_chosen", reward_chosen, caller="best_of_k_correct")
    rr = _as_1d("reward_rejected", reward_rejected, caller="best_of_k_correct")
    g = np.asarray(group)
    if g.ndim != 1:
        raise ValueError(f"best_of_k_correct: group must be 1-D, got shape {g.shape}.")
    _same_length("best_of_k_correct", reward_chosen=rc, reward_rejected=rr, group=g)
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_groups = first.size
    beaten = np.bincount(inverse, weights=rr > rc, minlength=n_groups)
    ties = np.bincount(inverse, weights=rr == rc, minlength=n_groups)
    size = np.bincount(inverse, minlength=n_groups)
    credit = np.where(beaten > 0, 0.0, 1.0 / (1.0 + ties))
    order = np.argsort(first, kind="stable")
    return credit[order], size[order] + 1


def best_of_k_accuracy(reward_chosen, reward_rejected, group, *, min_k: int = 3) -> float:
    """Share of groups whose chosen response beats all its ``k − 1`` rejected ones.

    The mean of :func:`best_of_k_correct` over the groups with at least ``min_k``
    responses (default 3: at least two rejected, where best-of-k differs from pairwise
    accuracy). NaN when no group is that large. Chance level is the mean of ``1 / k``.

    Examples
    --------
    >>> best_of_k_accuracy([3, 3, 3, 1], [1, 2, 3, 0], ["a", "a", "a", "b"])
    0.5
    """
    if not isinstance(min_k, (int, np.integer)) or min_k < 2:
        raise ValueError(f"best_of_k_accuracy: min_k must be an int >= 2, got {min_k!r}.")
    credit, k = best_of_k_correct(reward_chosen, reward_rejected, group)
    keep = k >= min_k
    return float(credit[keep].mean()) if keep.any() else float("nan")


class BootstrapResult(NamedTuple):
    """Difference of two paired means with its percentile bootstrap interval."""

    difference: float
    ci_low: float
    ci_high: float
    std_error: float
    n_resamples: int
    confidence: float


def paired_bootstrap(
    correct_a,
    correct_b,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state=None,
) -> BootstrapResult:
    """Mean of ``correct_a − correct_b`` with a paired percentile bootstrap interval.

    Pairs are resampled with replacement, keeping each pair's two scores together, so the
    interval accounts for the correlation between two methods scored on the same pairs.

    Parameters
    ----------
    correct_a, correct_b : array-like of shape (n_pairs,)
        Per-pair scores of two methods on the same pairs (for example
        :func:`pairwise_correct`).
    n_resamples : int, default=2000
    confidence : float, default=0.95
        Two-sided coverage of the interval, in (0, 1).
    random_state : int, RandomState instance or None

    Returns
    -------
    BootstrapResult

    Examples
    --------
    >>> res = paired_bootstrap([1, 1, 1, 0], [1, 0, 0, 0], random_state=0)
    >>> res.difference
    0.5
    """
    a = _as_1d("correct_a", correct_a, caller="paired_bootstrap")
    b = _as_1d("correct_b", correct_b, caller="paired_bootstrap")
    n = _same_length("paired_bootstrap", correct_a=a, correct_b=b)
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(
            f"paired_bootstrap: n_resamples must be a positive int, got {n_resamples!r}."
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_bootstrap: confidence must be in (0, 1), got {confidence!r}.")
    rng = check_random_state(random_state)
    diff = a - b
    stats = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.randint(0, n, size=(stop - start, n))
        stats[start:stop] = diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapResult(
        difference=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        std_error=float(stats.std(ddof=1)) if n_resamples > 1 else 0.0,
        n_resamples=int(n_resamples),
        confidence=float(confidence),
    )


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney AUROC with ties counted one half; NaN when a class is empty."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    ranks = np.empty(score.size)
    # average ranks over tied blocks
    _, start, counts = np.unique(sorted_score, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def misorder_auroc(uncertainty, reward_chosen, reward_rejected) -> float:
    """AUROC of pair uncertainty for predicting that a reward model misorders the pair.

    A pair is *misordered* when ``reward_chosen <= reward_rejected`` (a tie is not a
    correct order). An AUROC of 0.5 means the uncertainty says nothing about errors; 1
    means every misordered pair is more uncertain than every correctly ordered one. Ties
    in uncertainty count one half. Returns NaN when no pair, or every pair, is
    misordered (the AUROC is then undefined).

    Parameters
    ----------
    uncertainty : array-like of shape (n_pairs,)
    reward_chosen, reward_rejected : array-like of shape (n_pairs,)
        Rewards of the model whose errors are predicted (usually the base RM).

    Examples
    --------
    >>> misorder_auroc([0.1, 0.9, 0.2, 0.8], [1, 0, 1, 0], [0, 1, 0, 1])
    1.0
    """
    u = _as_1d("uncertainty", uncertainty, caller="misorder_auroc")
    rc = _as_1d("reward_chosen", reward_chosen, caller="misorder_auroc")
    rr = _as_1d("reward_rejected", reward_rejected, caller="misorder_auroc")
    _same_length("misorder_auroc", uncertainty=u, reward_chosen=rc, reward_rejected=rr)
    return _auroc(u, rc <= rr)


def margin_uncertainty(reward_chosen, reward_rejected) -> np.ndarray:
    """The base margin as a pair uncertainty: ``−|r_c − r_r|`` (a small margin is unsure).

    The uncertainty any reward model has for free; an uncertainty method is worth its
    cost only where it predicts errors (:func:`misorder_auroc`) better than this.

    Examples
    --------
    >>> margin_uncertainty([2.0, 0.5], [1.5, 3.0])
    array([-0.5, -2.5])
    """
    rc = _as_1d("reward_chosen", reward_chosen, caller="margin_uncertainty")
    rr = _as_1d("reward_rejected", reward_rejected, caller="margin_uncertainty")
    _same_length("margin_uncertainty", reward_chosen=rc, reward_rejected=rr)
    return -np.abs(rc - rr)


def disagreement_auroc(uncertainty, disagreement) -> float:
    """AUROC of pair uncertainty for predicting that the annotators disagreed on a pair.

    ``disagreement`` is 1 where the annotators' votes were not unanimous, 0 where they
    were, and NaN where the pair has no votes (such pairs are left out). Ties in
    uncertainty count one half. NaN when no scored pair, or every one, has disagreement.

    Parameters
    ----------
    uncertainty : array-like of shape (n_pairs,)
    disagreement : array-like of shape (n_pairs,)
        0 / 1 / NaN per pair (see :attr:`skebrm.experiments.data.EmbeddedPairs.disagreement`).

    Examples
    --------
    >>> disagreement_auroc([0.1, 0.9, 0.5, 0.3], [0, 1, float("nan"), 0])
    1.0
    """
    u = _as_1d("uncertainty", uncertainty, caller="disagreement_auroc")
    d = np.asarray(disagreement, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"disagreement_auroc: disagreement must be 1-D, got shape {d.shape}.")
    _same_length("disagreement_auroc", uncertainty=u, disagreement=d)
    known = ~np.isnan(d)
    if np.any((d[known] != 0) & (d[known] != 1)):
        raise ValueError(
            "disagreement_auroc: disagreement must be 0, 1 or NaN, got values "
            f"{np.unique(d[known])[:5].tolist()}."
        )
    return _auroc(u[known], d[known] == 1)


def abstention_accuracy(
    uncertainty, correct, fractions: Sequence[float] = (0.1, 0.2, 0.3)
) -> dict[float, float]:
    """Accuracy on the pairs kept after abstaining on the most uncertain ones.

    For each fraction ``f`` the ``round(f * n_pairs)`` most uncertain pairs are dropped
    (ties broken by position, later pairs first) and the mean of ``correct`` over the
    rest is returned.

    Parameters
    ----------
    uncertainty : array-like of shape (n_pairs,)
    correct : array-like of shape (n_pairs,)
        Per-pair credit, e.g. from :func:`pairwise_correct`.
    fractions : sequence of float in [0, 1)

    Returns
    -------
    dict
        ``{fraction: accuracy}``.

    Examples
    --------
    >>> abstention_accuracy([0.1, 0.9, 0.2, 0.3], [1, 0, 1, 1], fractions=(0.0, 0.25))
    {0.0: 0.75, 0.25: 1.0}
    """
    u = _as_1d("uncertainty", uncertainty, caller="abstention_accuracy")
    c = _as_1d("correct", correct, caller="abstention_accuracy")
    n = _same_length("abstention_accuracy", uncertainty=u, correct=c)
    order = np.argsort(u, kind="stable")  # most certain first
    out: dict[float, float] = {}
    for f in fractions:
        if not 0.0 <= f < 1.0:
            raise ValueError(f"abstention_accuracy: every fraction must lie in [0, 1), got {f!r}.")
        n_keep = n - round(f * n)
        if n_keep < 1:
            raise ValueError(
                f"abstention_accuracy: fraction {f!r} abstains on all {n} pairs; use a "
                "smaller fraction or more pairs."
            )
        out[float(f)] = float(c[order[:n_keep]].mean())
    return out


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of predicted probabilities against observed frequencies.

    Empty bins hold NaN in ``mean_predicted`` and ``fraction_positive`` and 0 in ``count``.
    """

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray
    count: np.ndarray


def _check_prob_outcome(prob, outcome, caller: str) -> tuple[np.ndarray, np.ndarray]:
    p = _as_1d("prob", prob, caller=caller)
    y = _as_1d("outcome", outcome, caller=caller)
    _same_length(caller, prob=p, outcome=y)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"{caller}: prob must lie in [0, 1], got range [{p.min()}, {p.max()}].")
    if np.any((y != 0) & (y != 1)):
        raise ValueError(f"{caller}: outcome must be 0/1, got values {np.unique(y)[:5]}.")
    return p, y


def reliability_curve(prob, outcome, *, n_bins: int = 10) -> ReliabilityCurve:
    """Bin predicted probabilities into ``n_bins`` equal-width bins on [0, 1].

    Bin ``k`` holds ``k/n_bins <= p < (k+1)/n_bins``; ``p == 1`` falls in the last bin.
    """
    p, y = _check_prob_outcome(prob, outcome, "reliability_curve")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"reliability_curve: n_bins must be a positive int, got {n_bins!r}.")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac = np.bincount(idx, weights=y, minlength=n_bins) / count
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), mean_p, frac, count)


def expected_calibration_error(prob, outcome, *, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins.

    ``ECE = Σ_k (n_k / n) · |mean(outcome in bin k) − mean(prob in bin k)|``.

    Examples
    --------
    >>> round(expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 1]), 6)
    0.25
    """
    curve = reliability_curve(prob, outcome, n_bins=n_bins)
    filled = curve.count > 0
    gap = np.abs(curve.fraction_positive[filled] - curve.mean_predicted[filled])
    return float(np.sum(curve.count[filled] * gap) / curve.count.sum())


def preference_calibration_data(prob_chosen) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrise ``P(chosen ≻ rejected)`` into a sample with both outcomes.

    Returns ``(concat(p, 1 − p), concat(ones, zeros))``: each pair seen in both orders.
    A perfectly calibrated preference model has zero ECE on this sample.
    """
    p = _as_1d("prob_chosen", prob_chosen, caller="preference_calibration_data")
    return np.r_[p, 1.0 - p], np.r_[np.ones(p.size), np.zeros(p.size)]


def _grid_masses(log_density: np.ndarray, weights: np.ndarray) -> np.ndarray:
    finite_max = np.max(np.where(np.isneginf(log_density), -np.inf, log_density), axis=-1)
    if np.any(~np.isfinite(finite_max)):
        raise ValueError(
            "preference_probability: every log density must have at least one finite value "
            "and no NaN or +inf."
        )
    mass = np.exp(log_density - finite_max[..., None]) * weights
    return mass / mass.sum(axis=-1, keepdims=True)


def preference_probability(log_density_a, log_density_b, grid) -> np.ndarray:
    """``P(r_a > r_b) + ½·P(r_a = r_b)`` for independent rewards with densities on a grid.

    Each density is turned into probability masses at the grid points (trapezoid weights,
    normalised, so unnormalised log densities are fine); ``r_a`` and ``r_b`` are then
    independent discrete variables and ties get half credit, which keeps
    ``P(a ≻ b) + P(b ≻ a) = 1``.

    Parameters
    ----------
    log_density_a, log_density_b : array-like of shape (n, G) or (G,)
        Log densities of the two rewards at ``grid`` (``-inf`` allowed).
    grid : array-like of shape (G,)
        Strictly increasing reward values shared by both densities.

    Returns
    -------
    ndarray of shape (n,), or float for 1-D inputs

    Examples
    --------
    >>> import numpy as np
    >>> g = np.linspace(-8, 8, 1601)
    >>> ld = lambda mu: -0.5 * (g - mu) ** 2
    >>> round(float(preference_probability(ld(1.0), ld(0.0), g)), 3)  # Φ(1/√2)
    0.76
    """
    grid = _as_1d("grid", grid, caller="preference_probability")
    if grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError(
            f"preference_probability: grid must be strictly increasing with at least 2 "
            f"points, got {grid.size} point(s)."
        )
    la = np.asarray(log_density_a, dtype=np.float64)
    lb = np.asarray(log_density_b, dtype=np.float64)
    if la.shape != lb.shape or la.shape[-1] != grid.size or la.ndim not in (1, 2):
        raise ValueError(
            "preference_probability: log_density_a and log_density_b must both have shape "
            f"(n, {grid.size}) or ({grid.size},) to match grid, got {la.shape} and {lb.shape}."
        )
    step = np.diff(grid)
    weights = np.r_[step[0], step[:-1] + step[1:], step[-1]] / 2.0
    ma = _grid_masses(la, weights)
    mb = _grid_masses(lb, weights)
    prob = np.clip(preference_probability_from_masses(ma, mb), 0.0, 1.0)
    return float(prob) if prob.ndim == 0 else prob


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a figure to ``path`` atomically (rendered in memory, then renamed into place)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    return write_bytes_atomic(path, buf.getvalue())


def _finish_figure(fig, ax, *, title: str | None, path, legend_size: int = 7):
    """Title, legend, tight layout; write to ``path`` (atomically) if given."""
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    if path is not None:
        _save_figure(fig, path)
    return fig


def plot_percent_lines(
    lines: dict[str, dict[float, float]],
    path: str | os.PathLike | None = None,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 4.4),
    legend_size: int = 7,
):
    """One line per name through its ``{fraction: value}`` points, fractions shown in %."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    for name, points in lines.items():
        xs = sorted(points)
        ax.plot([100 * x for x in xs], [points[x] for x in xs], marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return _finish_figure(fig, ax, title=title, path=path, legend_size=legend_size)


def plot_reliability_diagram(
    curves: dict[str, ReliabilityCurve],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Reliability of P(chosen ≻ rejected)",
):
    """Draw reliability curves (one per method) and optionally save them as an image.

    Parameters
    ----------
    curves : dict of str to ReliabilityCurve
        Method name to its curve (see :func:`reliability_curve`).
    path : path-like, optional
        Where to write the figure (atomically); the format follows the suffix.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.8))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for name, c in curves.items():
        filled = c.count > 0
        ax.plot(c.mean_predicted[filled], c.fraction_positive[filled], marker="o", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed frequency")
    return _finish_figure(fig, ax, title=title, path=path)


def plot_abstention(
    curves: dict[str, dict[float, float]],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Accuracy when abstaining on the most uncertain pairs",
):
    """Draw accuracy against abstention fraction (one line per method); optionally save.

    Parameters
    ----------
    curves : dict of str to dict of float to float
        Method name to the output of :func:`abstention_accuracy`.
    path : path-like, optional
        Where to write the figure (atomically).

    Returns
    -------
    matplotlib.figure.Figure
    """
    return plot_percent_lines(
        curves,
        path,
        xlabel="abstained pairs (%)",
        ylabel="accuracy on kept pairs",
        title=title,
    )
