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
    evaluate,
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
