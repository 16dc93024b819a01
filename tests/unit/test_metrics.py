"""Metrics against plain loop implementations on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from skebrm.metrics import (
    abstention_accuracy,
    expected_calibration_error,
    misorder_auroc,
    paired_bootstrap,
    pairwise_accuracy,
    pairwise_correct,
    plot_abstention,
    plot_reliability_diagram,
    preference_calibration_data,
    preference_probability,
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


def test_paired_bootstrap_coverage_of_known_difference():
    # 1000 pairs, true difference 0.1: the 95 % interval of one large sample covers it
    # and has about the normal-theory width (error budget: 25 %).
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
    got = preference_probability(la, lb, grid)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got + preference_probability(lb, la, grid), 1.0, atol=1e-12)


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
    got = preference_probability(la, lb, grid)
    # Monte Carlo standard error is at most 0.5/sqrt(n) ≈ 8e-4; allow 4 of them
    assert got == pytest.approx(mc, abs=3.2e-3)
    assert isinstance(got, float)


def test_preference_probability_point_masses_and_neg_inf():
    grid = np.array([0.0, 1.0, 2.0])
    a = np.array([-np.inf, 0.0, -np.inf])  # point mass at 1
    b = np.array([0.0, -np.inf, 0.0])  # half at 0, half at 2
    assert preference_probability(a, b, grid) == pytest.approx(0.5)
    assert preference_probability(a, a, grid) == pytest.approx(0.5)
    c = np.array([-np.inf, -np.inf, 0.0])  # point mass at 2
    assert preference_probability(c, a, grid) == pytest.approx(1.0)


def test_preference_probability_validation():
    grid = np.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="strictly increasing"):
        preference_probability(np.zeros(5), np.zeros(5), grid[::-1])
    with pytest.raises(ValueError, match=r"must both have shape \(n, 5\)"):
        preference_probability(np.zeros(4), np.zeros(4), grid)
    with pytest.raises(ValueError, match="at least one finite value"):
        preference_probability(np.full(5, -np.inf), np.zeros(5), grid)


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
