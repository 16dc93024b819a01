"""evaluate() and the method outputs of the experiments, on hand-built pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skebrm import LaplaceBradleyTerryHead
from skebrm.experiments.data import EmbeddedPairs
from skebrm.experiments.evaluation import (
    MethodOutput,
    base_margin_output,
    baseline_output,
    debiased_output,
    evaluate,
    length_statistics,
    ood_flag_aurocs,
    ood_flag_scores,
    pessimistic_output,
    reward_output,
    risk_coverage_curve,
    selection_confidences,
    selection_report,
    spearman,
)
from skebrm.experiments.synthetic import make_synthetic_pairs

FAST = {"n_bootstrap": 20, "random_state": 0}


def _data(n_pairs=60, seed=0, **kw):
    rng = np.random.default_rng(seed)
    obj = np.array([None] * n_pairs, dtype=object)
    return EmbeddedPairs(
        embeddings=rng.normal(size=(2 * n_pairs, 3)),
        rewards=None,
        prompt=np.array([f"p{i}" for i in range(n_pairs)], dtype=object),
        subset=kw.pop("subset", obj),
        section=obj,
        **kw,
    )


def _loop_auroc(score, positive):
    pos = [s for s, p in zip(score, positive) if p]
    neg = [s for s, p in zip(score, positive) if not p]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (
        len(pos) * len(neg)
    )


def test_pair_uncertainty_is_used_instead_of_hypot():
    rng = np.random.default_rng(1)
    data = _data()
    reward = rng.normal(size=120)
    rows = rng.random(120)
    pair = rng.random(60)
    wrong = reward[0::2] <= reward[1::2]
    out = evaluate(
        data,
        {
            "base": MethodOutput(reward),
            "rows": MethodOutput(reward, uncertainty=rows),
            "pair": MethodOutput(reward, uncertainty=rows, pair_uncertainty=pair),
        },
        **FAST,
    )
    hypot = [math.hypot(rows[2 * i], rows[2 * i + 1]) for i in range(60)]
    assert out["rows"]["misorder_auroc_base"] == pytest.approx(_loop_auroc(hypot, wrong))
    assert out["pair"]["misorder_auroc_base"] == pytest.approx(_loop_auroc(pair, wrong))
    assert "misorder_auroc_base" not in out["base"]


def test_base_margin_is_the_base_reward_scored_by_its_margin():
    rng = np.random.default_rng(2)
    reward = rng.normal(size=120)
    base = MethodOutput(reward, preference_probability=rng.random(60))
    margin = base_margin_output(base)
    np.testing.assert_array_equal(margin.reward, reward)
    np.testing.assert_array_equal(margin.preference_probability, base.preference_probability)
    np.testing.assert_allclose(
        margin.pair_scores(), [-abs(reward[2 * i] - reward[2 * i + 1]) for i in range(60)]
    )


def test_best_of_k_and_disagreement_through_evaluate():
    data = make_synthetic_pairs(
        n_pairs=240, pairs_per_prompt=3, rejected_per_chosen=3, n_annotators=3, random_state=3
    )
    group = data.chosen_group
    sizes = np.bincount(group) + 1
    assert sizes.max() == 4 and data.disagreement is not None
    reward = data.rewards.astype(np.float64)
    base = MethodOutput(reward)
    out = evaluate(data, {"base": base, "base_margin": base_margin_output(base)}, **FAST)
    # best-of-k over the groups with k > 2, by a loop
    credit = []
    for g in np.flatnonzero(sizes > 2):
        members = np.flatnonzero(group == g)
        rc, rr = reward[2 * members], reward[2 * members + 1]
        credit.append(0.0 if np.any(rr > rc) else 1.0 / (1 + np.sum(rr == rc)))
    bok = out["base"]["best_of_k"]
    assert bok["accuracy"] == pytest.approx(np.mean(credit))
    assert bok["n_groups"] == len(credit) and bok["mean_k"] == pytest.approx(
        sizes[sizes > 2].mean()
    )
    # disagreement AUROC of the base margin, by a loop; annotators disagree where the
    # true margin is small, so a margin that tracks it predicts disagreement
    margin = [-abs(reward[2 * i] - reward[2 * i + 1]) for i in range(data.n_pairs)]
    expected = _loop_auroc(margin, data.disagreement == 1)
    assert out["base_margin"]["disagreement_auroc"] == pytest.approx(expected)
    assert expected > 0.6
    assert "disagreement_auroc" not in out["base"]  # no uncertainty, no AUROC


def test_no_best_of_k_without_groups_or_votes():
    out = evaluate(_data(), {"base": MethodOutput(np.arange(120.0))}, **FAST)
    assert "best_of_k" not in out["base"]
    keys = np.arange(120)  # every response distinct: groups of one pair
    out = evaluate(_data(response_key=keys), {"base": MethodOutput(np.arange(120.0))}, **FAST)
    assert "best_of_k" not in out["base"]


def test_rewardbench_subsets_are_weighted_in_evaluate():
    subset = np.array(["math-prm"] * 10 + ["hep-go"] * 30, dtype=object)
    reward = np.zeros(80)
    reward[0:20:2] = 1.0  # the 10 math pairs right, the 30 code pairs tied at 0.5
    out = evaluate(_data(40, subset=subset), {"base": MethodOutput(reward)}, **FAST)
    rb = out["base"]["rewardbench"]
    assert rb["weighting"] == "rewardbench"
    assert out["base"]["accuracy"] == pytest.approx((984 * 1.0 + 164 * 0.5) / (984 + 164))


def test_laplacebaseline_output():
    data = make_synthetic_pairs(n_pairs=100, random_state=4)
    head = LaplaceBradleyTerryHead().fit(data.embeddings, pair_id=data.pair_id, chosen=data.chosen)
    o = baseline_output(head, data.embeddings)
    X = data.embeddings.astype(np.float64)
    np.testing.assert_allclose(o.reward, head.predict(X))
    np.testing.assert_allclose(o.uncertainty, head.score_uncertainty(X))
    np.testing.assert_allclose(o.pair_scores(), head.pair_uncertainty(X[0::2], X[1::2]))
    np.testing.assert_allclose(
        o.preference_probability, head.preference_probability(X[0::2], X[1::2])
    )


# ----------------------------------------------------------------- post-hoc tools


def _lengths(n_rows, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(50, 50 + 7 * n_rows, 7)).astype(float)  # all distinct


def test_debiased_output_transductive_is_reward_minus_lowess():
    from statsmodels.nonparametric.smoothers_lowess import lowess

    from skebrm import LengthDebiaser

    rng = np.random.default_rng(0)
    length = _lengths(80)
    reward = rng.normal(size=80) + 0.01 * length
    o = debiased_output(reward, length, LengthDebiaser(frac=0.5, alpha=0.7))
    curve = lowess(reward, length, frac=0.5, it=3, delta=0.0, return_sorted=False)
    np.testing.assert_allclose(o.reward, reward - 0.7 * curve, rtol=1e-12, atol=1e-12)
    d = o.reward[0::2] - o.reward[1::2]
    np.testing.assert_allclose(o.preference_probability, 1.0 / (1.0 + np.exp(-d)))


def test_debiased_output_inductive_applies_the_reference_curve():
    from skebrm import LengthDebiaser

    rng = np.random.default_rng(1)
    ref_len, len_ = _lengths(60, 1), rng.uniform(0, 600, size=40)
    fitted = LengthDebiaser().fit(ref_len, rng.normal(size=60) + 0.01 * ref_len)
    reward = rng.normal(size=40)
    o = debiased_output(reward, len_, fitted, mode="inductive")
    # a plain reference: interpolate the knots, constant beyond the ends
    expected = reward - np.interp(len_, fitted.knots_x_, fitted.knots_y_)
    np.testing.assert_allclose(o.reward, expected)
    with pytest.raises(ValueError, match="mode must be 'transductive' or 'inductive'"):
        debiased_output(reward, len_, fitted, mode="both")


def test_spearman_and_length_statistics_against_loops():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    length = rng.integers(0, 30, size=50).astype(float)  # with ties
    length[3] = length[2]  # pair 1: same length
    reward = rng.normal(size=50)
    assert spearman(reward, length) == pytest.approx(spearmanr(reward, length).statistic)
    assert math.isnan(spearman(np.ones(5), np.arange(5)))
    stats = length_statistics(length, reward)
    longer = [c > r for c, r in zip(length[0::2], length[1::2]) if c != r]
    assert stats["chosen_longer"] == pytest.approx(sum(longer) / len(longer))
    assert stats["n_pairs_same_length"] == sum(length[0::2] == length[1::2]) >= 1
    assert stats["reward_spearman"] == spearman(reward, length)


def test_evaluate_reports_each_methods_length_correlation():
    from scipy.stats import spearmanr

    data = _data(40, length=_lengths(80))
    rng = np.random.default_rng(3)
    r = rng.normal(size=80)
    out = evaluate(data, {"base": reward_output(r)}, **FAST)
    assert out["base"]["length_spearman"] == pytest.approx(spearmanr(r, data.length).statistic)
    assert "length_spearman" not in evaluate(_data(40), {"base": reward_output(r)}, **FAST)["base"]


def test_pessimistic_output_is_the_entropic_risk_by_quadrature():
    from skebrm import GridDistribution

    rng = np.random.default_rng(4)
    masses = rng.dirichlet(np.ones(12), size=6)
    dist = GridDistribution(np.log(masses), low=-3.0, width=0.5)
    beta = 0.8
    o = pessimistic_output(dist, beta)
    # plain reference: uniform density inside each cell, midpoint rule on a fine grid
    sub = (np.arange(2000) + 0.5) / 2000
    expected = []
    for p in masses:
        r = -3.0 + 0.5 * (np.arange(12)[:, None] + sub[None, :])
        expected.append(-beta * np.log((p[:, None] * np.exp(-r / beta)).mean(axis=1).sum()))
    np.testing.assert_allclose(o.reward, expected, rtol=1e-6)
    assert o.preference_probability.shape == (3,)


def _outputs(rng, n_pairs=30):
    r = rng.normal(size=2 * n_pairs)
    p_lap = rng.uniform(size=n_pairs)
    p_ebrm = rng.uniform(size=n_pairs)
    std = rng.uniform(0.1, 2.0, size=2 * n_pairs)
    return {
        "base": reward_output(r),
        "laplace_bt": MethodOutput(r, rng.uniform(0.1, 1.0, size=2 * n_pairs), p_lap),
        "ebrm": MethodOutput(r + 0.1, std, p_ebrm, -np.abs(p_ebrm - 0.5)),
    }


def test_selection_confidences_follow_their_definitions():
    rng = np.random.default_rng(5)
    outs = _outputs(rng)
    r = outs["base"].reward
    conf = selection_confidences(outs)
    assert set(conf) == {"margin", "laplace_probability", "ebrm_probability", "ebrm_inverse_std"}
    for i in range(30):
        rc, rr = r[2 * i], r[2 * i + 1]
        assert conf["margin"][0][i] == abs(rc - rr) and conf["margin"][1][i] == (rc > rr)
        p = outs["ebrm"].preference_probability[i]
        assert conf["ebrm_probability"][0][i] == max(p, 1 - p)
        assert conf["ebrm_probability"][1][i] == (p > 0.5)
        s = outs["ebrm"].uncertainty
        assert conf["ebrm_inverse_std"][0][i] == pytest.approx(
            1 / math.hypot(s[2 * i], s[2 * i + 1])
        )
        assert conf["ebrm_inverse_std"][1][i] == (rc > rr)
    only_base = selection_confidences({"base": outs["base"]})
    assert set(only_base) == {"margin"}


def test_risk_coverage_curve_against_a_loop():
    rng = np.random.default_rng(6)
    c, y = rng.normal(size=37), rng.random(37) > 0.3
    curve = risk_coverage_curve(c, y, n_points=11)
    order = sorted(range(37), key=lambda i: -c[i])
    for cov, risk in zip(curve["coverage"], curve["risk"]):
        k = max(math.ceil(cov * 37 - 1e-9), 1)
        assert risk == pytest.approx(sum(not y[i] for i in order[:k]) / k)
    assert curve["coverage"][-1] == 1.0 and curve["risk"][-1] == pytest.approx(np.mean(~y))


def test_selection_report_matches_the_selector_and_records_accepting_nothing():
    from skebrm import PairSelector

    rng = np.random.default_rng(7)
    margin = rng.exponential(size=3000)
    correct = rng.random(3000) > 0.5 * np.exp(-2 * margin)
    cal, test = (margin[:1500], correct[:1500]), (margin[1500:], correct[1500:])
    hopeless = (rng.random(200), np.zeros(200, bool))  # every ordering wrong
    report = selection_report(
        {"margin": cal, "bad": hopeless},
        {"margin": test, "bad": hopeless, "uncalibrated": test},
        alphas=(0.1, 0.2),
    )
    assert set(report) == {"margin", "bad"}  # a score needs calibration pairs
    for method in ("ltt", "conformal"):
        for alpha in (0.1, 0.2):
            sel = PairSelector(alpha=alpha, method=method).fit(*cal)
            risk, coverage = sel.risk_coverage(*test)
            entry = report["margin"][method][alpha]
            assert (entry["risk"], entry["coverage"]) == (risk, coverage)
            assert entry["accepted_none"] is False
            assert report["bad"][method][alpha]["accepted_none"] is True
            assert report["bad"][method][alpha]["coverage"] == 0.0
    assert report["margin"]["ltt"][0.1]["threshold"] == PairSelector(alpha=0.1).fit(*cal).threshold_
    assert report["margin"]["risk_all"] == pytest.approx(np.mean(~test[1]))


def test_ood_flags_and_their_aurocs():
    from skebrm import MahalanobisScorer

    rng = np.random.default_rng(8)
    outs_in, outs_out = _outputs(rng), _outputs(rng)
    X_in, X_out = rng.normal(size=(60, 4)), rng.normal(loc=1.5, size=(60, 4))
    scorer = MahalanobisScorer().fit(rng.normal(size=(200, 4)))
    f_in = ood_flag_scores(outs_in, X_in, scorer)
    assert set(f_in) == {"mahalanobis", "ebrm_std", "laplace_std", "negative_margin"}
    r = outs_in["base"].reward
    np.testing.assert_array_equal(f_in["negative_margin"], np.repeat(-np.abs(r[0::2] - r[1::2]), 2))
    np.testing.assert_array_equal(f_in["ebrm_std"], outs_in["ebrm"].uncertainty)
    np.testing.assert_array_equal(f_in["mahalanobis"], scorer.score_samples(X_in))
    f_out = ood_flag_scores(outs_out, X_out, scorer)
    aurocs = ood_flag_aurocs(f_in, f_out)
    for name in f_in:
        assert aurocs[name] == pytest.approx(
            _loop_auroc(np.r_[f_in[name], f_out[name]], [False] * 60 + [True] * 60)
        )
    assert aurocs["mahalanobis"] > 0.8
    assert set(ood_flag_aurocs(ood_flag_scores({"base": outs_in["base"]}, X_in), f_out)) == {
        "negative_margin"
    }


def _credit_rows(correct):
    r = np.zeros(2 * len(correct))
    r[0::2] = np.where(correct, 1.0, -1.0)
    return r


def test_step_choice_report_decides_on_one_half_and_scores_the_other():
    from skebrm.experiments.evaluation import step_choice_report

    rng = np.random.default_rng(3)
    n = 400
    base_ok = rng.random(n) < 0.6
    helps = base_ok | (rng.random(n) < 0.5)  # fixes about half the base's errors
    hurts = base_ok & (rng.random(n) < 0.7)
    outputs = {
        "base": reward_output(_credit_rows(base_ok)),
        "helps": reward_output(_credit_rows(helps)),
        "hurts": reward_output(_credit_rows(hurts)),
    }
    perm = rng.permutation(n)
    halves = (perm[: n // 2], perm[n // 2 :])
    report = step_choice_report(
        outputs, halves, candidates=["base", "helps", "hurts", "absent"], confidence=0.9
    )
    assert report["candidates"] == ["base", "helps", "hurts"]
    for k, fold in enumerate(report["folds"]):
        assert fold["step"] == "helps" and not fold["significantly_worse"]
        held = halves[1 - k]
        # held-out accuracy by hand
        assert fold["held_out_accuracy"]["helps"] == pytest.approx(helps[held].mean())
        assert fold["held_out_accuracy"]["base"] == pytest.approx(base_ok[held].mean())
        assert fold["chosen_vs_base"]["difference"] == pytest.approx(
            helps[held].mean() - base_ok[held].mean()
        )
    assert report["best_fixed"] == "helps"
    assert report["chosen_minus_best_fixed"] == pytest.approx(0.0)
    assert report["chosen_minus_base"] == pytest.approx(helps.mean() - base_ok.mean())
