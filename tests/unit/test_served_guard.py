"""The guard decides on the reward a bundle serves: ``refined − λ·std``, or the base alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from skebrm import RefinedRewardModel
from skebrm.exceptions import RefinementWarning


def _pairs(parts, n=20):
    pairs = parts.pairs[:n]
    return (
        [p["prompt"] for p in pairs],
        [p["chosen"] for p in pairs],
        [p["rejected"] for p in pairs],
    )


def test_the_bundle_guards_the_penalised_reward_it_serves(tiny_bundle_parts):
    parts = tiny_bundle_parts
    cal = copy.deepcopy(parts.calibrator).set_params(guard="off")
    lam = 0.5
    bundle = RefinedRewardModel(
        parts.model, parts.tokenizer, cal, max_length=parts.max_length, penalty=lam
    )
    prompts, chosen, rejected = _pairs(parts)
    bundle.fit_guard(prompts, chosen, rejected)
    s = bundle.calibrator.guard_scores_
    assert s["penalty"] == lam
    # reference: the served reward of each response, compared pair by pair
    served_c = bundle.score(prompts, chosen).penalized(lam)
    served_r = bundle.score(prompts, rejected).penalized(lam)
    d = served_c - served_r
    assert s["refined_accuracy"] == pytest.approx(np.mean((d > 0) + 0.5 * (d == 0)))


def test_a_rejected_guard_serves_the_base_reward_without_the_penalty(tiny_bundle_parts):
    parts = tiny_bundle_parts
    cal = copy.deepcopy(parts.calibrator).set_params(guard="base", guard_confidence=1.0)
    bundle = RefinedRewardModel(
        parts.model, parts.tokenizer, cal, max_length=parts.max_length, penalty=0.5
    )
    prompts, chosen, rejected = _pairs(parts)
    with pytest.warns(RefinementWarning):
        bundle.fit_guard(prompts, chosen, rejected)  # confidence 1: never passes
    assert bundle.calibrator.refinement_helps_ is False
    scores = bundle.score(prompts, chosen)
    assert scores.base_served and (scores.std > 0).all()
    np.testing.assert_array_equal(scores.penalized(0.5), scores.base_reward)
    np.testing.assert_array_equal(bundle(prompts=prompts, completions=chosen), scores.base_reward)


def test_a_bundle_with_another_penalty_than_its_guard_says_so(tiny_bundle_parts):
    parts = tiny_bundle_parts
    cal = copy.deepcopy(parts.calibrator).set_params(guard="off")
    first = RefinedRewardModel(
        parts.model, parts.tokenizer, cal, max_length=parts.max_length, penalty=0.5
    )
    first.fit_guard(*_pairs(parts))
    assert "guard decided at" not in repr(first)
    with pytest.warns(RefinementWarning, match="no guard evaluated"):
        other = RefinedRewardModel(
            parts.model, parts.tokenizer, cal, max_length=parts.max_length, penalty=2.0
        )
    assert "guard decided at penalty=0.5" in repr(other)
