"""Scoring methods on pairs: what each method produces (:class:`MethodOutput`), how the
base RM, the baselines and EBRM produce it, and :func:`evaluate` (see :mod:`skebrm.metrics`).

The post-hoc tools scored next to EBRM live here too: length debiasing
(:func:`debiased_output`, :func:`length_statistics`), the pessimistic reward on EBRM's grid
(:func:`pessimistic_output`), the pair-selection report (:func:`selection_confidences`,
:func:`selection_report`) and the out-of-distribution flags (:func:`ood_flag_scores`,
:func:`ood_flag_aurocs`).
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
    "debiased_output",
    "ebrm_outputs",
    "evaluate",
    "length_statistics",
    "ood_flag_aurocs",
    "ood_flag_scores",
    "pessimistic_output",
    "reward_output",
    "risk_coverage_curve",
    "selection_confidences",
    "selection_report",
    "spearman",
    "step_choice_report",
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


def ebrm_outputs(
    calibrator, data: EmbeddedPairs, base: np.ndarray, prefix: str, *, dist=None
) -> dict:
    """EBRM's three readings of ``p(r | e)``: hybrid mode, global mode and mean.

    ``P(chosen ≻ rejected)`` comes from the calibrator's own distributions
    (:meth:`~skebrm.GridDistribution.preference_probability`, the number
    ``calibrator.preference_probability`` gives), from one grid pass; the pair
    uncertainty is how close that probability is to a coin flip, ``−|P − ½|`` (it uses
    both the distance of the two distributions and their spreads); the rows' standard
    deviations are kept too (``misorder_auroc_spread_*`` scores ``hypot(std_c, std_r)``).
    ``dist``: the calibrator's distributions of ``data``, where the caller has them.
    """
    X = data.embeddings
    if dist is None:
        dist = calibrator.predict_distribution(X)
    u = dist.std()
    prob = dist[0::2].preference_probability(dist[1::2])
    pair_u = -np.abs(prob - 0.5)
    return {
        prefix: MethodOutput(calibrator.predict(X, base_reward=base), u, prob, pair_u),
        f"{prefix}_global": MethodOutput(dist.mode, u, prob, pair_u),
        f"{prefix}_mean": MethodOutput(dist.mean(), u, prob, pair_u),
    }


def pessimistic_output(dist, beta: float) -> MethodOutput:
    """The entropic risk ``−β log E[exp(−r / β)]`` of each row's grid distribution, as a
    reward (:meth:`~skebrm.GridDistribution.entropic_risk`)."""
    return reward_output(dist.entropic_risk(float(beta)))


def debiased_output(reward, feature, debiaser, *, mode: str = "transductive") -> MethodOutput:
    """Rewards with their length bias removed by a :class:`~skebrm.LengthDebiaser`.

    Parameters
    ----------
    reward, feature : ndarray of shape (2 * n_pairs,)
        The rewards and each row's bias feature (length, markdown count).
    debiaser : LengthDebiaser
        ``mode="transductive"``: its parameters (a clone is fitted on ``(feature, reward)``,
        the very set being scored, as Huang et al. do); ``mode="inductive"``: a debiaser
        already fitted on a reference set, applied here.
    """
    from sklearn.base import clone

    if mode == "transductive":
        out = clone(debiaser).fit_transform(feature, reward)
    elif mode == "inductive":
        out = debiaser.transform(feature, reward)
    else:
        raise ValueError(
            f"debiased_output: mode must be 'transductive' or 'inductive', got {mode!r}."
        )
    return reward_output(out)


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN where either is constant."""
    from scipy.stats import rankdata

    a, b = rankdata(np.asarray(x, float)), rankdata(np.asarray(y, float))
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def length_statistics(length: np.ndarray, reward: np.ndarray) -> dict:
    """How much room a set leaves for length debiasing.

    Returns
    -------
    dict
        ``chosen_longer``: the share of pairs whose chosen response is the longer one,
        among the pairs whose two lengths differ (``n_pairs_same_length`` are left out);
        ``reward_spearman``: Spearman's correlation of ``reward`` with the length over
        the rows.
    """
    length = np.asarray(length, float)
    lc, lr = length[0::2], length[1::2]
    differ = lc != lr
    return {
        "chosen_longer": float(np.mean(lc[differ] > lr[differ])) if differ.any() else None,
        "n_pairs_same_length": int(np.sum(~differ)),
        "reward_spearman": spearman(reward, length),
    }


