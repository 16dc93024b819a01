"""The guard's exact test, its power and its decision, against plain references."""

import itertools

import numpy as np
import pytest
from scipy import stats

from skebrm._guard import (
    MAX_UNDETECTED_GAIN,
    decide,
    min_detectable_gain,
    pair_credit,
    power_message,
    sign_flip_p_value,
)


def _by_enumeration(diff) -> float:
    """P(Σ d* ≥ Σ d) over every sign pattern of the non-zero d (a loop)."""
    d = np.asarray(diff, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    flips = [np.dot(s, np.abs(d)) for s in itertools.product((1.0, -1.0), repeat=d.size)]
    return float(np.mean(np.asarray(flips) >= d.sum() - 1e-12))


def _rewards(served_right, base_right, ties=()):
    """Rows laid out chosen, rejected: one pair per flag (True: chosen scores higher)."""
    served, base = [], []
    for k, (s, b) in enumerate(zip(served_right, base_right)):
        served += [0.0, 0.0] if k in ties else ([1.0, 0.0] if s else [0.0, 1.0])
        base += [1.0, 0.0] if b else [0.0, 1.0]
    return np.array(served), np.array(base)


def test_sign_flip_p_value_matches_enumeration_with_and_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(40):
        d = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=int(rng.integers(0, 12)))
        assert sign_flip_p_value(d) == pytest.approx(_by_enumeration(d), abs=1e-12)
    # without ties: the one-sided exact McNemar test
    d = np.r_[np.ones(9), -np.ones(3), np.zeros(20)]
    want = stats.binomtest(9, 12, 0.5, alternative="greater").pvalue
    assert sign_flip_p_value(d) == pytest.approx(want, rel=1e-12)
    assert sign_flip_p_value(np.zeros(5)) == 1.0
    with pytest.raises(ValueError, match="must lie in"):
        sign_flip_p_value([0.3])


def test_one_discordant_pair_does_not_pass_the_default_confidence():
    # one pair better, none worse, many agreeing pairs: the old paired bootstrap gave
    # about 0.81 here, which passed guard_confidence=0.8
    served, base = _rewards([True] * 50, [False] + [True] * 49)
    s = decide(served, base, confidence=0.8)
    assert (s["n_better"], s["n_worse"], s["n_discordant"]) == (1, 0, 1)
    assert s["p_value"] == 0.5 and s["helps"] is False
    # three such pairs and none against: p = 1/8 <= 0.2 passes
    served, base = _rewards([True] * 50, [False] * 3 + [True] * 47)
    assert decide(served, base, confidence=0.8)["helps"] is True


def test_a_tie_counts_half_against_a_right_base_order():
    served, base = _rewards([True, True], [True, False], ties={0})
    np.testing.assert_array_equal(pair_credit(served), [0.5, 1.0])
    s = decide(served, base, confidence=0.8)
    assert (s["n_better"], s["n_worse"]) == (1, 1)
    assert s["p_value"] == pytest.approx(_by_enumeration([-0.5, 1.0]))


def test_the_false_pass_rate_on_no_effect_data_is_within_the_level():
    # served and base credits exchangeable within each pair: refinement does not help
    rng = np.random.default_rng(1)
    confidence, n_pairs, reps = 0.8, 200, 1000
    passes = 0
    for _ in range(reps):
        right = rng.random((n_pairs, 2)) < 0.65
        tie = rng.random((n_pairs, 2)) < 0.05
        credit = np.where(tie, 0.5, right.astype(float))
        swap = rng.random(n_pairs) < 0.5
        served = np.where(swap, credit[:, 0], credit[:, 1])
        base = np.where(swap, credit[:, 1], credit[:, 0])
        passes += sign_flip_p_value(served - base) <= 1 - confidence
    assert passes / reps <= 1 - confidence


def test_min_detectable_gain_matches_a_plain_power_scan_and_a_simulation():
    n, m, alpha = 437, 60, 0.05
    gain = min_detectable_gain(n, m, alpha)
    # reference: the rejection count by a loop, then the power on a fine grid of π
    k_star = next(k for k in range(m + 1) if stats.binom.sf(k - 1, m, 0.5) <= alpha)
    grid = np.linspace(0.5, 1.0, 20001)
    pi = grid[np.argmax(stats.binom.sf(k_star - 1, m, grid) >= 0.8)]
    assert gain == pytest.approx(100 * (2 * pi - 1) * m / n, abs=1e-3)
    # a simulation at that π: the test rejects in about 80 % of draws
    rng = np.random.default_rng(0)
    p_true = 0.5 + gain / 100 * n / m / 2
    better = rng.binomial(m, p_true, size=20000)
    assert np.mean(better >= k_star) == pytest.approx(0.8, abs=0.01)
    assert min_detectable_gain(100, 0, 0.2) is None  # no discordant pair
    assert min_detectable_gain(100, 1, 0.2) is None  # one pair can never reach p <= 0.2


def test_the_power_note_fires_above_two_points_only():
    s = {"n_pairs": 437, "n_discordant": 60, "source": "validation"}
    assert "detects only gains of" in power_message("E", {**s, "min_detectable_gain": 5.0}, 0.8)
    assert power_message("E", {**s, "min_detectable_gain": MAX_UNDETECTED_GAIN}, 0.8) is None
    assert "cannot detect any gain" in power_message("E", {**s, "min_detectable_gain": None}, 0.8)
