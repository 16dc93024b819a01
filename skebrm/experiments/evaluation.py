"""Scoring methods on pairs: what each method produces (:class:`MethodOutput`), how the
base RM, the baselines and EBRM produce it, and :func:`evaluate` (see :mod:`skebrm.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skebrm import metrics
from skebrm.experiments.data import EmbeddedPairs

__all__ = [
    "MethodOutput",
    "base_margin_output",
    "baseline_output",
    "ebrm_outputs",
    "evaluate",
    "reward_output",
]


@dataclass
class MethodOutput:
    """What a method produces on a set of pairs (rows chosen first).

    reward, uncertainty : ndarray of shape (2 * n_pairs,); uncertainty may be None.
    preference_probability : ndarray of shape (n_pairs,) or None
        ``P(chosen ≻ rejected)``.
    pair_uncertainty : ndarray of shape (n_pairs,) or None
        The uncertainty of each pair, where the method has one of its own (the base
        margin ``−|r_c − r_r|``, a posterior spread of the margin). When given it is used
        instead of ``hypot(u_c, u_r)`` of the row uncertainties.
    """

    reward: np.ndarray
    uncertainty: np.ndarray | None = None
    preference_probability: np.ndarray | None = None
    pair_uncertainty: np.ndarray | None = None

    def pair_scores(self) -> np.ndarray | None:
        """The pair uncertainty: ``pair_uncertainty``, else ``hypot(u_c, u_r)``, else None."""
        if self.pair_uncertainty is not None:
            return np.asarray(self.pair_uncertainty, dtype=np.float64)
        if self.uncertainty is not None:
            return np.hypot(self.uncertainty[0::2], self.uncertainty[1::2])
        return None


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def reward_output(r: np.ndarray) -> MethodOutput:
    """A reward model's output: its rewards, and ``P(chosen ≻ rejected)`` by Bradley–Terry."""
    r = np.asarray(r, dtype=np.float64)
    return MethodOutput(r, preference_probability=_sigmoid(r[0::2] - r[1::2]))


def base_margin_output(base: MethodOutput) -> MethodOutput:
    """The base RM with its own margin as pair uncertainty: what uncertainty must beat."""
    r = base.reward
    return MethodOutput(
        r,
        preference_probability=base.preference_probability,
        pair_uncertainty=metrics.margin_uncertainty(r[0::2], r[1::2]),
    )


def baseline_output(est, X: np.ndarray) -> MethodOutput:
    """A fitted baseline's rewards, and whatever uncertainty and probability it offers."""
    Xc, Xr = X[0::2], X[1::2]
    return MethodOutput(
        est.predict(X),
        uncertainty=est.score_uncertainty(X) if hasattr(est, "score_uncertainty") else None,
        preference_probability=(
            est.preference_probability(Xc, Xr) if hasattr(est, "preference_probability") else None
        ),
        pair_uncertainty=(
            est.pair_uncertainty(Xc, Xr) if hasattr(est, "pair_uncertainty") else None
        ),
    )


def ebrm_outputs(calibrator, data: EmbeddedPairs, base: np.ndarray, prefix: str) -> dict:
    """EBRM's three readings of ``p(r | e)``: hybrid mode, global mode and mean.

    ``P(chosen ≻ rejected)`` comes from the calibrator's own distributions
    (:meth:`~skebrm.GridDistribution.preference_probability`, the number
    ``calibrator.preference_probability`` gives), from one grid pass; the pair
    uncertainty is how close that probability is to a coin flip, ``−|P − ½|`` (it uses
    both the distance of the two distributions and their spreads); the rows' standard
    deviations are kept too (``misorder_auroc_spread_*`` scores ``hypot(std_c, std_r)``).
    """
    X = data.embeddings
    dist = calibrator.predict_distribution(X)
    u = dist.std()
    prob = dist[0::2].preference_probability(dist[1::2])
    pair_u = -np.abs(prob - 0.5)
    return {
        prefix: MethodOutput(calibrator.predict(X, base_reward=base), u, prob, pair_u),
        f"{prefix}_global": MethodOutput(dist.mode, u, prob, pair_u),
        f"{prefix}_mean": MethodOutput(dist.mean(), u, prob, pair_u),
    }


