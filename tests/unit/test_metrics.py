"""Metrics against plain loop implementations on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from skebrm.metrics import (
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SUBSET_MAPPING,
    abstention_accuracy,
    best_of_k_accuracy,
    best_of_k_correct,
    disagreement_auroc,
    expected_calibration_error,
    margin_uncertainty,
    misorder_auroc,
    paired_bootstrap,
    pairwise_accuracy,
    pairwise_correct,
    plot_abstention,
    plot_reliability_diagram,
    preference_calibration_data,
    quadrature_preference_probability,
    reliability_curve,
    rewardbench_scores,
)


def _loop_correct(rc, rr):
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(rc, rr)]


@pytest.fixture
def rewards():
    rng = np.random.default_rng(0)
    # rounded so that ties occur
    rc = np.round(rng.normal(size=60), 1)
    rr = np.round(rng.normal(size=60) - 0.3, 1)
    return rc, rr


def test_pairwise_accuracy_matches_loop(rewards):
    rc, rr = rewards
    loop = _loop_correct(rc, rr)
    assert np.any(rc == rr), "fixture must contain ties"
    np.testing.assert_allclose(pairwise_correct(rc, rr), loop)
    assert pairwise_accuracy(rc, rr) == pytest.approx(sum(loop) / len(loop))


def test_pairwise_accuracy_errors():
    with pytest.raises(ValueError, match="same length"):
        pairwise_accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="reward_chosen must be 1-D"):
        pairwise_accuracy([[1, 2]], [[1, 2]])
    with pytest.raises(ValueError, match="finite"):
        pairwise_accuracy([np.nan], [1.0])
    with pytest.raises(ValueError, match="empty"):
        pairwise_accuracy([], [])


def test_rewardbench_scores_match_loop(rewards):
    rc, rr = rewards
    rng = np.random.default_rng(1)
    subset = rng.choice(["math", "code", "chat", "refusal"], size=rc.size)
    sec_of = {"math": "Reasoning", "code": "Reasoning", "chat": "Chat", "refusal": "Safety"}
    section = np.array([sec_of[s] for s in subset])
    out = rewardbench_scores(rc, rr, subset, section)

    loop = _loop_correct(rc, rr)
    per_subset = {}
    for s in set(subset):
        vals = [loop[i] for i in range(len(loop)) if subset[i] == s]
        per_subset[s] = (sum(vals) / len(vals), len(vals))
    per_section = {}
    for sec in set(section):
        num = den = 0.0
        for s, (acc, cnt) in per_subset.items():
            if sec_of[s] == sec:
                num += acc * cnt
                den += cnt
        per_section[sec] = num / den
    for s, (acc, cnt) in per_subset.items():
        assert out["subsets"][s]["accuracy"] == pytest.approx(acc)
        assert out["subsets"][s]["count"] == cnt
        assert out["subsets"][s]["section"] == sec_of[s]
    for sec, acc in per_section.items():
        assert out["sections"][sec]["accuracy"] == pytest.approx(acc)
    assert out["overall"] == pytest.approx(sum(per_section.values()) / len(per_section))
    assert out["n_pairs"] == rc.size


def test_rewardbench_without_sections_is_one_implicit_section(rewards):
    rc, rr = rewards
    subset = np.where(np.arange(rc.size) % 3 == 0, "x", "y")
    for section in (None, [None] * rc.size):
        out = rewardbench_scores(rc, rr, subset, section)
        assert list(out["sections"]) == ["all"]
        assert out["overall"] == pytest.approx(pairwise_accuracy(rc, rr))
    out = rewardbench_scores(rc, rr)
    assert list(out["subsets"]) == ["all"]


def test_rewardbench_subset_in_two_sections_is_kept_apart():
    out = rewardbench_scores([1, 0, 1], [0, 1, 0], ["a", "a", "b"], ["S", "T", "T"])
    assert set(out["subsets"]) == {"S/a", "T/a", "b"}
    assert out["sections"]["S"]["accuracy"] == 1.0
    assert out["sections"]["T"]["accuracy"] == 0.5


def test_rewardbench_label_shape_error():
    with pytest.raises(ValueError, match=r"subset must have shape \(2,\)"):
        rewardbench_scores([1, 2], [0, 1], subset=["a"])


def test_rewardbench_constants_are_rewardbenchs():
    # allenai/reward-bench rewardbench/constants.py (05a9005): 23 subsets in 4 sections;
    # math-prm upweighted to the code total (6 HumanEvalPack languages × 164)
    assert len(REWARDBENCH_EXAMPLE_COUNTS) == 23
    mapped = [s for subs in REWARDBENCH_SUBSET_MAPPING.values() for s in subs]
    assert sorted(mapped) == sorted(REWARDBENCH_EXAMPLE_COUNTS)
    assert list(REWARDBENCH_SUBSET_MAPPING) == ["Chat", "Chat Hard", "Safety", "Reasoning"]
    code = [s for s in REWARDBENCH_SUBSET_MAPPING["Reasoning"] if s.startswith("hep-")]
    assert (
        REWARDBENCH_EXAMPLE_COUNTS["math-prm"]
        == 984
        == sum(REWARDBENCH_EXAMPLE_COUNTS[s] for s in code)
    )
    assert REWARDBENCH_EXAMPLE_COUNTS["xstest-should-respond"] == 250
    assert REWARDBENCH_EXAMPLE_COUNTS["xstest-should-refuse"] == 154


def test_rewardbench_weighting_matches_loop():
    rng = np.random.default_rng(12)
    names = ["math-prm", "hep-python", "hep-go", "alpacaeval-easy", "mt-bench-med", "donotanswer"]
    subset = rng.choice(names, size=90)
    rc = np.round(rng.normal(size=90), 1)
    rr = np.round(rng.normal(size=90) - 0.2, 1)
    out = rewardbench_scores(rc, rr, subset)
    assert out["weighting"] == "rewardbench"
    loop = _loop_correct(rc, rr)
    section_of = {s: sec for sec, subs in REWARDBENCH_SUBSET_MAPPING.items() for s in subs}
    acc = {}
    for s in set(subset):
        vals = [loop[i] for i in range(90) if subset[i] == s]
        acc[s] = sum(vals) / len(vals)
    expected = {}
    for sec in {section_of[s] for s in acc}:
        num = sum(acc[s] * REWARDBENCH_EXAMPLE_COUNTS[s] for s in acc if section_of[s] == sec)
        den = sum(REWARDBENCH_EXAMPLE_COUNTS[s] for s in acc if section_of[s] == sec)
        expected[sec] = num / den
    assert set(out["sections"]) == {"Reasoning", "Chat", "Safety"}
    for sec, value in expected.items():
        assert out["sections"][sec]["accuracy"] == pytest.approx(value)
        assert out["sections"][sec]["count"] == sum(section_of[s] == sec for s in subset)
    assert out["overall"] == pytest.approx(sum(expected.values()) / len(expected))
    assert out["subsets"]["math-prm"]["weight"] == 984
    # pooled differs: math-prm then weighs only its own pairs
    pooled = rewardbench_scores(rc, rr, subset, [section_of[s] for s in subset], weighting="pooled")
    assert pooled["weighting"] == "pooled"
    assert pooled["subsets"]["math-prm"]["weight"] == out["subsets"]["math-prm"]["count"]


def test_rewardbench_reasoning_is_half_math_half_code():
    # 10 math pairs all right, 30 code pairs all wrong: pooled 0.25, RewardBench 0.5
    subset = ["math-prm"] * 10 + ["hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python"] * 6
    rc = np.r_[np.ones(10), np.zeros(30)]
    rr = np.r_[np.zeros(10), np.ones(30)]
    out = rewardbench_scores(rc, rr, subset)
    assert out["sections"]["Reasoning"]["accuracy"] == pytest.approx(984 / (984 + 5 * 164))
    assert rewardbench_scores(rc, rr, subset, weighting="pooled")["overall"] == 0.25


def test_rewardbench_weighting_errors():
    with pytest.raises(ValueError, match="weighting must be one of"):
        rewardbench_scores([1], [0], weighting="counts")
    with pytest.raises(ValueError, match=r"needs RewardBench subset names, got 1 other\(s\)"):
        rewardbench_scores([1, 1], [0, 0], ["math-prm", "gsm8k"], weighting="rewardbench")
    with pytest.raises(ValueError, match="'math-prm' lies in RewardBench's section 'Reasoning'"):
        rewardbench_scores([1], [0], ["math-prm"], ["Chat"])
    # RewardBench names under a section label that agrees (or none) are fine
    out = rewardbench_scores([1, 0], [0, 1], ["math-prm", "donotanswer"], ["Reasoning", None])
    assert out["overall"] == 0.5
    # a mix of RewardBench and other names is pooled
    assert rewardbench_scores([1, 1], [0, 0], ["math-prm", "gsm8k"])["weighting"] == "pooled"


def _loop_best_of_k(rc, rr, group):
    credit, sizes = {}, {}
    for g in dict.fromkeys(group):
        members = [i for i in range(len(group)) if group[i] == g]
        if any(rr[i] > rc[i] for i in members):
            credit[g] = 0.0
        else:
            credit[g] = 1.0 / (1 + sum(rr[i] == rc[i] for i in members))
        sizes[g] = len(members) + 1
    return credit, sizes


def test_best_of_k_matches_loop():
    rng = np.random.default_rng(13)
    group = rng.integers(0, 25, size=70)
    rc_group = np.round(rng.normal(size=25), 1)
    rc = rc_group[group]  # one reward per chosen response, as in RewardBench 2
    rr = np.round(rng.normal(size=70) - 0.5, 1)
    rr[:6] = rc[:6]  # ties with the chosen
    credit, k = best_of_k_correct(rc, rr, group)
    loop_credit, loop_k = _loop_best_of_k(rc, rr, group.tolist())
    np.testing.assert_allclose(credit, list(loop_credit.values()))
    np.testing.assert_array_equal(k, list(loop_k.values()))
    assert np.any((credit > 0) & (credit < 1)), "fixture must contain ties"
    big = [g for g in loop_k if loop_k[g] >= 3]
    assert best_of_k_accuracy(rc, rr, group) == pytest.approx(
        sum(loop_credit[g] for g in big) / len(big)
    )
    assert best_of_k_accuracy(rc, rr, group, min_k=2) == pytest.approx(np.mean(credit))


def test_best_of_k_rewardbench2_tie_rule_by_hand():
    # chosen 2 against rejected (1, 2, 2): chosen shares the maximum with two → 1/3
    credit, k = best_of_k_correct([2, 2, 2, 5, 5], [1, 2, 2, 4, 6], [0, 0, 0, 1, 1])
    assert credit.tolist() == pytest.approx([1 / 3, 0.0]) and k.tolist() == [4, 3]
    # with k = 2 it is pairwise accuracy
    rc, rr = [1.0, 0.0, 2.0], [0.0, 0.0, 3.0]
    credit, _ = best_of_k_correct(rc, rr, ["a", "b", "c"])
    np.testing.assert_allclose(credit, pairwise_correct(rc, rr))
    assert math.isnan(best_of_k_accuracy(rc, rr, ["a", "b", "c"]))


def test_best_of_k_errors():
    with pytest.raises(ValueError, match="same length"):
        best_of_k_correct([1, 2], [0, 1], [0])
    with pytest.raises(ValueError, match="min_k must be an int >= 2"):
        best_of_k_accuracy([1], [0], [0], min_k=1)


def test_disagreement_auroc_matches_loop():
    rng = np.random.default_rng(14)
    u = np.round(rng.random(80), 1)
    d = (rng.random(80) < 0.3).astype(float)
    d[::9] = np.nan  # pairs without votes are left out
    known = [i for i in range(80) if not math.isnan(d[i])]
    expected = _loop_auroc([u[i] for i in known], [d[i] == 1 for i in known])
    assert disagreement_auroc(u, d) == pytest.approx(expected)
    assert math.isnan(disagreement_auroc([0.1, 0.2], [0, 0]))
    with pytest.raises(ValueError, match="disagreement must be 0, 1 or NaN"):
        disagreement_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="same length"):
        disagreement_auroc([0.1, 0.2], [0])


def test_margin_uncertainty_ranks_small_margins_as_unsure():
    rc, rr = np.array([3.0, 1.0, 0.0, 2.0]), np.array([0.0, 1.5, -2.0, 2.0])
    np.testing.assert_allclose(margin_uncertainty(rc, rr), [-3.0, -0.5, -2.0, 0.0])
    # misordered pairs (1 and 3) have the smallest margins here: AUROC 1
    assert misorder_auroc(margin_uncertainty(rc, rr), rc, rr) == pytest.approx(1.0)


def test_paired_bootstrap_matches_loop():
    rng = np.random.default_rng(3)
    a = (rng.random(50) < 0.7).astype(float)
    b = (rng.random(50) < 0.6).astype(float)
    res = paired_bootstrap(a, b, n_resamples=300, confidence=0.9, random_state=7)
    # the loop draws the same indices from the same stream
    rs = np.random.RandomState(7)
    idx = rs.randint(0, 50, size=(300, 50))
    stats = []
    for row in idx:
        stats.append(sum(a[i] - b[i] for i in row) / 50)
    stats = np.sort(stats)
    assert res.difference == pytest.approx(a.mean() - b.mean())
    assert res.ci_low == pytest.approx(np.quantile(stats, 0.05))
    assert res.ci_high == pytest.approx(np.quantile(stats, 0.95))
    assert res.ci_low <= res.difference <= res.ci_high
    assert res.n_resamples == 300


def test_paired_bootstrap_width_matches_normal_theory():
    # 1000 pairs: the bootstrap standard error and the 95 % interval's width are those of
    # normal theory for a mean (error budget: 25 %)
    rng = np.random.default_rng(0)
    a = (rng.random(1000) < 0.8).astype(float)
    b = a.copy()
    flip = rng.choice(1000, size=100, replace=False)
    b[flip] = 1 - b[flip]
    res = paired_bootstrap(a, b, n_resamples=2000, random_state=0)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert res.std_error == pytest.approx(se, rel=0.25)
    assert res.ci_high - res.ci_low == pytest.approx(2 * 1.96 * se, rel=0.25)


@pytest.mark.parametrize(("confidence", "window"), [(0.95, (0.93, 0.97)), (0.80, (0.77, 0.85))])
def test_paired_bootstrap_coverage(confidence, window):
    """Share of 1,000 fresh samples whose interval covers the true difference.

    Each sample has 200 pairs drawn from a joint law of two correlated 0/1 scores with
    P(a) = 0.7, P(b) = 0.6, so the true difference is 0.1. Error budget: 10,000 samples
    measured the coverage of this interval (400 resamples) at 0.949 (95 %) and 0.818
    (80 %; the scores' 1/200 lattice makes it conservative); with 1,000 samples the
    binomial standard error is 0.007 and 0.012, and each window is at least 2.6 of them
    away from the measured coverage (failure odds below 1 % per window on a fresh seed).
    A 90 % interval passed off as 95 %, or a 95 % one as 80 %, fails.
    """
    table = np.array([0.55, 0.15, 0.05, 0.25])  # (a, b) = (1, 1), (1, 0), (0, 1), (0, 0)
    score_a, score_b = np.array([1.0, 1.0, 0.0, 0.0]), np.array([1.0, 0.0, 1.0, 0.0])
    rng = np.random.default_rng(11)
    covered = 0
    for rep in range(1000):
        cell = rng.choice(4, size=200, p=table)
        res = paired_bootstrap(
            score_a[cell],
            score_b[cell],
            n_resamples=400,
            confidence=confidence,
            random_state=rep,
        )
        covered += res.ci_low <= 0.1 <= res.ci_high
    assert window[0] <= covered / 1000 <= window[1]


def test_paired_bootstrap_is_deterministic_and_validates():
    a, b = np.ones(10), np.zeros(10)
    assert paired_bootstrap(a, b, random_state=1) == paired_bootstrap(a, b, random_state=1)
    with pytest.raises(ValueError, match="n_resamples must be a positive int"):
        paired_bootstrap(a, b, n_resamples=0)
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_bootstrap(a, b, confidence=1.5)


def _loop_auroc(score, positive):
    pos = [s for s, p in zip(score, positive) if p]
    neg = [s for s, p in zip(score, positive) if not p]
    total = sum(1.0 if sp > sn else 0.5 if sp == sn else 0.0 for sp in pos for sn in neg)
    return total / (len(pos) * len(neg))


def test_misorder_auroc_matches_loop(rewards):
    rc, rr = rewards
    rng = np.random.default_rng(2)
    u = np.round(rng.random(rc.size), 1)  # ties in uncertainty too
    expected = _loop_auroc(u, [c <= r for c, r in zip(rc, rr)])
    assert misorder_auroc(u, rc, rr) == pytest.approx(expected)


def test_misorder_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    rc, rr, u = rng.normal(size=200), rng.normal(size=200), rng.random(200)
    assert misorder_auroc(u, rc, rr) == pytest.approx(roc_auc_score(rc <= rr, u))


def test_misorder_auroc_undefined_is_nan():
    assert math.isnan(misorder_auroc([0.1, 0.2], [1, 2], [0, 0]))


def test_abstention_accuracy_matches_loop():
    rng = np.random.default_rng(4)
    u = rng.random(40)
    c = (rng.random(40) < 0.7).astype(float)
    out = abstention_accuracy(u, c, fractions=(0.0, 0.1, 0.2, 0.3))
    for f, acc in out.items():
        n_drop = round(f * 40)
        ranked = sorted(range(40), key=lambda i: u[i])
        kept = ranked[: 40 - n_drop]
        assert acc == pytest.approx(sum(c[i] for i in kept) / len(kept))
    with pytest.raises(ValueError, match="fraction must lie in"):
        abstention_accuracy(u, c, fractions=(1.0,))


def test_abstention_rewards_informative_uncertainty():
    rng = np.random.default_rng(6)
    c = (rng.random(500) < 0.7).astype(float)
    u = rng.random(500) + (1 - c)  # wrong pairs are more uncertain
    out = abstention_accuracy(u, c)
    assert out[0.1] < out[0.2] < out[0.3]


def _loop_ece(p, y, n_bins):
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = [i for i in range(len(p)) if lo <= p[i] < hi or (k == n_bins - 1 and p[i] == 1)]
        if members:
            conf = sum(p[i] for i in members) / len(members)
            freq = sum(y[i] for i in members) / len(members)
            total += len(members) * abs(freq - conf)
    return total / len(p)


def test_ece_and_reliability_match_loop():
    rng = np.random.default_rng(8)
    p = np.r_[rng.random(97), 0.0, 1.0, 0.5]
    y = (rng.random(100) < p).astype(float)
    for n_bins in (1, 5, 10, 15):
        assert expected_calibration_error(p, y, n_bins=n_bins) == pytest.approx(
            _loop_ece(p, y, n_bins)
        )
    curve = reliability_curve(p, y, n_bins=10)
    assert curve.count.sum() == 100
    assert curve.bin_edges.shape == (11,)
    filled = curve.count > 0
    assert np.all((curve.mean_predicted[filled] >= 0) & (curve.mean_predicted[filled] <= 1))


def test_ece_of_calibrated_sample_is_small():
    rng = np.random.default_rng(9)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(np.full(20000, 0.99), y) > 0.4


def test_ece_validation():
    with pytest.raises(ValueError, match=r"prob must lie in \[0, 1\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="outcome must be 0/1"):
        expected_calibration_error([0.5], [2])
    with pytest.raises(ValueError, match="n_bins must be a positive int"):
        reliability_curve([0.5], [1], n_bins=0)


def test_preference_calibration_data_is_symmetric():
    p, y = preference_calibration_data([0.9, 0.2])
    np.testing.assert_allclose(p, [0.9, 0.2, 0.1, 0.8])
    np.testing.assert_array_equal(y, [1, 1, 0, 0])


def test_preference_probability_gaussian_closed_form():
    grid = np.linspace(-12, 12, 2401)
    mus_a, sds_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 0.5, 2.0, 1.5])
    mus_b, sds_b = np.array([0.0, 0.0, 1.0, 0.4]), np.array([1.0, 1.0, 0.7, 0.3])
    la = norm.logpdf(grid[None, :], mus_a[:, None], sds_a[:, None]) + 3.0  # unnormalised
    lb = norm.logpdf(grid[None, :], mus_b[:, None], sds_b[:, None])
    expected = norm.cdf((mus_a - mus_b) / np.sqrt(sds_a**2 + sds_b**2))
    got = quadrature_preference_probability(la, lb, grid)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(
        got + quadrature_preference_probability(lb, la, grid), 1.0, atol=1e-12
    )


def test_preference_probability_monte_carlo_on_uneven_grid():
    # a bimodal density on an uneven grid; Monte Carlo from the same discrete masses
    grid = np.sort(np.r_[np.linspace(-6, 6, 300), np.linspace(-1, 1, 200)])
    grid = np.unique(grid)
    la = np.logaddexp(norm.logpdf(grid, -2, 0.5), norm.logpdf(grid, 2, 0.5))
    lb = norm.logpdf(grid, 0.5, 1.0)
    step = np.diff(grid)
    w = np.r_[step[0], step[:-1] + step[1:], step[-1]] / 2
    pa = np.exp(la) * w
    pb = np.exp(lb) * w
    rng = np.random.default_rng(0)
    n = 400_000
    ra = rng.choice(grid, size=n, p=pa / pa.sum())
    rb = rng.choice(grid, size=n, p=pb / pb.sum())
    mc = np.mean((ra > rb) + 0.5 * (ra == rb))
    got = quadrature_preference_probability(la, lb, grid)
    # Monte Carlo standard error is at most 0.5/sqrt(n) ≈ 8e-4; allow 4 of them
    assert got == pytest.approx(mc, abs=3.2e-3)
    assert isinstance(got, float)


def test_preference_probability_point_masses_and_neg_inf():
    grid = np.array([0.0, 1.0, 2.0])
    a = np.array([-np.inf, 0.0, -np.inf])  # point mass at 1
    b = np.array([0.0, -np.inf, 0.0])  # half at 0, half at 2
    assert quadrature_preference_probability(a, b, grid) == pytest.approx(0.5)
    assert quadrature_preference_probability(a, a, grid) == pytest.approx(0.5)
    c = np.array([-np.inf, -np.inf, 0.0])  # point mass at 2
    assert quadrature_preference_probability(c, a, grid) == pytest.approx(1.0)


def test_preference_probability_validation():
    grid = np.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="strictly increasing"):
        quadrature_preference_probability(np.zeros(5), np.zeros(5), grid[::-1])
    with pytest.raises(ValueError, match=r"must both have shape \(n, 5\)"):
        quadrature_preference_probability(np.zeros(4), np.zeros(4), grid)
    with pytest.raises(ValueError, match="at least one finite value"):
        quadrature_preference_probability(np.full(5, -np.inf), np.zeros(5), grid)


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(float)
    fig = plot_reliability_diagram(
        {"model": reliability_curve(p, y)}, tmp_path / "sub" / "reliability.png"
    )
    assert fig.axes
    plot_abstention({"model": {0.0: 0.7, 0.1: 0.72}}, tmp_path / "abstention.png")
    for name in ("sub/reliability.png", "abstention.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "abstention.png",
        "reliability.png",
        "sub",
    ]


def test_the_old_name_is_a_deprecated_alias_and_the_calibrator_has_one_way():
    from skebrm import metrics

    grid = np.linspace(-4, 4, 81)
    la, lb = -0.5 * (grid - 1.0) ** 2, -0.5 * grid**2
    with pytest.warns(FutureWarning, match="quadrature_preference_probability"):
        old = metrics.preference_probability(la, lb, grid)
    assert old == quadrature_preference_probability(la, lb, grid)
    # the calibrator's convention: cells, through GridDistribution (not this quadrature)
    from skebrm import GridDistribution

    width = grid[1] - grid[0]
    da = GridDistribution(la[None], low=grid[0] - width / 2, width=width)
    db = GridDistribution(lb[None], low=grid[0] - width / 2, width=width)
    cells = float(da.preference_probability(db)[0])
    assert cells == pytest.approx(old, abs=1e-2) and cells != old
