"""Scoring with a :class:`~skebrm.RefinedRewardModel`: its :class:`RewardScores`, the rows
it scores and the pairs its guard is decided on.

The RM runs in the bundle's extractor (under ``torch.inference_mode``); its embeddings and
rewards then go through the calibrator in one call. The guard's penalty is the one the
calibrator's ``guard_scores_`` record: a bundle that serves another one warns, and says so
in its repr.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skebrm._bundle_args import _check_text_columns
from skebrm.exceptions import RefinementWarning, warn_user

__all__ = ["RewardScores", "bundle_repr", "fit_guard_pairs", "score_texts", "warn_if_unguarded"]


@dataclass(frozen=True)
class RewardScores:
    """Per-text rewards of :meth:`RefinedRewardModel.score`, in the RM's units.

    Attributes
    ----------
    base_reward : ndarray of shape (n,)
        The frozen RM's own reward.
    refined_reward : ndarray of shape (n,)
        The calibrator's refined reward (mode of ``p(r | e)`` reached from the base reward).
    std : ndarray of shape (n,)
        Standard deviation of ``p(r | e)``: the uncertainty of the reward.
    base_served : bool, default=False
        True when the calibrator's guard rejected refinement (``guard="base"``): the
        served reward is then the base reward alone, without the penalty.
    """

    base_reward: np.ndarray
    refined_reward: np.ndarray
    std: np.ndarray
    base_served: bool = False

    def __len__(self) -> int:
        return int(self.base_reward.shape[0])

    def penalized(self, penalty: float) -> np.ndarray:
        """The served reward: ``refined_reward − penalty · std``, or the base reward when
        the guard rejected refinement (the penalty goes with the refinement)."""
        if self.base_served:
            return self.base_reward.copy()
        return self.refined_reward - penalty * self.std


def guard_penalty(calibrator) -> float | None:
    """The penalty the calibrator's guard was decided with (None: no guard yet)."""
    scores = getattr(calibrator, "guard_scores_", None)
    return None if scores is None else float(scores.get("penalty", 0.0))


def warn_if_unguarded(bundle) -> None:
    """A :class:`~skebrm.exceptions.RefinementWarning` when the bundle serves a penalty
    other than the one its calibrator's guard was decided for."""
    decided = guard_penalty(bundle.calibrator)
    if decided not in (None, bundle.penalty):
        warn_user(
            f"RefinedRewardModel: the calibrator's guard was decided for the reward "
            f"refined - {decided} * std, but this bundle serves refined - "
            f"{bundle.penalty} * std, which no guard evaluated. Call fit_guard on this "
            "bundle to decide it for the reward served.",
            RefinementWarning,
        )


def bundle_repr(bundle) -> str:
    """The bundle's repr: its model, extraction settings, penalty, device and, when they
    differ, the penalty its guard was decided at."""
    s = bundle.extraction_settings
    decided = guard_penalty(bundle.calibrator)
    return (
        f"RefinedRewardModel(model={s['model']!r}, max_length={s['max_length']}, "
        f"template={s['template']!r}, pooling={s['pooling']!r}, dtype={s['dtype']!r}, "
        f"penalty={bundle.penalty}, device={str(bundle.device)!r}"
        + ("" if decided in (None, bundle.penalty) else f", guard decided at penalty={decided}")
        + ")"
    )


def score_texts(bundle, prompts: Sequence[str], completions: Sequence[str]) -> RewardScores:
    """:meth:`RefinedRewardModel.score`: the RM on every row, then the calibrator."""
    prompts, completions = _check_text_columns(
        "RefinedRewardModel.score", prompts=prompts, completions=completions
    )
    if not prompts:
        empty = np.empty(0)
        return RewardScores(empty, empty.copy(), empty.copy())
    # the RM's forward runs under torch.inference_mode (inside the extractor); the
    # calibrator runs under its own no_grad (its cached inference weights must stay
    # ordinary tensors, which inference mode would not give), and works inside a caller's
    # torch.inference_mode, as a trainer's reward loop runs it
    res = bundle.extractor.extract(list(zip(prompts, completions)))
    cal = bundle.calibrator
    refined, std = cal.predict(res.embeddings, base_reward=res.rewards, return_std=True)
    return RewardScores(
        base_reward=res.rewards.astype(np.float64),
        refined_reward=np.asarray(refined, dtype=np.float64),
        std=np.asarray(std, dtype=np.float64),
        base_served=cal._serves_base(),
    )


def fit_guard_pairs(
    bundle, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
) -> None:
    """:meth:`RefinedRewardModel.fit_guard`: the RM on both rows of every pair, then the
    calibrator's ``fit_guard`` with the bundle's penalty."""
    caller = "RefinedRewardModel.fit_guard"
    prompts, chosen, rejected = _check_text_columns(
        caller, prompts=prompts, chosen=chosen, rejected=rejected
    )
    if not prompts:
        raise ValueError(f"{caller}: needs at least one pair, got none.")
    rows = [row for p, c, r in zip(prompts, chosen, rejected) for row in ((p, c), (p, r))]
    res = bundle.extractor.extract(rows)
    n = len(prompts)
    bundle.calibrator.fit_guard(
        res.embeddings,
        res.rewards,
        pair_id=np.repeat(np.arange(n), 2),
        chosen=np.tile([True, False], n),
        penalty=bundle.penalty,
    )