def evaluate(
    data: EmbeddedPairs,
    outputs: dict[str, MethodOutput],
    *,
    reference: str = "base",
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    abstention_fractions=(0.1, 0.2, 0.3),
    n_bins: int = 10,
    random_state: int | None = 0,
) -> dict:
    """Score every method on ``data`` (see :mod:`skebrm.metrics`).

    Per method: RewardBench-style accuracies (RewardBench's own subset weights where the
    subsets are RewardBench's), the paired-bootstrap difference to ``reference``; where
    the data has best-of-k groups (pairs sharing a prompt and a chosen response, some
    with k > 2 responses) the best-of-k accuracy over those groups; and where the
    method has a pair uncertainty (:meth:`MethodOutput.pair_scores`) its misorder AUROC
    (for the reference's errors and for the method's own), accuracy after abstention (of
    the method, and of the reference abstaining on this method's uncertainty) and, where
    the data has annotator votes, its AUROC for annotator disagreement. Where the method
    has ``P(chosen ≻ rejected)``, its ECE and reliability curve.
    """
    ref = outputs[reference].reward
    ref_c, ref_r = ref[0::2], ref[1::2]
    ref_correct = metrics.pairwise_correct(ref_c, ref_r)
    fractions = [0.0, *abstention_fractions]
    group = data.chosen_group
    if group is not None and np.bincount(group).max() < 2:
        group = None  # every group is a single pair: best-of-k is pairwise accuracy
    out: dict[str, dict] = {}
    for name, o in outputs.items():
        rc, rr = o.reward[0::2], o.reward[1::2]
        correct = metrics.pairwise_correct(rc, rr)
        res: dict = {"rewardbench": metrics.rewardbench_scores(rc, rr, data.subset, data.section)}
        res["accuracy"] = res["rewardbench"]["overall"]
        if group is not None:
            credit, k = metrics.best_of_k_correct(rc, rr, group)
            res["best_of_k"] = {
                "accuracy": float(credit[k > 2].mean()),
                "n_groups": int((k > 2).sum()),
                "mean_k": float(k[k > 2].mean()),
                "chance": float((1.0 / k[k > 2]).mean()),
            }
        if name != reference:
            res["vs_" + reference] = metrics.paired_bootstrap(
                correct,
                ref_correct,
                n_resamples=n_bootstrap,
                confidence=confidence,
                random_state=random_state,
            )._asdict()
        pair_u = o.pair_scores()
        if pair_u is not None:
            res["misorder_auroc_" + reference] = metrics.misorder_auroc(pair_u, ref_c, ref_r)
            res["misorder_auroc_self"] = metrics.misorder_auroc(pair_u, rc, rr)
            res["abstention"] = metrics.abstention_accuracy(pair_u, correct, fractions)
            res["abstention_" + reference] = metrics.abstention_accuracy(
                pair_u, ref_correct, fractions
            )
            if data.disagreement is not None:
                res["disagreement_auroc"] = metrics.disagreement_auroc(pair_u, data.disagreement)
        if o.pair_uncertainty is not None and o.uncertainty is not None:
            spread = np.hypot(o.uncertainty[0::2], o.uncertainty[1::2])
            res["misorder_auroc_spread_" + reference] = metrics.misorder_auroc(spread, ref_c, ref_r)
        if o.preference_probability is not None:
            p, y = metrics.preference_calibration_data(o.preference_probability)
            res["ece"] = metrics.expected_calibration_error(p, y, n_bins=n_bins)
            curve = metrics.reliability_curve(p, y, n_bins=n_bins)
            res["reliability"] = {k: np.asarray(v).tolist() for k, v in curve._asdict().items()}
        out[name] = res
    return out
