"""Choosing the refinement step: one guard over several candidate rewards.

No single post-hoc step helps on every distribution: length debiasing gains where length
is a bias and loses where the chosen response is usually the longer one; EBRM's refined
reward is mostly within noise of the base. :func:`choose_step` takes the candidate rewards
of the same labelled pairs (the base reward, the debiased reward, the refined reward, ...)
and decides which one to serve.

The decision. Every candidate other than the base is compared with the base by the exact
one-sided paired sign test of the core guard (:func:`skebrm._guard.sign_flip_p_value`:
McNemar without ties on the pairs the two rank differently; a tie counts ½). With ``K``
candidates besides the base and ``α = 1 − confidence``, a candidate *passes* when its
p-value is ``≤ α / K`` (Bonferroni). Among the passing candidates the one with the highest
pairwise accuracy on these pairs is chosen (ties: the smaller p-value, then the order
given); when none passes, the base is chosen.

The guarantee. For pairs drawn independently from the distribution to be served, the
probability that a candidate which does *not* rank better than the base passes is at most
``α`` (the family-wise error of the Bonferroni-corrected tests, whatever the other
candidates do). So with probability ``≥ confidence`` the chosen step is the base or a
step that truly ranks better than the base. The test is one-sided: a step no better than
the base is never chosen for lack of evidence against it; the base is the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from skebrm._guard import min_detectable_gain, pair_credit, sign_flip_p_value
from skebrm._pairs import check_pairs
from skebrm._params import check_confidence, check_saved_header

__all__ = ["StepChoice", "choose_step"]

_FORMAT = "skebrm.StepChoice"
_VERSION = 1


@dataclass(frozen=True)
class StepChoice:
    """The step :func:`choose_step` chose, and the evidence for it.

    Parameters
    ----------
    step : str
        The chosen candidate's name (``base`` when no other candidate passed).
    base : str
        The name of the reference candidate.
    confidence : float
        ``1 − α`` of the family of tests.
    level : float
        The per-candidate level ``α / K`` (Bonferroni over the ``K`` non-base candidates).
    n_pairs : int
        Pairs the decision was taken on.
    scores : dict
        Per candidate: ``accuracy`` (pairwise, ties ½), and for the non-base ones
        ``p_value``, ``n_better``, ``n_worse`` (pairs it ranks right and the base wrong,
        and the reverse), ``min_detectable_gain`` (accuracy points detectable with 80 %
        power at ``level``; None: none) and ``passes``.
    """

    step: str
    base: str
    confidence: float
    level: float
    n_pairs: int
    scores: dict = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """One sentence: why this step is served."""
        if self.step == self.base:
            tested = [k for k in self.scores if k != self.base]
            if not tested:
                return f"{self.base}: no other candidate was given."
            best = min(tested, key=lambda k: self.scores[k]["p_value"])
            s = self.scores[best]
            return (
                f"{self.base}: no candidate ranks the {self.n_pairs} guard pairs better at "
                f"confidence {self.confidence:g} (best: {best}, accuracy "
                f"{s['accuracy']:.3f} against {self.scores[self.base]['accuracy']:.3f}, "
                f"p = {s['p_value']:.3g} > {self.level:.3g})."
            )
        s, b = self.scores[self.step], self.scores[self.base]
        return (
            f"{self.step}: ranks {s['accuracy']:.3f} of the {self.n_pairs} guard pairs "
            f"correctly against the {self.base}'s {b['accuracy']:.3f} ({s['n_better']} "
            f"better, {s['n_worse']} worse; exact sign test p = {s['p_value']:.3g} <= "
            f"{self.level:.3g}, confidence {self.confidence:g} over "
            f"{len(self.scores) - 1} candidates)."
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (:meth:`from_dict` reads it back).

        Returns
        -------
        dict
            ``format``, ``version`` and the choice's fields.
        """
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "step": self.step,
            "base": self.base,
            "confidence": self.confidence,
            "level": self.level,
            "n_pairs": self.n_pairs,
            "scores": {k: dict(v) for k, v in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> StepChoice:
        """The choice saved by :meth:`to_dict`.

        Parameters
        ----------
        data : mapping
            The output of :meth:`to_dict` (e.g. read back from JSON).

        Returns
        -------
        StepChoice
            The saved choice.
        """
        check_saved_header(
            data, fmt=_FORMAT, version=_VERSION, what="StepChoice", caller="StepChoice.from_dict"
        )
        scores = data["scores"]
        if data["step"] not in scores or data["base"] not in scores:
            raise ValueError(
                "StepChoice.from_dict: the chosen step and the base must be among the "
                f"scored candidates {sorted(scores)}, got step={data['step']!r}, "
                f"base={data['base']!r}."
            )
        return cls(
            step=str(data["step"]),
            base=str(data["base"]),
            confidence=float(data["confidence"]),
            level=float(data["level"]),
            n_pairs=int(data["n_pairs"]),
            scores={str(k): dict(v) for k, v in scores.items()},
        )


def _pair_rewards(name: str, values, n_rows: int | None, caller: str) -> np.ndarray:
    r = np.asarray(values, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(
            f"{caller}: candidates[{name!r}] must be a 1-d array of rewards, got shape {r.shape}."
        )
    if n_rows is not None and r.shape[0] != n_rows:
        raise ValueError(
            f"{caller}: candidates[{name!r}] has {r.shape[0]} rewards, expected {n_rows} "
            "(one per row, like the base's)."
        )
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{caller}: candidates[{name!r}] has non-finite rewards.")
    return r


def choose_step(
    candidates: Mapping[str, Sequence[float]],
    *,
    pair_id=None,
    chosen=None,
    base: str = "base",
    confidence: float = 0.8,
) -> StepChoice:
    """Choose the reward to serve among candidates scored on the same labelled pairs.

    Parameters
    ----------
    candidates : dict of str to array-like of shape (n_rows,)
        Each candidate's reward of every row, in the same row order; must include
        ``base``. Without ``pair_id`` and ``chosen`` the rows are laid out chosen,
        rejected, chosen, rejected, ...
    pair_id, chosen : array-like of shape (n_rows,), optional
        Pair metadata (as in :meth:`EnergyRewardCalibrator.fit`), both or neither.
    base : str, default="base"
        The reference candidate, chosen unless another passes its test.
    confidence : float in (0, 1), default=0.8
        With probability at least ``confidence``, the step chosen is the base or ranks
        better than it (see the module docstring for the test and the correction).

    Returns
    -------
    StepChoice
        The chosen step, with each candidate's accuracy and test.
    """
    caller = "choose_step"
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError(
            f"{caller}: candidates must be a non-empty dict of name to rewards, got "
            f"{type(candidates).__name__}."
        )
    if base not in candidates:
        raise ValueError(
            f"{caller}: base={base!r} must be one of the candidates, got {sorted(candidates)}."
        )
    confidence = check_confidence(confidence, caller)
    if (pair_id is None) != (chosen is None):
        raise ValueError(f"{caller}: pass both pair_id and chosen, or neither.")
    base_r = _pair_rewards(base, candidates[base], None, caller)
    n_rows = base_r.shape[0]
    if pair_id is None:
        if n_rows == 0 or n_rows % 2:
            raise ValueError(
                f"{caller}: without pair_id the rows must be chosen, rejected pairs (an even, "
                f"non-zero count), got {n_rows} rows."
            )
        rows = np.arange(n_rows)
    else:
        idx_c, idx_r = check_pairs(pair_id, chosen, n_rows, caller=caller)
        rows = np.column_stack([idx_c, idx_r]).reshape(-1)
    rewards = {
        str(k): _pair_rewards(str(k), v, n_rows, caller)[rows] for k, v in candidates.items()
    }
    alpha = 1.0 - float(confidence)
    others = [k for k in rewards if k != base]
    level = alpha / max(1, len(others))
    base_ok = pair_credit(rewards[base])
    n_pairs = int(base_ok.size)
    scores: dict[str, dict] = {base: {"accuracy": float(base_ok.mean())}}
    for name in others:
        ok = pair_credit(rewards[name])
        diff = ok - base_ok
        p = sign_flip_p_value(diff)
        scores[name] = {
            "accuracy": float(ok.mean()),
            "p_value": p,
            "n_better": int(np.count_nonzero(diff > 0)),
            "n_worse": int(np.count_nonzero(diff < 0)),
            "min_detectable_gain": min_detectable_gain(n_pairs, int(np.count_nonzero(diff)), level),
            "passes": bool(p <= level),
        }
    passing = [k for k in others if scores[k]["passes"]]
    step = base
    if passing:
        order = {k: i for i, k in enumerate(others)}
        step = min(passing, key=lambda k: (-scores[k]["accuracy"], scores[k]["p_value"], order[k]))
    return StepChoice(
        step=step,
        base=base,
        confidence=float(confidence),
        level=float(level),
        n_pairs=n_pairs,
        scores=scores,
    )
