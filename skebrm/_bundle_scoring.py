"""Scoring with a :class:`~skebrm.RefinedRewardModel`: its :class:`RewardScores`, the rows
it scores and the pairs its guards are decided on.

The RM runs in the bundle's extractor (under ``torch.inference_mode``); its embeddings and
rewards then go through the calibrator: the refined reward, and the mean and standard
deviation of ``p(r | e)`` from one pass over the grid; with a debiaser, the length bias of
each completion (its length in characters). The guard's penalty is the one the step
choice was made at or, without one, the one the calibrator's ``guard_scores_`` record: a
bundle that serves another one warns, and says so in its repr.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skebrm._bundle_args import (
    DEBIASED_STEPS,
    STEPS,
    _check_step,
    _check_steps,
    _check_text_columns,
)
from skebrm._params import check_confidence
from skebrm.exceptions import RefinementWarning, warn_user

__all__ = [
    "RewardScores",
    "bundle_repr",
    "choose_served_step",
    "fit_guard_pairs",
    "score_texts",
    "warn_if_unguarded",
]

# set by the loader while it builds a bundle whose step choice it restores afterwards: the
# penalty check then runs once the choice is in place
DEFER_GUARD_WARNING = contextvars.ContextVar("skebrm_defer_guard_warning", default=False)


@dataclass(frozen=True)
class RewardScores:
    """Per-text rewards of :meth:`RefinedRewardModel.score`, in the RM's units.

    Parameters
    ----------
    base_reward : ndarray of shape (n,)
        The frozen RM's own reward.
    refined_reward : ndarray of shape (n,)
        The calibrator's refined reward (mode of ``p(r | e)`` reached from the base reward).
    std : ndarray of shape (n,)
        Standard deviation of ``p(r | e)``: the uncertainty of the reward.
    base_served : bool, default=False
        True when the calibrator's guard rejected refinement (``guard="base"``, and the
        bundle has no step choice): ``refined_reward`` is then the base reward, and the
        steps built on the refinement serve their unrefined counterpart without the
        penalty (see :meth:`served`).
    mean_reward : ndarray of shape (n,) or None, default=None
        The mean of ``p(r | e)`` (the step ``"mean"``).
    debiased_reward : ndarray of shape (n,) or None, default=None
        ``debiaser.transform(length, base_reward)``: the base reward less ``length_bias``
        (a bundle with a debiaser only).
    length_bias : ndarray of shape (n,) or None, default=None
        ``alpha · b̂(length)``: what the debiaser subtracts, ``length`` the completion's
        length in characters (a bundle with a debiaser only).
    step : str, default="refined"
        The step the bundle served when it scored these texts (see :meth:`served`).
    """

    base_reward: np.ndarray
    refined_reward: np.ndarray
    std: np.ndarray
    base_served: bool = False
    mean_reward: np.ndarray | None = None
    debiased_reward: np.ndarray | None = None
    length_bias: np.ndarray | None = None
    step: str = "refined"

    def __len__(self) -> int:
        return int(self.base_reward.shape[0])

    def penalized(self, penalty: float) -> np.ndarray:
        """The reward of the step ``"refined"``: ``refined_reward − penalty · std``, or the
        base reward when the guard rejected refinement (the penalty goes with the
        refinement). :meth:`served` gives the reward of the step served.

        Parameters
        ----------
        penalty : float
            λ of ``refined_reward − λ · std``.

        Returns
        -------
        ndarray of shape (n,)
            The penalised refined reward of each text, or a copy of the base reward.
        """
        if self.base_served:
            return self.base_reward.copy()
        return self.refined_reward - penalty * self.std

    def _needs(self, name: str, step: str) -> np.ndarray:
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"RewardScores.served: step {step!r} needs {name}, but these scores have "
                f"none (a bundle computes it{' with a debiaser' if name != 'mean_reward' else ''})."
            )
        return value

    def served(self, penalty: float, step: str | None = None) -> np.ndarray:
        """The reward served: that of ``step`` (default: the step scored, :attr:`step`).

        * ``"base"``: ``base_reward``;
        * ``"debiased"``: ``debiased_reward`` (``base_reward − length_bias``);
        * ``"refined"``: ``refined_reward − penalty · std`` (:meth:`penalized`);
        * ``"refined+debiased"``: ``refined_reward − penalty · std − length_bias``;
        * ``"mean"``: ``mean_reward − penalty · std``.

        When :attr:`base_served` (the calibrator's guard rejected refinement), the steps
        built on ``p(r | e)`` serve their unrefined counterpart, without the penalty:
        ``"refined"`` and ``"mean"`` the base reward, ``"refined+debiased"`` the debiased
        one.

        Parameters
        ----------
        penalty : float
            λ ≥ 0 of the uncertainty penalty (the bundle's ``penalty``).
        step : str, optional
            One of the steps above; None: :attr:`step`.

        Returns
        -------
        ndarray of shape (n,)
            A new array.
        """
        step = self.step if step is None else step
        if step not in STEPS:
            raise ValueError(
                f"RewardScores.served: step must be one of {list(STEPS)}, got {step!r}."
            )
        if self.base_served and step != "base":
            step = "debiased" if step in DEBIASED_STEPS else "base"
        if step == "base":
            return self.base_reward.copy()
        if step == "debiased":
            return self._needs("debiased_reward", step).copy()
        if step == "refined":
            return self.refined_reward - penalty * self.std
        if step == "refined+debiased":
            return self.refined_reward - penalty * self.std - self._needs("length_bias", step)
        return self._needs("mean_reward", step) - penalty * self.std


def guard_penalty(calibrator) -> float | None:
    """The penalty the calibrator's guard was decided with (None: no guard yet)."""
    scores = getattr(calibrator, "guard_scores_", None)
    return None if scores is None else float(scores.get("penalty", 0.0))


def decided_penalty(bundle) -> tuple[float | None, str]:
    """The penalty the bundle's guard was decided with and which guard decided it: its step
    choice's, else its calibrator's (None: no guard yet)."""
    if getattr(bundle, "step_choice_", None) is not None:
        return getattr(bundle, "step_choice_penalty_", None), "step"
    return guard_penalty(bundle.calibrator), "calibrator"


def warn_if_unguarded(bundle) -> None:
    """A :class:`~skebrm.exceptions.RefinementWarning` when the bundle serves a penalty
    other than the one its guard (step choice, else calibrator's) was decided for."""
    if DEFER_GUARD_WARNING.get():
        return
    decided, which = decided_penalty(bundle)
    if decided in (None, bundle.penalty):
        return
    if which == "step":
        warn_user(
            f"RefinedRewardModel: the step was chosen for penalty {decided} (the candidates "
            f"refined - {decided} * std, ...), but this bundle serves penalty "
            f"{bundle.penalty}, which no step guard evaluated. Call fit_guard(..., steps=...) "
            "on this bundle to choose the step for the penalty served.",
            RefinementWarning,
        )
        return
    warn_user(
        f"RefinedRewardModel: the calibrator's guard was decided for the reward "
        f"refined - {decided} * std, but this bundle serves refined - "
        f"{bundle.penalty} * std, which no guard evaluated. Call fit_guard on this "
        "bundle to decide it for the reward served.",
        RefinementWarning,
    )


def bundle_repr(bundle) -> str:
    """The bundle's repr: its model, extraction settings, penalty, device, step (and its
    debiaser, and why the step was chosen) and, when they differ, the penalty its guard
    was decided at."""
    s = bundle.extraction_settings
    decided, which = decided_penalty(bundle)
    deb = bundle.debiaser
    choice = bundle.step_choice_
    text = (
        f"RefinedRewardModel(model={s['model']!r}, max_length={s['max_length']}, "
        f"template={s['template']!r}, pooling={s['pooling']!r}, dtype={s['dtype']!r}, "
        f"penalty={bundle.penalty}, device={str(bundle.device)!r}, step={bundle.step!r}"
    )
    if deb is not None:
        text += f", debiaser=LengthDebiaser(feature={deb.feature!r}, alpha={deb.alpha})"
    if decided not in (None, bundle.penalty):
        text += (
            f", step chosen at penalty={decided}"
            if which == "step"
            else f", guard decided at penalty={decided}"
        )
    if choice is not None:
        text += f", step choice: {choice.reason}"
    return text + ")"


def _score_rows(bundle, prompts: list, completions: list, *, gated: bool) -> RewardScores:
    """Every part of every step for the rows ``(prompts[i], completions[i])``; ``gated``:
    honour the calibrator's guard (``base_served``)."""
    from skebrm._params import check_rewards

    caller = "RefinedRewardModel.score"
    step = _check_step(bundle.step, bundle.debiaser, caller)
    if not prompts:
        empty = np.empty(0)
        parts = {"mean_reward": empty.copy()}
        if bundle.debiaser is not None:
            parts.update(debiased_reward=empty.copy(), length_bias=empty.copy())
        return RewardScores(empty, empty.copy(), empty.copy(), step=step, **parts)
    # the RM's forward runs under torch.inference_mode (inside the extractor); the
    # calibrator runs under its own no_grad (its cached inference weights must stay
    # ordinary tensors, which inference mode would not give), and works inside a caller's
    # torch.inference_mode, as a trainer's reward loop runs it
    res = bundle.extractor.extract(list(zip(prompts, completions)))
    cal = bundle.calibrator
    X = cal._check_X(res.embeddings, caller)
    post, settings = cal.posterior_, cal._settings()
    base = check_rewards(res.rewards, X.shape[0], "base_reward", caller)
    # as EnergyRewardCalibrator.predict(X, base_reward=base, return_std=True), and the
    # mean from the same distribution
    base_served = gated and cal._serves_base()
    refined = cal._refine_checked(X, base, gated=gated)
    dist = post.distribution(X, settings, mode=False)
    parts = {}
    deb = bundle.debiaser
    if deb is not None:
        from skebrm.debias import response_features

        length = response_features(completions, "chars")
        parts["debiased_reward"] = np.asarray(deb.transform(length, base), dtype=np.float64)
        parts["length_bias"] = np.asarray(deb.alpha * deb.bias(length), dtype=np.float64)
    return RewardScores(
        base_reward=base,
        refined_reward=np.asarray(refined, dtype=np.float64),
        std=np.asarray(dist.std(), dtype=np.float64),
        base_served=bool(base_served),
        mean_reward=np.asarray(dist.mean(), dtype=np.float64),
        step=step,
        **parts,
    )


def score_texts(bundle, prompts: Sequence[str], completions: Sequence[str]) -> RewardScores:
    """:meth:`RefinedRewardModel.score`: the RM on every row, then the calibrator (and the
    debiaser). The calibrator's guard applies unless the bundle has a step choice, which
    then decides alone what is served."""
    prompts, completions = _check_text_columns(
        "RefinedRewardModel.score", prompts=prompts, completions=completions
    )
    return _score_rows(bundle, prompts, completions, gated=bundle.step_choice_ is None)


def _pair_rows(caller: str, prompts, chosen, rejected) -> tuple[int, list, list]:
    prompts, chosen, rejected = _check_text_columns(
        caller, prompts=prompts, chosen=chosen, rejected=rejected
    )
    if not prompts:
        raise ValueError(f"{caller}: needs at least one pair, got none.")
    rows = [row for p, c, r in zip(prompts, chosen, rejected) for row in ((p, c), (p, r))]
    return len(prompts), [p for p, _ in rows], [c for _, c in rows]


def fit_guard_pairs(
    bundle, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
) -> None:
    """:meth:`RefinedRewardModel.fit_guard` without ``steps``: the RM on both rows of every
    pair, then the calibrator's ``fit_guard`` with the bundle's penalty."""
    caller = "RefinedRewardModel.fit_guard"
    if bundle.step != "refined":
        raise ValueError(
            f"{caller}: without steps=, fit_guard decides the calibrator's guard of the step "
            f"'refined', but this bundle serves step {bundle.step!r}; pass steps= (e.g. "
            f"steps=[{bundle.step!r}] or steps='all') to choose the step served."
        )
    n, row_prompts, row_completions = _pair_rows(caller, prompts, chosen, rejected)
    res = bundle.extractor.extract(list(zip(row_prompts, row_completions)))
    bundle.calibrator.fit_guard(
        res.embeddings,
        res.rewards,
        pair_id=np.repeat(np.arange(n), 2),
        chosen=np.tile([True, False], n),
        penalty=bundle.penalty,
    )


def choose_served_step(
    bundle,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    steps,
    confidence,
):
    """:meth:`RefinedRewardModel.fit_guard` with ``steps``: the RM once on both rows of
    every pair, every candidate's reward (the refinement itself, whatever the calibrator's
    guard says), then :func:`~skebrm.steps.choose_step` against the base reward.

    Returns
    -------
    StepChoice
    """
    from skebrm.steps import choose_step

    caller = "RefinedRewardModel.fit_guard"
    names = _check_steps(steps, bundle.debiaser, caller)
    if confidence is None:
        confidence = bundle.calibrator.guard_confidence
    confidence = check_confidence(confidence, caller)
    _, row_prompts, row_completions = _pair_rows(caller, prompts, chosen, rejected)
    scores = _score_rows(bundle, row_prompts, row_completions, gated=False)
    candidates = {name: scores.served(bundle.penalty, name) for name in names}
    return choose_step(candidates, base="base", confidence=confidence)