def selection_confidences(outputs: dict[str, MethodOutput]) -> dict[str, tuple]:
    """The confidence of each pair's ordering and whether that ordering is right, per score.

    ``margin``: ``|r_c − r_r|`` of the base reward (a tie counts as misordered);
    ``laplace_probability`` (where ``laplace_bt`` is scored): the Laplace head's
    ``max(P, 1 − P)``, the ordering ``P > ½``; ``ebrm_probability``: the same for EBRM's
    grid ``P(c ≻ r)``; ``ebrm_inverse_std``: ``1 / hypot(std_c, std_r)`` of EBRM, for the
    base reward's ordering (the reward a user keeps, trusted where EBRM is sure).

    Returns
    -------
    dict of str to (confidence, correct)
        Arrays of shape (n_pairs,).
    """
    r = outputs["base"].reward
    base_correct = r[0::2] > r[1::2]
    out = {"margin": (np.abs(r[0::2] - r[1::2]), base_correct)}

    def from_probability(p):
        p = np.asarray(p, float)
        return np.maximum(p, 1.0 - p), p > 0.5

    laplace = outputs.get("laplace_bt")
    if laplace is not None and laplace.preference_probability is not None:
        out["laplace_probability"] = from_probability(laplace.preference_probability)
    ebrm = outputs.get("ebrm")
    if ebrm is not None and ebrm.preference_probability is not None:
        out["ebrm_probability"] = from_probability(ebrm.preference_probability)
    if ebrm is not None and ebrm.uncertainty is not None:
        spread = np.hypot(ebrm.uncertainty[0::2], ebrm.uncertainty[1::2])
        out["ebrm_inverse_std"] = (1.0 / np.maximum(spread, np.finfo(float).tiny), base_correct)
    return out


def risk_coverage_curve(confidence, correct, n_points: int = 21) -> dict:
    """The misorder rate among the most confident pairs at evenly spaced coverages.

    The ``k = ceil(coverage · n)`` most confident pairs are kept (ties broken by order);
    coverage 0 is left out.
    """
    c = np.asarray(confidence, float)
    wrong = ~np.asarray(correct, bool)
    order = np.argsort(-c, kind="stable")
    cum = np.cumsum(wrong[order])
    coverage = np.linspace(0.0, 1.0, n_points)[1:]
    k = np.maximum(np.ceil(coverage * c.size - 1e-9).astype(int), 1)
    return {"coverage": coverage.tolist(), "risk": (cum[k - 1] / k).tolist()}


def selection_report(
    calibration: dict[str, tuple],
    scored: dict[str, tuple],
    *,
    alphas=(0.05, 0.1, 0.2),
    methods=("ltt", "conformal"),
    delta: float = 0.1,
) -> dict:
    """Realised risk and coverage of :class:`~skebrm.PairSelector` per score, method, alpha.

    Each score's selector is calibrated on ``calibration[score]`` (held-out labelled
    pairs) and applied to ``scored[score]``. Where no threshold is valid the selector
    accepts nothing (``accepted_none``: true; its :class:`~skebrm.selection.SelectionWarning`
    is recorded, not raised).

    Returns
    -------
    dict
        ``score -> {"risk_all": misorder rate of every pair, "curve":
        risk_coverage_curve, method -> {alpha -> {"risk", "coverage", "accepted_none",
        "threshold" ("ltt")}}}``.
    """
    import warnings

    from skebrm.selection import PairSelector, SelectionWarning

    out: dict = {}
    for name, (c_test, y_test) in scored.items():
        if name not in calibration:
            continue
        c_cal, y_cal = calibration[name]
        block: dict = {
            "risk_all": float(np.mean(~np.asarray(y_test, bool))),
            "curve": risk_coverage_curve(c_test, y_test),
        }
        for method in methods:
            per: dict = {}
            for alpha in alphas:
                sel = PairSelector(alpha=float(alpha), method=method, delta=float(delta))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", SelectionWarning)
                    sel.fit(c_cal, y_cal)
                    risk, coverage = sel.risk_coverage(c_test, y_test)
                entry = {
                    "risk": risk,
                    "coverage": coverage,
                    "accepted_none": any(issubclass(w.category, SelectionWarning) for w in caught),
                }
                for w in caught:  # anything else is not ours to swallow
                    if not issubclass(w.category, SelectionWarning):
                        warnings.warn_explicit(
                            w.message, w.category, w.filename, w.lineno, source=w.source
                        )
                if method == "ltt":
                    entry["threshold"] = float(sel.threshold_)
                per[float(alpha)] = entry
            block[method] = per
        out[name] = block
    return out


def ood_flag_scores(
    outputs: dict[str, MethodOutput], embeddings: np.ndarray, scorer=None
) -> dict[str, np.ndarray]:
    """Per-row out-of-distribution flags (higher = further out), shape (2 * n_pairs,).

    ``mahalanobis``: the fitted :class:`~skebrm.MahalanobisScorer`'s distance (where
    ``scorer`` is given); ``ebrm_std``: EBRM's standard deviation; ``laplace_std``: the
    Laplace head's posterior standard deviation (where ``laplace_bt`` is scored);
    ``negative_margin``: ``−|r_c − r_r|`` of the base reward, given to both rows of the pair.
    """
    out = {}
    if scorer is not None:
        out["mahalanobis"] = scorer.score_samples(embeddings)
    ebrm = outputs.get("ebrm")
    if ebrm is not None and ebrm.uncertainty is not None:
        out["ebrm_std"] = np.asarray(ebrm.uncertainty, float)
    laplace = outputs.get("laplace_bt")
    if laplace is not None and laplace.uncertainty is not None:
        out["laplace_std"] = np.asarray(laplace.uncertainty, float)
    r = outputs["base"].reward
    out["negative_margin"] = np.repeat(-np.abs(r[0::2] - r[1::2]), 2)
    return out


def ood_flag_aurocs(scores_in: dict, scores_out: dict) -> dict[str, float]:
    """:func:`skebrm.ood.ood_auroc` of each flag present in both (in = 0, out = 1)."""
    from skebrm.ood import ood_auroc

    return {k: ood_auroc(scores_in[k], scores_out[k]) for k in scores_in if k in scores_out}


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
        if data.length is not None:
            res["length_spearman"] = spearman(o.reward, data.length)
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


def _pair_rows(pairs: np.ndarray) -> np.ndarray:
    """The rows (chosen, rejected, ...) of the given pair positions."""
    pairs = np.asarray(pairs, dtype=np.int64)
    return np.column_stack([2 * pairs, 2 * pairs + 1]).reshape(-1)


def step_choice_report(
    outputs: dict[str, MethodOutput],
    halves: tuple[np.ndarray, np.ndarray],
    *,
    candidates,
    confidence: float,
    n_bootstrap: int = 2000,
    interval: float = 0.95,
    random_state: int | None = 0,
) -> dict:
    """The choosing guard (:func:`skebrm.steps.choose_step`) decided on one half of a set's
    prompts and scored on the other, both ways round.

    ``halves``: the pair positions of the two halves. For each fold the step is chosen
    among ``candidates`` (those in ``outputs``; ``"base"`` is the reference) on the
    decision half; on the held-out half every candidate's pairwise accuracy (ties ½) is
    reported, and the chosen step's paired-bootstrap difference to the base there
    (``interval`` two-sided). ``significantly_worse``: that interval lies below 0.
    """
    from skebrm._guard import pair_credit
    from skebrm.steps import choose_step

    names = ["base", *[c for c in candidates if c != "base" and c in outputs]]
    folds = []
    for k, (decide_on, held_out) in enumerate([(halves[0], halves[1]), (halves[1], halves[0])]):
        rows_d, rows_h = _pair_rows(decide_on), _pair_rows(held_out)
        choice = choose_step(
            {n: outputs[n].reward[rows_d] for n in names}, confidence=float(confidence)
        )
        held = {n: pair_credit(outputs[n].reward[rows_h]) for n in names}
        vs = metrics.paired_bootstrap(
            held[choice.step],
            held["base"],
            n_resamples=n_bootstrap,
            confidence=interval,
            random_state=None if random_state is None else random_state + k,
        )
        folds.append(
            {
                "step": choice.step,
                "reason": choice.reason,
                "n_decide": int(len(decide_on)),
                "n_held_out": int(len(held_out)),
                "decision": choice.to_dict()["scores"],
                "held_out_accuracy": {n: float(v.mean()) for n, v in held.items()},
                "chosen_vs_base": vs._asdict(),
                "significantly_worse": bool(vs.ci_high < 0),
            }
        )
    fixed = {n: float(np.mean([f["held_out_accuracy"][n] for f in folds])) for n in names}
    chosen = float(np.mean([f["held_out_accuracy"][f["step"]] for f in folds]))
    best_fixed = max(fixed, key=fixed.get)
    return {
        "candidates": names,
        "confidence": float(confidence),
        "folds": folds,
        "chosen_accuracy": chosen,
        "fixed_accuracy": fixed,
        "best_fixed": best_fixed,
        "chosen_minus_best_fixed": chosen - fixed[best_fixed],
        "chosen_minus_base": chosen - fixed["base"],
    }
